//! Bad input and signals through the real binary, where no other test file covers them: a
//! folder without gaplab.toml, contradictory length limits, data files with nothing in them,
//! glob patterns, unknown variants, an adapter path that is a file, a corrupt reference
//! cache, and SIGTERM / SIGHUP / a second SIGINT while training.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, gaplab, jsonl, runs, stderr, tiny_workspace};
use serde_json::Value;

fn check(ws: &Path) -> std::process::Output {
    gaplab(&["check", ws.to_str().unwrap()])
}

#[test]
fn a_folder_without_a_config_says_how_to_make_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = check(tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("no gaplab.toml (create one with `gaplab init"),
        "{err}"
    );
}

#[test]
fn a_prompt_limit_as_long_as_the_whole_is_located() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace("max_prompt_len = 32", "max_prompt_len = 64")
    });
    let out = check(&ws);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("gaplab.toml:9:")
            && err.contains("data.max_prompt_len: expected 1 <= max_prompt_len < max_len (64)"),
        "{err}"
    );
}

#[test]
fn a_data_file_of_blank_lines_has_no_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n  \n").unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replacen(
            &format!("{:?}", fixture("pairs.jsonl")),
            &format!("{empty:?}"),
            1,
        )
    });
    let out = check(&ws);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}: no preference pairs", empty.display())),
        "{err}"
    );
}

#[test]
fn glob_patterns_that_match_nothing_or_are_invalid_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let pattern = format!("{}/shards/train-*.jsonl", tmp.path().display());
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replacen(
            &format!("{:?}", fixture("pairs.jsonl")),
            &format!("{pattern:?}"),
            1,
        )
    });
    let err = stderr(&check(&ws));
    assert!(
        err.contains(&format!("{pattern}: the pattern matches no files")),
        "{err}"
    );
    let bad = format!("{}/[train.jsonl", tmp.path().display());
    let ws = tiny_workspace(&tmp.path().join("b"), |t| {
        t.replacen(
            &format!("{:?}", fixture("pairs.jsonl")),
            &format!("{bad:?}"),
            1,
        )
    });
    let err = stderr(&check(&ws));
    assert!(
        err.contains(&format!("{bad}: not a valid glob pattern")),
        "{err}"
    );
}

#[test]
fn an_unknown_variant_lists_the_known_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t);
    let out = gaplab(&["train", ws.to_str().unwrap(), "--variant", "dpo-typo"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("no variant named \"dpo-typo\" (variants: dpo, dpo-poet)"),
        "{err}"
    );
    assert!(!ws.join("runs").exists(), "nothing was started");
}

#[test]
fn an_adapter_path_that_is_a_file_is_not_an_adapter_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("adapter_model.safetensors");
    std::fs::write(&file, b"not a folder").unwrap();
    let model = fixture("tiny-llama");
    let out = gaplab(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        file.to_str().unwrap(),
        "--prompt",
        "hello",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}: not an adapter folder", file.display())),
        "{err}"
    );
}

fn train_losses(run: &Path) -> Vec<(u64, f64)> {
    jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|v| v["split"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_corrupt_reference_cache_is_computed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace("seed = 3", "seed = 3\nprecompute_ref = true")
    });
    let train = || {
        let out = gaplab(&["train", ws.to_str().unwrap(), "--variant", "dpo"]);
        assert!(out.status.success(), "{}", stderr(&out));
        runs(&ws.join("runs")).pop().unwrap()
    };
    let first = train();
    let cache = ws.join("runs/.cache");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert!(!entries.is_empty(), "the reference was cached");
    for p in &entries {
        // An interrupted write or a bad disk: half of the file.
        let bytes = std::fs::read(p).unwrap();
        std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
    }
    // Run directories are named by the second they start in.
    std::thread::sleep(Duration::from_millis(1100));
    let second = train();
    assert_ne!(first, second);
    let (a, b) = (train_losses(&first), train_losses(&second));
    assert_eq!(a.len(), 6);
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-6, "step {s}: {x} vs {y}");
    }
    for p in &entries {
        let header = std::fs::read(p).unwrap();
        assert!(
            safetensors::SafeTensors::deserialize(&header).is_ok(),
            "{} was written again",
            p.display()
        );
    }
}

fn status(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).unwrap()).unwrap()
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// A headless training of the dpo variant of `ws`, and its run directory once it has logged
/// two steps.
// The caller waits for the child it is given; clippy cannot follow it out of the function.
#[allow(clippy::zombie_processes)]
fn training(ws: &Path) -> (std::process::Child, std::path::PathBuf) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .args([
            "train",
            ws.to_str().unwrap(),
            "--variant",
            "dpo",
            "--headless",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let root = ws.join("runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(run) = root.exists().then(|| runs(&root).pop()).flatten() {
            if train_losses(&run).len() >= 2 {
                return (child, run);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("training did not start: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn long_workspace(dir: &Path, steps: usize) -> std::path::PathBuf {
    tiny_workspace(dir, |t| {
        t.replace("steps = 6", &format!("steps = {steps}"))
            .replace("interval = 3\npairs = 4", "interval = 0\npairs = 4")
    })
}

#[test]
fn sigterm_checkpoints_and_stops_like_an_interrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = long_workspace(tmp.path(), 100_000);
    let (mut child, run) = training(&ws);
    unsafe { libc_kill(child.id() as i32, SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let st = status(&run);
    assert_eq!(st["state"], "stopped");
    let at = st["step"].as_u64().unwrap() as usize;
    let dir = gaplab::runlog::RunDir::open(&run).unwrap();
    assert_eq!(dir.latest_checkpoint().unwrap().0, at);
}

#[test]
fn a_hang_up_never_stops_a_headless_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = long_workspace(tmp.path(), 60);
    let (child, run) = training(&ws);
    unsafe { libc_kill(child.id() as i32, SIGHUP) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(status(&run)["state"], "finished");
    assert_eq!(train_losses(&run).len(), 60);
}

#[test]
fn a_second_interrupt_quits_at_once_leaving_only_complete_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = long_workspace(tmp.path(), 100_000);
    let (mut child, run) = training(&ws);
    unsafe {
        libc_kill(child.id() as i32, SIGINT);
        libc_kill(child.id() as i32, SIGINT);
    }
    assert_eq!(child.wait().unwrap().code(), Some(130));
    // Whatever the second signal cut short, every checkpoint a resume could pick is whole.
    let dir = gaplab::runlog::RunDir::open(&run).unwrap();
    for (_, ckpt) in dir.list_checkpoints() {
        assert!(ckpt.join("trainer_state.json").is_file());
        gaplab::model::io::load_dir(&ckpt, &candle_core::Device::Cpu, candle_core::DType::F32)
            .unwrap();
    }
}
