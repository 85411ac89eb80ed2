//! Run directories read back as events, as `gaplab attach` reads them.
//!
//! tests/fixtures/run-v0 is a run directory written by gaplab before events.jsonl existed
//! (checkpoint folders keep only trainer_state.json, paths are shortened): eight DPO steps on
//! the tiny Llama, paused at step 0 over the control socket, stepped singly to step 4 (step 2
//! made NaN with GAPLAB_FAULT_NAN_STEPS=2), its lr edited (applied) and its beta made invalid
//! (rejected) while paused, then resumed to the end. tests/fixtures/run-v0-replay.jsonl holds
//! the events that version's reader gave for it (paths as `<run>`, configs left out).

mod common;

use std::path::{Path, PathBuf};

use gaplab::event::Event;
use gaplab::runlog::tail::replay;

fn v0() -> PathBuf {
    common::fixture("run-v0")
}

/// An event as JSON, comparable across machines.
fn normalised(ev: &Event, run: &Path) -> serde_json::Value {
    let mut v = serde_json::to_value(ev).unwrap();
    if let Some(c) = v.get_mut("config") {
        *c = serde_json::Value::Null;
    }
    let text = v.to_string().replace(&run.display().to_string(), "<run>");
    serde_json::from_str(&text).unwrap()
}

fn expected_v0() -> Vec<serde_json::Value> {
    std::fs::read_to_string(common::fixture("run-v0-replay.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
#[ignore]
fn record_v0_replay() {
    let lines: Vec<String> = replay(&v0())
        .unwrap()
        .iter()
        .map(|e| normalised(e, &v0()).to_string())
        .collect();
    std::fs::write(
        common::fixture("run-v0-replay.jsonl"),
        lines.join("\n") + "\n",
    )
    .unwrap();
}

#[test]
fn a_run_directory_without_events_jsonl_reads_as_before() {
    let got: Vec<serde_json::Value> = replay(&v0())
        .unwrap()
        .iter()
        .map(|e| normalised(e, &v0()))
        .collect();
    assert_eq!(got, expected_v0());
}
