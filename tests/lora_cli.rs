//! The real binary with PEFT LoRA adapters: `gaplab merge` writes a checkpoint that scores as
//! PEFT's merge_and_unload, `eval --adapter` and `sample --adapter` use base + adapter (and the
//! base with the adapter off as the reference), and bad adapter input gets one clear line.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use common::{f64s, fixture, gaplab, read_json, stderr, stdout, u32s};
use gaplab::data::TokenizedPair;
use gaplab::model::{io, SeqBatch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn adapter(base: &str) -> PathBuf {
    fixture(&format!("lora/{base}-adapter"))
}

/// The PEFT fixture entry of a base ("tiny-llama" or "tiny-qwen2").
fn expected(base: &str) -> serde_json::Value {
    let all = read_json(&fixture("lora/expected.json"));
    all["bases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["base"].as_str().unwrap().ends_with(base))
        .unwrap()
        .clone()
}

/// Runs gaplab, expects success, and parses its `--json` output.
fn json(args: &[&str]) -> serde_json::Value {
    let out = gaplab(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("one JSON document")
}

fn merge(base: &str, out: &Path) -> serde_json::Value {
    json(&[
        "merge",
        "--model",
        s(&fixture(base)),
        "--adapter",
        s(&adapter(base)),
        "--out",
        s(out),
        "--json",
    ])
}

/// Per-token log-probs of the fixture rows under the checkpoint folder `dir`, compared with
/// PEFT's `{which}_*_logps`.
fn assert_logps_match(dir: &Path, exp: &serde_json::Value, which: &str) {
    let model = io::load_model(dir, &Device::Cpu, DType::F32).unwrap();
    let rows = exp["rows"].as_array().unwrap();
    let pairs: Vec<TokenizedPair> = rows
        .iter()
        .map(|r| TokenizedPair {
            prompt: u32s(&r["prompt_ids"]),
            chosen: u32s(&r["chosen_ids"]),
            rejected: u32s(&r["rejected_ids"]),
        })
        .collect();
    let pad = exp["eos_token_id"].as_u64().unwrap() as u32;
    let batch = SeqBatch::from_pairs(&pairs, pad, &Device::Cpu).unwrap();
    let got: Vec<f32> = model
        .response_scores(&batch)
        .unwrap()
        .logps
        .to_vec1()
        .unwrap();
    let split = batch.split(&got);
    let n = pairs.len();
    for (i, r) in rows.iter().enumerate() {
        for (side, row) in [("chosen", split[i]), ("rejected", split[n + i])] {
            let want = f64s(&r[format!("{which}_{side}_logps")]);
            assert_eq!(want.len(), row.len());
            for (t, (w, g)) in want.iter().zip(row.iter()).enumerate() {
                assert!(
                    (w - *g as f64).abs() < 1e-4,
                    "{} pair {i} {side} token {t}: PEFT {w}, merged {g}",
                    dir.display()
                );
            }
        }
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn merged_folders_score_as_peft_merge_and_unload() {
    let tmp = tempfile::tempdir().unwrap();
    for base in ["tiny-llama", "tiny-qwen2"] {
        let out = tmp.path().join(format!("{base}-merged"));
        let report = merge(base, &out);
        let exp = expected(base);
        assert_eq!(report["r"], exp["lora"]["r"], "{base}");
        let layers = read_json(&fixture(base).join("config.json"))["num_hidden_layers"]
            .as_u64()
            .unwrap();
        let targets = report["target_modules"].as_array().unwrap().len() as u64;
        assert_eq!(report["merged_tensors"].as_u64().unwrap(), layers * targets);
        assert_logps_match(&out, &exp, "merged");
        // The same files as the base: shards, index, config, tokenizer and generation files
        // (the base's expected.json is a test file, not part of a checkpoint).
        let mut want = names(&fixture(base));
        want.remove("expected.json");
        assert_eq!(names(&out), want, "{base}");
        let index = "model.safetensors.index.json";
        if fixture(base).join(index).exists() {
            assert_eq!(
                read_json(&out.join(index))["weight_map"],
                read_json(&fixture(base).join(index))["weight_map"],
                "{base}"
            );
        }
    }
    // Nothing but the merged folders: the temporary folder was renamed.
    assert_eq!(
        names(tmp.path()),
        BTreeSet::from(["tiny-llama-merged".into(), "tiny-qwen2-merged".into()])
    );
}

#[test]
fn merge_refuses_a_non_empty_out_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("old.txt"), "keep me").unwrap();
    let args = |force: bool| {
        let mut a = vec![
            "merge".to_string(),
            "--model".into(),
            s(&fixture("tiny-qwen2")).into(),
            "--adapter".into(),
            s(&adapter("tiny-qwen2")).into(),
            "--out".into(),
            s(&out).into(),
        ];
        if force {
            a.push("--force".into());
        }
        a
    };
    let refused = gaplab(&args(false).iter().map(String::as_str).collect::<Vec<_>>());
    expect_one_line(&refused, &["--out", "not empty", "--force"]);
    assert!(out.join("old.txt").exists());
    let forced = gaplab(&args(true).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(forced.status.success(), "{}", stderr(&forced));
    let text = stdout(&forced);
    assert!(text.contains("r 2") && text.contains("merged"), "{text}");
    assert!(!out.join("old.txt").exists() && out.join("config.json").exists());
}

/// `gaplab eval --json` of the first pairs of objectives/pairs.jsonl (the rows of the PEFT
/// fixture) with `extra` flags.
fn eval(extra: &[&str]) -> Vec<serde_json::Value> {
    let data = fixture("objectives/pairs.jsonl");
    let mut args = vec!["eval", "--data", s(&data), "--objective", "dpo", "--json"];
    args.extend(extra);
    json(&args)["pairs"].as_array().unwrap().clone()
}

fn sum(v: &serde_json::Value) -> f64 {
    f64s(v).iter().sum()
}

#[test]
fn eval_with_an_adapter_scores_as_peft_with_the_base_as_reference() {
    let base = fixture("tiny-llama");
    let ad = adapter("tiny-llama");
    let exp = expected("tiny-llama");
    let got = eval(&["--model", s(&base), "--adapter", s(&ad)]);
    for (i, row) in exp["rows"].as_array().unwrap().iter().enumerate() {
        let p = &got[i];
        for side in ["chosen", "rejected"] {
            let close = |key: &str, which: &str| {
                let (g, w) = (
                    p[key].as_f64().unwrap(),
                    sum(&row[format!("{which}_{side}_logps")]),
                );
                assert!((g - w).abs() < 1e-3, "pair {i} {key}: {g} vs PEFT {w}");
            };
            close(&format!("{side}_logps"), "adapter");
            close(&format!("ref_{side}_logps"), "base");
        }
    }
    // With --ref, that model is the reference; the policy is still base + adapter.
    let reference = fixture("tiny-llama-ref");
    let with_ref = eval(&[
        "--model",
        s(&base),
        "--adapter",
        s(&ad),
        "--ref",
        s(&reference),
    ]);
    let ref_alone = eval(&["--model", s(&reference)]);
    for (i, (p, r)) in with_ref.iter().zip(&ref_alone).enumerate() {
        assert_eq!(p["chosen_logps"], got[i]["chosen_logps"], "pair {i}");
        assert_eq!(p["ref_chosen_logps"], r["chosen_logps"], "pair {i}");
        assert_eq!(p["ref_rejected_logps"], r["rejected_logps"], "pair {i}");
    }
}

fn sample(extra: &[&str]) -> Vec<u32> {
    let mut args = vec![
        "sample",
        "--prompt",
        "the model answers the question",
        "--max-new-tokens",
        "12",
        "--json",
    ];
    args.extend(extra);
    u32s(&json(&args)["token_ids"])
}

#[test]
fn sample_with_an_adapter_is_greedy_on_base_plus_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let merged = tmp.path().join("merged");
    merge("tiny-llama", &merged);
    let base = fixture("tiny-llama");
    let with_adapter = sample(&["--model", s(&base), "--adapter", s(&adapter("tiny-llama"))]);
    assert!(!with_adapter.is_empty());
    assert_eq!(with_adapter, sample(&["--model", s(&merged)]));
    assert_ne!(with_adapter, sample(&["--model", s(&base)]));
}

fn expect_one_line(out: &std::process::Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in {err}");
    }
}

#[test]
fn bad_adapters_get_one_line_and_exit_code_2() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = fixture("tiny-llama");
    let data = fixture("pairs.jsonl");
    let out = tmp.path().join("out");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let qwen_adapter = adapter("tiny-qwen2");
    let cases: [(&Path, &Path, &[&str]); 4] = [
        (&llama, &empty, &["empty", "no adapter_config.json"]),
        (
            &llama,
            &fixture("tiny-qwen2"),
            &["tiny-qwen2", "full checkpoint"],
        ),
        (
            &llama,
            &qwen_adapter,
            &[
                "base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight",
                "[128, 2]",
                "[176, 2]",
                "another base",
            ],
        ),
        (
            &qwen_adapter,
            &qwen_adapter,
            &["tiny-qwen2-adapter", "LoRA adapter folder", "--model"],
        ),
    ];
    for (model, ad, needles) in cases {
        let common = ["--model", s(model), "--adapter", s(ad)];
        let eval = [
            &["eval"][..],
            &common[..],
            &["--data", s(&data), "--objective", "dpo"],
        ]
        .concat();
        expect_one_line(&gaplab(&eval), needles);
        let sample = ["sample", "--prompt", "hi"];
        expect_one_line(&gaplab(&[&sample[..], &common[..]].concat()), needles);
        let merge = ["merge", "--out", s(&out)];
        expect_one_line(&gaplab(&[&merge[..], &common[..]].concat()), needles);
        assert!(!out.exists(), "a failed merge wrote {}", out.display());
    }
    assert_eq!(names(tmp.path()), BTreeSet::from(["empty".to_string()]));
}
