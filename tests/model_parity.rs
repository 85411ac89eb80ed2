//! Numerical parity with Hugging Face transformers on committed tiny checkpoints
//! (tests/fixtures/make_fixtures.py made them and the expected values, in float32).
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, read_json, u32s};
use gaplab::model::SeqBatch;
use gaplab::model::{io, sample, Tok};
use gaplab::rng::Rng;

const MODELS: [&str; 4] = ["tiny-llama", "tiny-llama-ref", "tiny-qwen2", "tiny-mistral"];

/// log softmax in f64 of one logits row, at `target`.
fn logp(row: &[f32], target: u32) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row[target as usize] as f64 - lse
}

#[test]
fn token_logps_match_transformers() {
    for name in MODELS {
        let dir = fixture(name);
        let exp = read_json(&dir.join("expected.json"));
        let (model, _) = io::load_dir(&dir, &Device::Cpu, DType::F32).unwrap();
        let (ids, masks) = common::expected_batch(&exp);
        let expected: Vec<Vec<f64>> = exp["token_logps"]
            .as_array()
            .unwrap()
            .iter()
            .map(common::f64s)
            .collect();

        // Full logits of the right-padded batch, as transformers ran it.
        let t = Tensor::new(ids.clone(), &Device::Cpu).unwrap();
        let logits: Vec<Vec<Vec<f32>>> = model.logits(&t).unwrap().to_vec3().unwrap();
        let mut worst = 0f64;
        for (i, row) in ids.iter().enumerate() {
            let len = masks[i].iter().sum::<u32>() as usize;
            assert_eq!(expected[i].len(), len - 1);
            for p in 0..len - 1 {
                let ours = logp(&logits[i][p], row[p + 1]);
                worst = worst.max((ours - expected[i][p]).abs());
            }
        }
        assert!(worst < 1e-4, "{name}: max |logp diff| {worst:e}");

        // The packed training path (first token as prompt, the rest as response).
        let seqs = common::unpadded(&ids, &masks);
        let rows: Vec<(&[u32], &[u32])> = seqs.iter().map(|s| (&s[..1], &s[1..])).collect();
        let batch = SeqBatch::new(&rows, 2, &Device::Cpu).unwrap();
        let packed: Vec<f32> = model
            .response_scores(&batch)
            .unwrap()
            .logps
            .to_vec1()
            .unwrap();
        for (i, got) in batch.split(&packed).iter().enumerate() {
            for (g, e) in got.iter().zip(&expected[i]) {
                assert!((*g as f64 - e).abs() < 1e-4, "{name}: packed {g} vs {e}");
            }
        }
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in MODELS {
        let dir = fixture(name);
        let exp = read_json(&dir.join("expected.json"));
        let (model, _) = io::load_dir(&dir, &Device::Cpu, DType::F32).unwrap();
        let prompt = u32s(&exp["greedy"]["prompt_ids"]);
        let want = u32s(&exp["greedy"]["new_ids"]);
        let params = sample::SampleParams {
            max_new_tokens: want.len(),
            temperature: 0.0,
            top_p: 1.0,
        };
        let got = sample::generate(&model, &prompt, &[], &params, &mut Rng::new(0)).unwrap();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn tokenizer_matches_huggingface() {
    let tok = Tok::load(&fixture("tiny-llama"), None).unwrap();
    assert_eq!((tok.bos, tok.eos, tok.pad), (Some(0), 1, Some(2)));
    let cases = read_json(&fixture("tokenizer_cases.json"));
    for c in cases.as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let special = c["add_special_tokens"].as_bool().unwrap();
        assert_eq!(
            tok.encode(text, special).unwrap(),
            u32s(&c["ids"]),
            "{text:?}"
        );
    }
    // The convention: prompt with BOS, response without special tokens plus EOS.
    let pairs = read_json(&fixture("pairs_expected.json"));
    for p in pairs["pairs"].as_array().unwrap() {
        let pair = gaplab::data::PreferencePair::standard(
            p["prompt"].as_str().unwrap(),
            p["chosen"].as_str().unwrap(),
            p["rejected"].as_str().unwrap(),
        );
        let t = gaplab::data::tokenize_pair(&tok, &pair).unwrap();
        assert_eq!(t.prompt, u32s(&p["prompt_ids"]));
        assert_eq!(t.chosen, u32s(&p["chosen_ids"]));
        assert_eq!(t.rejected, u32s(&p["rejected_ids"]));
    }
}

#[test]
fn saved_folder_reloads_identically() {
    for name in ["tiny-qwen2", "tiny-llama"] {
        let src = fixture(name);
        let (model, _) = io::load_dir(&src, &Device::Cpu, DType::F32).unwrap();
        let out = tempfile::tempdir().unwrap();
        io::save_dir(&model, Some(&src), out.path()).unwrap();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            assert!(out.path().join(f).exists(), "{name}: {f}");
        }
        // The source's layout: one file, or the same shards and index.
        let files = io::weight_files(out.path()).unwrap();
        let names = |fs: Vec<std::path::PathBuf>| -> Vec<std::ffi::OsString> {
            fs.iter()
                .map(|f| f.file_name().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(files.clone()), names(io::weight_files(&src).unwrap()));
        let mut st = std::collections::HashMap::new();
        for f in files {
            st.extend(candle_core::safetensors::load(f, &Device::Cpu).unwrap());
        }
        assert_eq!(
            st.contains_key("lm_head.weight"),
            !model.cfg.tie_word_embeddings,
            "{name}: tied embeddings are saved once"
        );
        let (again, _) = io::load_dir(out.path(), &Device::Cpu, DType::F32).unwrap();
        let ids = Tensor::new(&[[0u32, 5, 9, 17, 33, 2]], &Device::Cpu).unwrap();
        let a: Vec<f32> = model
            .logits(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = again
            .logits(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b, "{name}");
    }
}
