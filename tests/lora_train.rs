//! LoRA runs and activation recomputation through the real binary: PEFT-layout checkpoints,
//! exact resume, the adapters-off reference, a LoRA SFT stage, starting from an adapter, and
//! config errors.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{copy_dir, fixture, gaplab, jsonl, runs, stderr, tiny_workspace};

const LORA: &str = "\n[lora]\nr = 4\nalpha = 8\ndropout = 0.1\ntarget_modules = \"all-linear\"\n";

/// Train (or eval) metrics by step, wall-clock ones left out.
fn metrics(run: &Path, split: &str) -> BTreeMap<u64, BTreeMap<String, f64>> {
    jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|v| v["split"] == split)
        .map(|v| {
            let m = v
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| !["time", "tokens_per_s", "step"].contains(&k.as_str()))
                .filter_map(|(k, x)| x.as_f64().map(|x| (k.clone(), x)))
                .collect();
            (v["step"].as_u64().unwrap(), m)
        })
        .collect()
}

fn train(ws: &Path, extra: &[&str]) -> PathBuf {
    let mut args = vec!["train", ws.to_str().unwrap(), "--variant", "dpo-poet"];
    args.extend_from_slice(extra);
    let out = gaplab(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    runs(&ws.join("runs")).pop().unwrap()
}

#[test]
fn a_lora_run_saves_peft_adapters_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| format!("{t}{LORA}"));
    let run = train(&ws, &[]);
    let ckpt = run.join("checkpoints/step-6");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(ckpt.join(f).exists(), "{f} missing from {}", ckpt.display());
    }
    assert!(
        !ckpt.join("model.safetensors").exists(),
        "a LoRA checkpoint holds no base weights"
    );
    let config = common::read_json(&ckpt.join("adapter_config.json"));
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(
        (config["r"].as_u64(), config["lora_alpha"].as_u64()),
        (Some(4), Some(8))
    );
    let keys = candle_core::safetensors::load(
        ckpt.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(keys.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(keys.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    // The run says what it trains.
    let started = jsonl(&run.join("events.jsonl"))
        .into_iter()
        .find(|e| e["event"] == "started")
        .unwrap();
    assert_eq!(started["lora"]["r"], 4);
    let trainable = started["lora"]["trainable"].as_u64().unwrap();
    assert!(trainable > 0 && trainable < started["params"].as_u64().unwrap() / 2);
    // The policy moves away from its reference (the base): margins grow from exactly zero.
    let train_m = metrics(&run, "train");
    assert_eq!(train_m[&1]["rewards/margins"], 0.0);
    assert!(train_m[&6]["rewards/margins"] != 0.0);

    // Cut back to step 4 and resume: the same losses, evaluations and samples.
    let copy = tmp.path().join("copy").join(run.file_name().unwrap());
    copy_dir(&run, &copy);
    for e in std::fs::read_dir(copy.join("checkpoints"))
        .unwrap()
        .flatten()
    {
        if e.file_name() != "step-4" {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let out = gaplab(&[
        "train",
        ws.to_str().unwrap(),
        "--resume",
        copy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(metrics(&run, "train"), metrics(&copy, "train"));
    assert_eq!(metrics(&run, "eval"), metrics(&copy, "eval"));
}

#[test]
fn recomputation_trains_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    for lora in ["", LORA] {
        let plain = tiny_workspace(&tmp.path().join(format!("a{}", lora.len())), |t| {
            format!("{t}{lora}")
        });
        let recomputed = tiny_workspace(&tmp.path().join(format!("b{}", lora.len())), |t| {
            format!(
                "{}{lora}",
                t.replace("seed = 3", "seed = 3\ngradient_checkpointing = true")
            )
        });
        let (a, b) = (train(&plain, &[]), train(&recomputed, &[]));
        assert_eq!(
            metrics(&a, "train"),
            metrics(&b, "train"),
            "lora: {}",
            !lora.is_empty()
        );
    }
}

#[test]
fn a_lora_sft_stage_hands_its_merged_result_to_the_variants() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        format!("{t}{LORA}\n[sft]\nsteps = 2\nlr = 1e-2\nbatch_size = 2\n")
    });
    let run = train(&ws, &[]);
    let sft: Vec<PathBuf> = std::fs::read_dir(ws.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("sft-"))
        .collect();
    let result = sft[0].join("checkpoint");
    // A full checkpoint (the base with the SFT adapters merged) and the adapters themselves.
    assert!(result.join("config.json").exists());
    assert!(!gaplab::model::io::weight_files(&result).unwrap().is_empty());
    assert!(result.join("adapter/adapter_config.json").exists());
    let state = common::read_json(&run.join("checkpoints/step-6/trainer_state.json"));
    assert_eq!(Path::new(state["initial"].as_str().unwrap()), result);
    assert!(run
        .join("checkpoints/step-6/adapter_model.safetensors")
        .exists());
}

#[test]
fn a_run_can_start_from_an_adapter_which_is_also_its_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = fixture("lora/tiny-llama-adapter");
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace(
            "[data]",
            &format!("adapter = {:?}\n\n[data]", adapter.to_str().unwrap()),
        )
    });
    let run = train(&ws, &[]);
    let train_m = metrics(&run, "train");
    // Policy and reference both start as base + adapter: the first step's rewards are zero.
    assert_eq!(train_m[&1]["rewards/chosen"], 0.0);
    assert!(train_m[&6]["rewards/margins"] != 0.0);
    let config = common::read_json(&run.join("checkpoints/step-6/adapter_config.json"));
    assert_eq!(config["r"], 4, "the adapter's own rank");
    // A [lora] section that contradicts the adapter is refused, naming both.
    let ws2 = tiny_workspace(&tmp.path().join("two"), |t| {
        format!(
            "{}\n[lora]\nr = 8\n",
            t.replace(
                "[data]",
                &format!("adapter = {:?}\n\n[data]", adapter.to_str().unwrap()),
            )
        )
    });
    let out = gaplab(&["train", ws2.to_str().unwrap(), "--variant", "dpo"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("r = 8") && err.contains("r = 4") && err.contains("tiny-llama-adapter"),
        "{err}"
    );
}

