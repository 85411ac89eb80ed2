//! The real binary on broken checkpoints: `gaplab check` validates a workspace's checkpoint
//! (and the adapter it starts from) from the safetensors headers and names the file and the
//! tensor; `train`, `sample` and `eval` refuse the same checkpoints before loading, and `train`
//! before it makes a run directory.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{copy_dir, fixture, gaplab, stderr, stdout, tiny_workspace};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of the sharded tiny Llama fixture in `tmp/model`.
fn model_copy(tmp: &Path) -> PathBuf {
    let dir = tmp.join("model");
    copy_dir(&fixture("tiny-llama"), &dir);
    dir
}

/// The tiny workspace in `tmp` with `model` as its checkpoint and `extra` in `[model]`.
fn workspace(tmp: &Path, model: &Path, extra: &str) -> PathBuf {
    let from = format!("{:?}", fixture("tiny-llama"));
    tiny_workspace(tmp, |t| {
        t.replace(&from, &format!("{:?}", model))
            .replace("[data]", &format!("{extra}\n[data]"))
    })
}

/// `gaplab check` fails on `ws`; its error output.
fn check_fails(ws: &Path) -> String {
    let out = gaplab(&["check", s(ws)]);
    assert!(!out.status.success(), "check passed: {}", stdout(&out));
    stderr(&out)
}

fn shard(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("model-0000{n}-of-00003.safetensors"))
}

/// Cuts the last `n` bytes off `path`.
fn truncate(path: &Path, n: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - n).unwrap();
}

/// Rewrites the safetensors file `path` with `edit` applied to its tensors.
fn rewrite(path: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut map = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    edit(&mut map);
    candle_core::safetensors::save(&map, path).unwrap();
}

#[test]
fn a_healthy_checkpoint_passes_with_its_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t);
    let out = gaplab(&["check", s(&ws)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("checkpoint: OK (21 tensors, 3 shards, 521.2 KiB, f32)"),
        "{text}"
    );
    assert!(!text.contains("warning:"), "{text}");
}

#[test]
fn a_truncated_shard_is_named_with_its_tensor_and_lengths() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let file = shard(&model, 2);
    let len = std::fs::metadata(&file).unwrap().len();
    truncate(&file, 100);
    let ws = workspace(tmp.path(), &model, "");
    let err = check_fails(&ws);
    for needle in [
        s(&file),
        "tensor `model.layers.1.self_attn.v_proj.weight`",
        &format!("expected {len} bytes, got {}", len - 100),
        "looks truncated",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // Loading commands refuse it the same way before reading a tensor.
    let out = gaplab(&["sample", "--model", s(&model), "--prompt", "hi"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("looks truncated"), "{}", stderr(&out));
    let out = gaplab(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&fixture("pairs.jsonl")),
        "--objective",
        "dpo",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("looks truncated"), "{}", stderr(&out));
}

#[test]
fn train_refuses_a_truncated_checkpoint_before_making_a_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    truncate(&shard(&model, 3), 1);
    let ws = workspace(tmp.path(), &model, "");
    let out = gaplab(&["train", "--headless", s(&ws)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("looks truncated") && err.contains("model-00003-of-00003"),
        "{err}"
    );
    let runs = ws.join("runs");
    assert!(
        !runs.exists() || common::runs(&runs).is_empty(),
        "a run directory was made: {:?}",
        common::runs(&runs)
    );
}

#[test]
fn a_config_that_does_not_fit_the_weights_names_a_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"hidden_size\": 64", "\"hidden_size\": 96"),
    )
    .unwrap();
    let ws = workspace(tmp.path(), &model, "");
    let err = check_fails(&ws);
    assert!(
        err.contains(s(&shard(&model, 1)))
            && err.contains(
                "tensor `model.embed_tokens.weight` has shape [320, 64] but config.json implies [320, 96]"
            ),
        "{err}"
    );
}

#[test]
fn a_missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    std::fs::remove_file(shard(&model, 2)).unwrap();
    let ws = workspace(tmp.path(), &model, "");
    let err = check_fails(&ws);
    assert!(
        err.contains("model.safetensors.index.json")
            && err.contains("shard model-00002-of-00003.safetensors does not exist"),
        "{err}"
    );
}

#[test]
fn a_tensor_in_two_shards_names_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let norm = "model.norm.weight";
    let t = candle_core::safetensors::load(shard(&model, 3), &Device::Cpu).unwrap()[norm].clone();
    rewrite(&shard(&model, 1), |m| {
        m.insert(norm.to_string(), t);
    });
    let ws = workspace(tmp.path(), &model, "");
    let err = check_fails(&ws);
    assert!(
        err.contains(&format!("tensor `{norm}` is stored twice"))
            && err.contains("model-00001-of-00003")
            && err.contains("model-00003-of-00003"),
        "{err}"
    );
}

#[test]
fn leftover_tensors_are_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let name = "model.layers.0.self_attn.rotary_emb.inv_freq";
    rewrite(&shard(&model, 1), |m| {
        m.insert(
            name.to_string(),
            Tensor::ones(8, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let ws = workspace(tmp.path(), &model, "");
    let out = gaplab(&["check", s(&ws)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("checkpoint: OK (21 tensors"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning: ") && l.contains(name) && l.contains("ignored")),
        "{text}"
    );
}

#[test]
fn an_adapter_with_a_wrong_shaped_lora_b_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    copy_dir(&fixture("lora/tiny-llama-adapter"), &adapter);
    let file = adapter.join("adapter_model.safetensors");
    let key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight";
    let line = format!("adapter = {:?}", s(&adapter));
    // Sound, it passes and is summarised.
    let ws = tiny_workspace(&tmp.path().join("ok"), |t| {
        t.replace("[data]", &format!("{line}\n\n[data]"))
    });
    let out = gaplab(&["check", s(&ws)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("adapter: OK (28 tensors, 1 file"),
        "{}",
        stdout(&out)
    );
    rewrite(&file, |m| {
        m.insert(
            key.to_string(),
            Tensor::zeros((32, 4), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let ws = tiny_workspace(&tmp.path().join("bad"), |t| {
        t.replace("[data]", &format!("{line}\n\n[data]"))
    });
    let err = check_fails(&ws);
    assert!(
        err.contains(s(&file))
            && err.contains(&format!(
                "tensor `{key}` has shape [32, 4] but the base model with r = 4 implies [64, 4]"
            )),
        "{err}"
    );
    // Training refuses it before making a run directory.
    let out = gaplab(&["train", "--headless", s(&ws)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(key), "{}", stderr(&out));
    let runs = ws.join("runs");
    assert!(!runs.exists() || common::runs(&runs).is_empty());
}
