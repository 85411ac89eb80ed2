//! Reward models against transformers (tests/fixtures/make_reward_fixtures.py): the rewards of
//! the fixture pairs, full and at k-token prefixes, one row at a time and batched; the folders
//! that are not reward models; and the commands that use them through the real binary.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::{f64s, fixture, gaplab, read_json, stderr, stdout, u32s};
use gaplab::model::reward::RewardModel;

const RMS: [&str; 2] = ["tiny-llama-rm", "tiny-qwen2-rm"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn expected(name: &str) -> serde_json::Value {
    read_json(&fixture("reward_expected.json"))["models"][name].clone()
}

fn ks() -> Vec<usize> {
    read_json(&fixture("reward_expected.json"))["ks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_u64().unwrap() as usize)
        .collect()
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() < 1e-4,
        "{what}: gaplab {got} vs transformers {want}"
    );
}

/// The sequences the fixture scored for one side of a pair: each k-prefix, then the full one.
fn side_seqs(pair: &serde_json::Value, side: &str, ks: &[usize]) -> Vec<Vec<u32>> {
    let prompt = u32s(&pair["prompt_ids"]);
    let resp = u32s(&pair[format!("{side}_ids")]);
    ks.iter()
        .map(|&k| resp[..k.min(resp.len())].to_vec())
        .chain(std::iter::once(resp.clone()))
        .map(|r| prompt.iter().copied().chain(r).collect())
        .collect()
}

#[test]
fn rewards_match_transformers_one_row_at_a_time_and_batched() {
    let ks = ks();
    for name in RMS {
        let exp = expected(name);
        let (rm, tok) = RewardModel::load(&fixture(name), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(
            rm.pad_token_id,
            exp["pad_token_id"].as_u64().map(|p| p as u32)
        );
        let mut all = Vec::new();
        let mut want = Vec::new();
        for pair in exp["pairs"].as_array().unwrap() {
            // gaplab's own tokenization agrees with the fixture's ids.
            let t = gaplab::data::tokenize_pair(
                &tok,
                &gaplab::data::PreferencePair::standard(pair["prompt"].as_str().unwrap(), "", ""),
            );
            assert_eq!(t.unwrap().prompt, u32s(&pair["prompt_ids"]));
            for side in ["chosen", "rejected"] {
                let seqs = side_seqs(pair, side, &ks);
                let e = &pair[side];
                let mut single = f64s(&e["prefix"]);
                single.push(e["full"].as_f64().unwrap());
                let mut batched = f64s(&e["prefix_batched"]);
                batched.push(e["full_batched"].as_f64().unwrap());
                for (i, seq) in seqs.iter().enumerate() {
                    let one = rm.score(std::slice::from_ref(seq), 1).unwrap()[0];
                    close(one, single[i], &format!("{name} {side} row {i}"));
                }
                all.extend(seqs);
                want.extend(batched);
            }
        }
        // One batch of every length at once, and batches of 5.
        for bs in [all.len(), 5] {
            let got = rm.score(&all, bs).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                close(*g, *w, &format!("{name} batch {bs} row {i}"));
            }
        }
    }
}

#[test]
fn pad_equal_to_eos_reads_a_full_response_before_its_eos() {
    // tiny-qwen2-rm has pad_token_id == eos_token_id: transformers reads a full response
    // (which ends with EOS) at the token before its EOS; tiny-llama-rm reads the EOS itself.
    let qwen = expected("tiny-qwen2-rm");
    let llama = expected("tiny-llama-rm");
    assert_eq!(qwen["pad_token_id"], qwen["eos_token_id"]);
    for (exp, before_eos) in [(qwen, true), (llama, false)] {
        for pair in exp["pairs"].as_array().unwrap() {
            let read_at = u32s(&pair["chosen"]["read_at"]);
            let full_len = u32s(&pair["prompt_ids"]).len() + u32s(&pair["chosen_ids"]).len();
            let want = if before_eos {
                full_len - 2
            } else {
                full_len - 1
            };
            assert_eq!(*read_at.last().unwrap() as usize, want);
            let seq = side_seqs(pair, "chosen", &[]).pop().unwrap();
            let pad = exp["pad_token_id"].as_u64().map(|p| p as u32);
            assert_eq!(
                gaplab::model::reward::reward_position(&seq, pad),
                want,
                "gaplab's rule"
            );
        }
    }
}

#[test]
fn folders_that_are_not_reward_models_are_named_as_such() {
    let e = RewardModel::check_dir(&fixture("tiny-llama"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("causal LM")
            && e.contains("no `score` head")
            && e.contains("LlamaForSequenceClassification"),
        "{e}"
    );
    let e = RewardModel::check_dir(&fixture("tiny-llama-cls2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 labels") && e.contains("num_labels = 1"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let copy = |to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for f in std::fs::read_dir(fixture("tiny-llama-rm")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    };
    // Truncated weights: named before anything is loaded.
    let cut = dir.path().join("cut");
    copy(&cut);
    let st = cut.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    f.set_len(len - 1000).unwrap();
    let e = RewardModel::load(&cut, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("truncated") && e.contains("model.safetensors"),
        "{e}"
    );

    // A config without architectures whose weights hold no head.
    let headless = dir.path().join("headless");
    std::fs::create_dir_all(&headless).unwrap();
    for f in [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixture("tiny-llama").join(f), headless.join(f)).unwrap();
    }
    let mut cfg = read_json(&fixture("tiny-llama").join("config.json"));
    cfg.as_object_mut().unwrap().remove("architectures");
    std::fs::write(headless.join("config.json"), cfg.to_string()).unwrap();
    let e = RewardModel::check_dir(&headless).unwrap_err().to_string();
    assert!(e.contains("no `score.weight`"), "{e}");

    // A head of the wrong width.
    let wide = dir.path().join("wide");
    copy(&wide);
    let mut cfg = read_json(&wide.join("config.json"));
    cfg["hidden_size"] = serde_json::json!(128);
    cfg["head_dim"] = serde_json::json!(32);
    std::fs::write(wide.join("config.json"), cfg.to_string()).unwrap();
    let e = RewardModel::check_dir(&wide).unwrap_err().to_string();
    assert!(e.contains("has shape") && e.contains("config.json"), "{e}");
}
