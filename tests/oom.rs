//! Running out of device memory mid-run (injected with GAPLAB_FAULT: on the CPU a real
//! allocation failure aborts the process, on a GPU it comes back as this error): the step is
//! skipped and reported with the memory estimate, the weights as they were before it are
//! checkpointed, the run stops, and a resume finishes it as if nothing had happened.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::{jsonl, runs, stderr, tiny_workspace};
use serde_json::Value;

fn train_with_fault(ws: &Path, fault: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .args(["train", ws.to_str().unwrap(), "--headless"])
        .args(extra)
        .env(gaplab::fault::ENV, fault)
        .output()
        .unwrap()
}

fn train_losses(run: &Path) -> BTreeMap<u64, f64> {
    jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|v| v["split"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn checkpoints(run: &Path) -> Vec<usize> {
    gaplab::runlog::RunDir::open(run)
        .unwrap()
        .list_checkpoints()
        .into_iter()
        .map(|c| c.0)
        .collect()
}

#[test]
fn a_step_out_of_memory_is_skipped_checkpointed_and_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    // Checkpoints every 2 steps; step 5 runs out of memory, so step 4's weights are saved
    // again under their own name and step 5 is never applied.
    let ws = tiny_workspace(tmp.path(), |t| t);
    let out = train_with_fault(&ws, "oom-step@5", &["--variant", "dpo"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("out of device memory in step 5"), "{err}");
    assert!(err.contains("memory estimate on cpu"), "{err}");
    assert!(err.contains("lower train.batch_size"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let run = runs(&ws.join("runs")).pop().unwrap();
    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["state"], "failed");
    assert_eq!(checkpoints(&run).last(), Some(&4));
    let events = jsonl(&run.join("events.jsonl"));
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "skipped" && e["step"] == 5),
        "the step is reported skipped"
    );
    assert!(
        events.iter().any(|e| e["event"] == "log"
            && e["level"] == "error"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("free device memory now")),
        "the device's error and free memory are logged"
    );
    assert!(!train_losses(&run).contains_key(&5));

    // The resumed run ends where an uninterrupted one does.
    let out = Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .args(["train", ws.to_str().unwrap(), "--headless", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = tmp.path().join("whole");
    let out = Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .args([
            "train",
            ws.to_str().unwrap(),
            "--headless",
            "--variant",
            "dpo",
        ])
        .arg("--out")
        .arg(&whole)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (a, b) = (
        train_losses(&run),
        train_losses(&runs(&whole).pop().unwrap()),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (step, x) in &a {
        assert!(
            (x - b[step]).abs() < 1e-6,
            "step {step}: {x} vs {}",
            b[step]
        );
    }
}

#[test]
fn running_out_inside_the_update_saves_nothing_half_updated() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t);
    let out = train_with_fault(&ws, "oom-update@3", &["--variant", "dpo"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("out of device memory in the optimizer update of step 3"),
        "{err}"
    );
    assert!(err.contains("were not saved"), "{err}");
    let run = runs(&ws.join("runs")).pop().unwrap();
    assert_eq!(checkpoints(&run), vec![2], "only the checkpoint before it");
}
