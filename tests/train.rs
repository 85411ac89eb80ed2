//! The trainer through the real binary: run directories, checkpoints, exact resume, NaN steps,
//! signals, reference caching, the SFT stage, scratch models and starter workspaces.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};
use common::{copy_dir, cut_back, fixture, gaplab, jsonl, runs, stderr, stdout, tiny_workspace};
use serde_json::Value;

fn train(args: &[&str]) -> std::process::Output {
    let mut all = vec!["train"];
    all.extend_from_slice(args);
    gaplab(&all)
}

/// Train-split metric records by step.
fn train_metrics(run: &Path) -> BTreeMap<u64, Value> {
    jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|v| v["split"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v))
        .collect()
}

fn status(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).unwrap()).unwrap()
}

/// Metrics that must agree between two runs (wall-clock ones excluded).
fn comparable(v: &Value) -> BTreeMap<String, f64> {
    v.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !["time", "tokens_per_s"].contains(&k.as_str()))
        .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
        .collect()
}

fn assert_close(a: &Value, b: &Value, tol: f64, what: &str) {
    let (a, b) = (comparable(a), comparable(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (k, x) in &a {
        let y = b[k];
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: {k} {x} vs {y}"
        );
    }
}

#[test]
fn trains_every_variant_into_run_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t);
    let out = train(&[ws.to_str().unwrap(), "--headless"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = ws.join("runs");
    let rs = runs(&root);
    assert_eq!(rs.len(), 2);
    let names: Vec<String> = rs
        .iter()
        .map(|r| r.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names[0].starts_with("dpo-2") && names[1].starts_with("dpo-poet-2"),
        "{names:?}"
    );
    let mut first_batches = Vec::new();
    for run in &rs {
        // Resolved config, finished status, every step's TRL metrics, evals at 0, 3 and 6.
        let cfg: toml::Value =
            toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
        assert!(cfg["variant"].as_str().unwrap().starts_with("dpo"));
        assert_eq!(status(run)["state"], "finished");
        let m = train_metrics(run);
        assert_eq!(
            m.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        for k in [
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "logits/chosen",
            "logits/rejected",
            "grad_norm",
            "learning_rate",
            "tokens_per_s",
            "poet/k",
            "poet/kept_frac",
        ] {
            assert!(m[&1][k].is_number(), "{k}");
        }
        let evals: Vec<u64> = jsonl(&run.join("metrics.jsonl"))
            .iter()
            .filter(|v| v["split"] == "eval")
            .map(|v| v["step"].as_u64().unwrap())
            .collect();
        assert_eq!(evals, vec![0, 3, 6]);
        let prefix = jsonl(&run.join("prefix.jsonl"));
        assert_eq!(prefix.len(), 3);
        assert_eq!(prefix[0]["prefix"]["j"][0], 1);
        assert!(!prefix[0]["token_diffs"].as_array().unwrap().is_empty());
        assert!(!prefix[0]["entropy"].as_array().unwrap().is_empty());
        let samples = jsonl(&run.join("samples.jsonl"));
        assert!(samples.iter().any(|s| s["source"] == "reference"));
        assert!(samples
            .iter()
            .any(|s| s["source"] == "policy" && s["step"] == 6));
        // Keep 2: steps 4 and 6 remain; each is a loadable HF folder with optimizer state.
        let ckpts: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(ckpts, vec!["step-4", "step-6"]);
        let c = run.join("checkpoints/step-6");
        for f in [
            "optimizer.safetensors",
            "trainer_state.json",
            "tokenizer.json",
        ] {
            assert!(c.join(f).exists(), "{f}");
        }
        gaplab::model::io::load_dir(&c, &Device::Cpu, DType::F32).unwrap();
        first_batches.push(m[&1]["num_tokens"].as_f64().unwrap());
        // POET's share of tokens kept is below 1 only with POET.
        let kept = m[&1]["poet/kept_frac"].as_f64().unwrap();
        assert_eq!(kept < 1.0, run.to_string_lossy().contains("poet"));
    }
    // Same initial policy and data order: both variants start with loss ln 2 on the same batch.
    assert_eq!(first_batches[0], first_batches[1]);
    for run in &rs {
        let l = train_metrics(run)[&1]["loss"].as_f64().unwrap();
        assert!((l - std::f64::consts::LN_2).abs() < 1e-5);
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t);
    let out_dir = tmp.path().join("out");
    let out = train(&[
        ws.to_str().unwrap(),
        "--variant",
        "dpo-poet",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let full = runs(&out_dir).pop().unwrap();
    let interrupted = tmp.path().join("copy").join(full.file_name().unwrap());
    copy_dir(&full, &interrupted);
    cut_back(&interrupted, 4);
    // A leftover of a checkpoint write killed halfway must be ignored.
    let leftover = interrupted.join("checkpoints/.tmp-step-5");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("model.safetensors"), "partial").unwrap();

    let out = train(&[
        ws.to_str().unwrap(),
        "--resume",
        interrupted.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!leftover.exists());
    let (a, b) = (train_metrics(&full), train_metrics(&interrupted));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for step in 1..=6 {
        assert_close(&a[&step], &b[&step], 1e-6, &format!("step {step}"));
    }
    let evals = |r: &Path| -> Vec<Value> {
        jsonl(&r.join("metrics.jsonl"))
            .into_iter()
            .filter(|v| v["split"] == "eval")
            .collect()
    };
    let (ea, eb) = (evals(&full), evals(&interrupted));
    assert_eq!(ea.len(), eb.len(), "no duplicated records after resuming");
    for (x, y) in ea.iter().zip(&eb) {
        assert_close(x, y, 1e-6, "eval");
    }
    let samples = |r: &Path| -> Vec<Value> {
        jsonl(&r.join("samples.jsonl"))
            .into_iter()
            .map(|mut v| {
                v.as_object_mut().unwrap().remove("time");
                v
            })
            .collect()
    };
    assert_eq!(samples(&full), samples(&interrupted));
    assert_eq!(status(&interrupted)["state"], "finished");
}

#[test]
fn non_finite_steps_never_reach_the_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace("interval = 2\nkeep = 2", "interval = 1\nkeep = 10")
    });
    let out = Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .args(["train", ws.to_str().unwrap(), "--variant", "dpo"])
        .env(gaplab::train::trainer::FAULT_NAN_ENV, "2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let run = runs(&ws.join("runs")).pop().unwrap();
    let records = jsonl(&run.join("metrics.jsonl"));
    assert!(records
        .iter()
        .any(|v| v["event"] == "skipped" && v["step"] == 2));
    assert!(!train_metrics(&run).contains_key(&2));
    assert!(stderr(&out).contains("step 2 skipped"));
    let weights = |s: usize| -> Vec<Vec<u8>> {
        let ckpt = run.join(format!("checkpoints/step-{s}"));
        let files = gaplab::model::io::weight_files(&ckpt).unwrap();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    };
    assert_eq!(
        weights(1),
        weights(2),
        "the skipped step left the weights alone"
    );
    assert_ne!(weights(2), weights(3));
    let moments = |s: usize| {
        std::fs::read(run.join(format!("checkpoints/step-{s}/optimizer.safetensors"))).unwrap()
    };
    assert_eq!(moments(1), moments(2));
}

#[test]
fn too_many_bad_steps_fail_with_the_last_checkpoint_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace("seed = 3", "seed = 3\nmax_bad_steps = 2")
    });
    let out = Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .args(["train", ws.to_str().unwrap(), "--variant", "dpo"])
        .env(gaplab::train::trainer::FAULT_NAN_ENV, "3,4")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("2 consecutive steps with a non-finite loss"),
        "{err}"
    );
    let run = runs(&ws.join("runs")).pop().unwrap();
    assert_eq!(status(&run)["state"], "failed");
    let ckpts = gaplab::runlog::RunDir::open(&run)
        .unwrap()
        .list_checkpoints();
    assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2]);
    gaplab::model::io::load_dir(&ckpts[0].1, &Device::Cpu, DType::F32).unwrap();
}