#[test]
fn bad_lora_settings_are_config_errors_at_their_place() {
    let tmp = tempfile::tempdir().unwrap();
    for (section, want) in [
        ("r = 0", "lora.r: expected a rank of at least 1"),
        ("alpha = -2.0", "lora.alpha: expected a number > 0, got -2"),
        ("dropout = 1.0", "lora.dropout"),
        ("target_modules = [\"c_attn\"]", "\"c_attn\" matches no module of the decoder; its linear layers are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"),
    ] {
        let ws = tiny_workspace(&tmp.path().join(section.len().to_string()), |t| {
            format!("{t}\n[lora]\n{section}\n")
        });
        let out = gaplab(&["check", ws.to_str().unwrap()]);
        assert!(!out.status.success(), "{section}");
        let err = stderr(&out);
        let line = 1 + std::fs::read_to_string(ws.join("gaplab.toml"))
            .unwrap()
            .lines()
            .position(|l| l == section)
            .unwrap();
        assert!(err.contains(&format!("gaplab.toml:{line}:")), "{section}: {err}");
        assert!(err.contains(want), "{section}: {err}");
    }
}

#[test]
fn check_describes_the_adapters_and_refuses_foreign_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| format!("{t}{LORA}"));
    let out = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = common::stdout(&out);
    assert!(
        text.contains("lora: r 4 alpha 8 (scale 2.000) dropout 0.1 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj · trainable"),
        "{text}"
    );
    // An adapter made for another base, and a full checkpoint given as an adapter.
    for (dir, want) in [
        (
            fixture("lora/tiny-qwen2-adapter"),
            "has shape [128, 2] but the base model with r = 2 implies [176, 2]",
        ),
        (
            fixture("tiny-qwen2"),
            "a full checkpoint, not a LoRA adapter",
        ),
    ] {
        let ws = tiny_workspace(&tmp.path().join(dir.file_name().unwrap()), |t| {
            t.replace(
                "[data]",
                &format!("adapter = {:?}\n\n[data]", dir.to_str().unwrap()),
            )
        });
        let out = gaplab(&["check", ws.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(want), "{err}");
    }
}