#[test]
fn interrupt_checkpoints_and_resume_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace("steps = 6", "steps = 100000")
            .replace("interval = 3\npairs = 4", "interval = 0\npairs = 4")
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .args(["train", ws.to_str().unwrap(), "--variant", "dpo"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let root = ws.join("runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let done = root.exists()
            && runs(&root)
                .first()
                .is_some_and(|r| train_metrics(r).len() >= 3);
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "training did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    unsafe { libc_kill(child.id() as i32, 2) };
    let status_code = child.wait().unwrap().code();
    assert_eq!(status_code, Some(130));
    let run = runs(&root).pop().unwrap();
    let st = status(&run);
    assert_eq!(st["state"], "stopped");
    let stopped_at = st["step"].as_u64().unwrap() as usize;
    let dir = gaplab::runlog::RunDir::open(&run).unwrap();
    assert_eq!(dir.latest_checkpoint().unwrap().0, stopped_at);
    assert_eq!(
        *train_metrics(&run).keys().last().unwrap() as usize,
        stopped_at
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn precomputed_reference_matches_and_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tiny_workspace(&tmp.path().join("a"), |t| t);
    let cached = tiny_workspace(&tmp.path().join("b"), |t| {
        t.replace("seed = 3", "seed = 3\nprecompute_ref = true")
    });
    for ws in [&plain, &cached] {
        let out = train(&[ws.to_str().unwrap(), "--variant", "dpo"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (a, b) = (
        train_metrics(&runs(&plain.join("runs"))[0]),
        train_metrics(&runs(&cached.join("runs"))[0]),
    );
    for step in 1..=6 {
        assert_close(&a[&step], &b[&step], 1e-4, &format!("step {step}"));
    }
    let cache: Vec<_> = std::fs::read_dir(cached.join("runs/.cache"))
        .unwrap()
        .flatten()
        .collect();
    // Train and eval are the same file here, so one cache entry serves both.
    assert_eq!(cache.len(), 1);
    // A second run reuses the cache files.
    let before: Vec<_> = cache
        .iter()
        .map(|e| e.metadata().unwrap().modified().unwrap())
        .collect();
    let out = train(&[cached.to_str().unwrap(), "--variant", "dpo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after: Vec<_> = std::fs::read_dir(cached.join("runs/.cache"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().modified().unwrap())
        .collect();
    assert_eq!(before.len(), after.len());
}

#[test]
fn sft_stage_is_shared_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        format!("{t}\n[sft]\nsteps = 3\nlr = 1e-3\nbatch_size = 2\n")
    });
    let out = train(&[ws.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = ws.join("runs");
    let sft: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("sft-"))
        .collect();
    assert_eq!(sft.len(), 1);
    let ckpt = sft[0].join("checkpoint");
    let weights_file = gaplab::model::io::weight_files(&ckpt).unwrap()[0].clone();
    assert_eq!(
        jsonl(&sft[0].join("metrics.jsonl"))
            .iter()
            .filter(|v| v["split"] == "train")
            .count(),
        3
    );
    for run in runs(&root) {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("checkpoints/step-6/trainer_state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(Path::new(state["initial"].as_str().unwrap()), ckpt);
    }
    let stamp = std::fs::metadata(&weights_file)
        .unwrap()
        .modified()
        .unwrap();
    let out = train(&[ws.to_str().unwrap(), "--variant", "dpo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = std::fs::metadata(&weights_file)
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(stamp, again, "the SFT checkpoint is reused, not retrained");
}

#[test]
fn scratch_models_train_from_a_tokenizer_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace(
            &format!("path = {:?}", fixture("tiny-llama")),
            &format!(
                "tokenizer = {:?}\n[model.scratch]\narch = \"qwen2\"\nhidden_size = 32\nintermediate_size = 64\nnum_hidden_layers = 1\nnum_attention_heads = 4\nnum_key_value_heads = 2\nmax_position_embeddings = 128\n",
                fixture("tiny-llama")
            ),
        )
        .replace("objective = \"dpo\"", "objective = \"simpo\"\ngamma = 0.5")
        .replace("beta = 0.1", "beta = 2.0")
    });
    let out = train(&[ws.to_str().unwrap(), "--variant", "dpo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = runs(&ws.join("runs")).pop().unwrap();
    assert_eq!(train_metrics(&run).len(), 6);
    let cfg =
        gaplab::model::ModelConfig::load(&run.join("checkpoints/step-6/config.json")).unwrap();
    assert_eq!(cfg.arch, gaplab::model::Arch::Qwen2);
    assert!(cfg.tie_word_embeddings);
}

#[test]
fn init_writes_a_workspace_that_checks_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new");
    let out = gaplab(&[
        "init",
        dir.to_str().unwrap(),
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = gaplab(&["check", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = common::stdout(&out);
    assert!(
        text.contains("config ok") && text.contains("chosen longer in"),
        "{text}"
    );
    let out = train(&[dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(runs(&dir.join("runs")).len(), 2);
    // A second init refuses to overwrite.
    let out = gaplab(&["init", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_errors_name_file_line_column_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "beta = 0.1",
            "beta = -0.5",
            ":13:8: train.beta: expected a number > 0",
        ),
        (
            "lr = 1e-3",
            "lr = \"fast\"",
            ":14:6: train.lr: invalid type: string \"fast\"",
        ),
        (
            "batch_size = 2\nsteps",
            "batch_sise = 2\nsteps",
            ":15:1: train.batch_sise: unknown field `batch_sise`",
        ),
        (
            "poet = true",
            "poet = 1",
            ":39:8: variant[1].poet: invalid type: integer `1`, expected true, false, \"min\", \"ratio_k\", \"ratio_own\" or \"fixed\"",
        ),
    ];
    for (i, (from, to, want)) in cases.iter().enumerate() {
        let ws = tiny_workspace(&tmp.path().join(i.to_string()), |t| t.replace(from, to));
        for cmd in ["check", "train"] {
            let out = gaplab(&[cmd, ws.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(2), "{cmd} {to}");
            let err = stderr(&out);
            assert!(
                err.contains("gaplab.toml") && err.contains(want),
                "{cmd} {to}: {err}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
        assert!(!ws.join("runs").exists(), "nothing runs on a bad config");
    }
}

/// The tiny workspace with one variant and tiny length limits (`extra` goes into `[data]`).
fn limited_workspace(dir: &Path, max_prompt_len: usize, max_len: usize, extra: &str) -> PathBuf {
    tiny_workspace(dir, |t| {
        let t = t
            .replace("max_len = 64", &format!("max_len = {max_len}\n{extra}"))
            .replace(
                "max_prompt_len = 32",
                &format!("max_prompt_len = {max_prompt_len}"),
            );
        t[..t.find("[[variant]]").unwrap()].to_string()
    })
}

#[test]
fn check_counts_prompts_cut_responses_truncated_and_pairs_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "",
            "length limits: max_prompt_len 12 (keep_end) / max_len 32 (overlong: truncate)",
            "5 prompts cut, 3 pairs with responses truncated, 0 of 6 pairs dropped",
        ),
        (
            "overlong = \"drop\"\nprompt_truncation = \"keep_end\"",
            "length limits: max_prompt_len 12 (keep_end) / max_len 32 (overlong: drop)",
            "2 prompts cut, 0 pairs with responses truncated, 3 of 6 pairs dropped",
        ),
        (
            "prompt_truncation = \"keep_start\"",
            "length limits: max_prompt_len 12 (keep_start) / max_len 32 (overlong: truncate)",
            "5 prompts cut, 3 pairs with responses truncated, 0 of 6 pairs dropped",
        ),
    ];
    for (i, (extra, limits, counts)) in cases.iter().enumerate() {
        let ws = limited_workspace(&tmp.path().join(i.to_string()), 12, 32, extra);
        let out = gaplab(&["check", ws.to_str().unwrap()]);
        assert!(out.status.success(), "{extra}: {}", stderr(&out));
        let text = common::stdout(&out);
        let pairs = fixture("pairs.jsonl").display().to_string();
        for want in [
            limits.to_string(),
            format!("  train {pairs}: {counts}"),
            format!("  eval {pairs}: {counts}"),
        ] {
            assert!(text.contains(&want), "{extra}: missing {want:?} in\n{text}");
        }
    }
    // The statistics are of the pairs kept.
    let ws = tmp.path().join("1/ws");
    let text = common::stdout(&gaplab(&["check", ws.to_str().unwrap()]));
    assert!(
        text.contains(": 3 pairs (lengths in tokens") && text.contains("eval: 3 pairs"),
        "{text}"
    );
}

#[test]
fn dropping_overlong_pairs_trains_on_fewer_or_errors_when_none_are_left() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = limited_workspace(&tmp.path().join("some"), 12, 32, "overlong = \"drop\"");
    let out = train(&[ws.to_str().unwrap(), "--headless"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = runs(&ws.join("runs")).pop().unwrap();
    let m = train_metrics(&run);
    // 6 steps of 2 pairs over the 3 pairs kept: 4 epochs (2 with all 6).
    assert_eq!(m[&6]["epoch"].as_f64().unwrap(), 4.0);
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(
        log.contains("pairs fit to max_prompt_len 12 (keep_end) / max_len 32 (overlong: drop): train: 2 prompts cut, 0 pairs with responses truncated, 3 of 6 pairs dropped; eval: 2 prompts cut"),
        "{log}"
    );

    let ws = limited_workspace(&tmp.path().join("none"), 4, 10, "overlong = \"drop\"");
    let out = train(&[ws.to_str().unwrap(), "--headless"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("pairs.jsonl: all 6 train pairs are longer than data.max_len (10)")
            && err.contains("data.max_prompt_len (4, keep_end)"),
        "{err}"
    );
    let out = gaplab(&["check", ws.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("all 6 train pairs"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn runs_that_cannot_fit_are_refused_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace("seed = 3", "seed = 3\nmax_memory_gb = 0.001")
    });
    let out_dir = tmp.path().join("out");
    let o = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("variant dpo")
            && e.contains("needs about")
            && e.contains("train.max_memory_gb = 0.001")
            && e.contains("weights")
            && e.contains("train.memory_check = false"),
        "{e}"
    );
    let o = train(&[ws.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs about"), "{}", stderr(&o));

    // Switching the check off trains, and the log still carries the estimate.
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace(
            "seed = 3",
            "seed = 3\nmax_memory_gb = 0.001\nmemory_check = false",
        )
    });
    let o = train(&[
        ws.to_str().unwrap(),
        "--variant",
        "dpo",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = runs(&out_dir).pop().unwrap();
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("memory estimate on cpu"), "{log}");
    let o = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("memory estimate on cpu"));
}

#[test]
fn datasets_are_reused_until_a_data_file_changes() {
    use gaplab::config::Workspace;
    use gaplab::model::Tok;
    use gaplab::train::dataset::load_dataset;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.jsonl");
    std::fs::copy(fixture("pairs.jsonl"), &data).unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace(
            &format!("{:?}", fixture("pairs.jsonl")),
            &format!("{data:?}"),
        )
    });
    let ws = Workspace::load(&ws).unwrap();
    let cfg = ws.run_config("dpo").unwrap();
    let tok = Tok::load(&fixture("tiny-llama"), None).unwrap();
    let first = load_dataset(&cfg, &tok, 320).unwrap();
    assert_eq!(first.train.len(), 6);
    let again = load_dataset(&ws.run_config("dpo-poet").unwrap(), &tok, 320).unwrap();
    assert_eq!(again.train, first.train);
    // One more pair in the file: read again.
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{\"prompt\": \"one more\", \"chosen\": \"yes\", \"rejected\": \"no\"}\n");
    std::fs::write(&data, text).unwrap();
    assert_eq!(load_dataset(&cfg, &tok, 320).unwrap().train.len(), 7);
}

#[test]
fn a_gpu_workspace_checks_here_and_names_the_variant_when_it_cannot_train() {
    if gaplab::model::select_device("cuda:0").is_ok() {
        return; // a CUDA build on a GPU machine trains it
    }
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace(
            "seed = 3",
            "seed = 3\ndevice = \"cuda:0\"\ndtype = \"bf16\"",
        )
    });
    let o = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("memory estimate on cuda:0 (not on this machine) bf16"),
        "{}",
        stdout(&o)
    );
    let o = train(&[ws.to_str().unwrap(), "--variant", "dpo-poet", "--headless"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("failed before training: variant dpo-poet: device \"cuda:0\""),
        "{e}"
    );
}

/// Objectives beyond DPO train through the real binary: mixtures, the batch-sorting losses
/// with gradient accumulation, the reference-free ones, POET's rules with keep_eos, WPO, SamPO
/// with a precomputed reference, and each logs finite TRL metrics.
#[test]
fn every_kind_of_objective_trains_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let variants = r#"
[[variant]]
name = "rpo"
objective = ["sigmoid", "sft"]
loss_weights = [1.0, 0.5]
poet = "ratio_k"
poet_ratio = 0.5

[[variant]]
name = "aot"
objective = "aot_unpaired"
label_smoothing = 0.1
grad_accum = 2
batch_size = 1

[[variant]]
name = "orpo"
objective = "orpo"

[[variant]]
name = "alphapo"
objective = "alphapo"
alpha = 0.25
beta = 2.0

[[variant]]
name = "ipo-wpo"
objective = "ipo"
use_weighting = true
f_divergence_type = "js_divergence"

[[variant]]
name = "keep-eos"
objective = "hinge"
poet = "fixed"
poet_tokens = 2
keep_eos = true

[[variant]]
name = "sampo-rdpo"
objective = "dpo"
sampo = true
rdpo_alpha = 0.01
position_decay = 0.9
"#;
    let ws = tiny_workspace(tmp.path(), |t| {
        let t = t.replace("seed = 3", "seed = 3\nprecompute_ref = true");
        let cut = t.find("[[variant]]").unwrap();
        format!("{}{variants}", &t[..cut])
    });
    let out = train(&[ws.to_str().unwrap(), "--headless"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dirs = runs(&ws.join("runs"));
    assert_eq!(dirs.len(), 7, "{dirs:?}");
    for run in &dirs {
        let m = train_metrics(run);
        assert_eq!(m.len(), 6, "{}", run.display());
        for (step, v) in &m {
            for key in ["loss", "rewards/margins", "rewards/accuracies", "grad_norm"] {
                let x = v[key].as_f64().unwrap_or(f64::NAN);
                assert!(x.is_finite(), "{} step {step}: {key} = {x}", run.display());
            }
        }
        let first = m[&1]["loss"].as_f64().unwrap();
        let last = m[&6]["loss"].as_f64().unwrap();
        assert!(first != last, "{}: the loss never moved", run.display());
    }
    // The aot variant warned that sorting a batch of one changes nothing.
    let aot = dirs
        .iter()
        .find(|d| d.to_string_lossy().contains("/aot-"))
        .unwrap();
    let log = std::fs::read_to_string(aot.join("log.txt")).unwrap();
    assert!(log.contains("aot_unpaired sorts within the batch"), "{log}");
}
