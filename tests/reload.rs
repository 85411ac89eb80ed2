//! Hot reload through the real binary: a headless run whose gaplab.toml is edited the ways
//! editors save files applies the live settings within a bounded number of steps, records them
//! in its run directory, rejects invalid edits while keeping the config in effect, and reports
//! restart-only changes without applying them.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture;
use serde_json::Value;

/// Steps an edit may take to be applied: the watcher's debounce and the step boundary, with
/// room for a slow, busy CI machine. The runs below are far longer than any wait.
const MAX_STEPS_TO_APPLY: u64 = 400;

struct Run {
    child: Child,
    ws: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(lr: &str, beta: &str, extra: &str) -> String {
    format!(
        r#"[model]
path = {model:?}

[data]
train = {pairs:?}
eval = {pairs:?}
max_len = 64
max_prompt_len = 32

[train]
objective = "dpo"
beta = {beta}
lr = {lr}
schedule = "constant"
warmup_ratio = 0.0
batch_size = 2
steps = 1000000
seed = 3
{extra}
[sample]
from_eval = 1
max_new_tokens = 4

[[variant]]
name = "dpo"
"#,
        model = fixture("tiny-llama"),
        pairs = fixture("pairs.jsonl"),
    )
}

fn start(args: &[&str]) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("gaplab.toml"), config("1e-3", "0.1", "")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .arg("train")
        .arg(&ws)
        .arg("--headless")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = Run {
        child,
        ws,
        _tmp: tmp,
    };
    // Training is under way (the watcher started before the first step).
    wait_for(&run, "the first steps", |rows| train_steps(rows).len() >= 3);
    run
}

fn run_dir(run: &Run) -> Option<PathBuf> {
    std::fs::read_dir(run.ws.join("runs"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("dpo-"))
}

fn records(run: &Run) -> Vec<Value> {
    let Some(dir) = run_dir(run) else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    // The last line may be half written.
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn train_steps(rows: &[Value]) -> Vec<&Value> {
    rows.iter().filter(|r| r["split"] == "train").collect()
}

fn last_step(run: &Run) -> u64 {
    train_steps(&records(run))
        .last()
        .map_or(0, |r| r["step"].as_u64().unwrap())
}

fn wait_for(run: &Run, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = records(run);
        if f(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events<'a>(rows: &'a [Value], kind: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| r["event"] == kind).collect()
}

/// The `nth` (0-based) applied record, once it is there.
fn applied(run: &Run, nth: usize) -> Value {
    let rows = wait_for(run, "an applied record", |rows| {
        events(rows, "applied").len() > nth
    });
    events(&rows, "applied")[nth].clone()
}

fn change<'a>(rec: &'a Value, field: &str) -> Option<(&'a str, &'a str)> {
    rec["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["field"] == field)
        .map(|c| (c["old"].as_str().unwrap(), c["new"].as_str().unwrap()))
}

/// The learning rate of every train step after `step`, once there are some.
fn lr_after(run: &Run, step: u64) -> Vec<f64> {
    let rows = wait_for(run, "steps after the edit", |rows| {
        train_steps(rows)
            .iter()
            .any(|r| r["step"].as_u64().unwrap() > step + 2)
    });
    train_steps(&rows)
        .into_iter()
        .filter(|r| r["step"].as_u64().unwrap() > step)
        .map(|r| r["learning_rate"].as_f64().unwrap())
        .collect()
}

fn assert_bounded(before: u64, rec: &Value) {
    let at = rec["step"].as_u64().unwrap();
    assert!(
        at >= before && at - before <= MAX_STEPS_TO_APPLY,
        "edited at step {before}, applied at step {at}"
    );
}

fn edits_are_applied(mode: &[&str]) {
    let run = start(mode);
    let file = run.ws.join("gaplab.toml");

    // (a) In place.
    let before = last_step(&run);
    std::fs::write(&file, config("2e-3", "0.1", "")).unwrap();
    let rec = applied(&run, 0);
    assert_bounded(before, &rec);
    assert_eq!(change(&rec, "train.lr"), Some(("0.001", "0.002")), "{rec}");
    assert!(lr_after(&run, rec["step"].as_u64().unwrap())
        .iter()
        .all(|&lr| (lr - 2e-3).abs() < 1e-12));

    // (b) Write a temporary file and rename it over (vim, helix, VS Code).
    let before = last_step(&run);
    let tmp = run.ws.join(".gaplab.toml.tmp");
    std::fs::write(&tmp, config("2e-3", "0.3", "")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let rec = applied(&run, 1);
    assert_bounded(before, &rec);
    assert_eq!(change(&rec, "train.beta"), Some(("0.1", "0.3")), "{rec}");
    assert_eq!(rec["changes"].as_array().unwrap().len(), 1, "{rec}");

    // (c) Delete, then create again.
    let before = last_step(&run);
    std::fs::remove_file(&file).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&file, config("5e-4", "0.3", "")).unwrap();
    let rec = applied(&run, 2);
    assert_bounded(before, &rec);
    assert_eq!(change(&rec, "train.lr"), Some(("0.002", "0.0005")), "{rec}");
    assert!(lr_after(&run, rec["step"].as_u64().unwrap())
        .iter()
        .all(|&lr| (lr - 5e-4).abs() < 1e-12));

    // The log says the same in words.
    let log = std::fs::read_to_string(run_dir(&run).unwrap().join("log.txt")).unwrap();
    assert!(
        log.contains("config applied: train.lr 0.002 -> 0.0005"),
        "{log}"
    );
}

#[test]
fn edits_are_applied_native() {
    edits_are_applied(&[]);
}

#[test]
fn edits_are_applied_polling() {
    edits_are_applied(&["--watch-poll"]);
}

#[test]
fn invalid_and_restart_only_edits() {
    let run = start(&[]);
    let file = run.ws.join("gaplab.toml");

    // A syntax error, then an out-of-range value: rejected with line and column, nothing
    // changes.
    let broken = config("2e-3", "0.1", "").replace("lr = 2e-3", "lr = = 2e-3");
    std::fs::write(&file, &broken).unwrap();
    let rows = wait_for(&run, "a rejection", |rows| {
        !events(rows, "config_rejected").is_empty()
    });
    let error = events(&rows, "config_rejected")[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("gaplab.toml:13:"), "{error}");
    let rejected_at = events(&rows, "config_rejected")[0]["step"]
        .as_u64()
        .unwrap();

    std::fs::write(&file, config("1e-3", "-0.5", "")).unwrap();
    let rows = wait_for(&run, "a second rejection", |rows| {
        events(rows, "config_rejected").len() >= 2
    });
    let error = events(&rows, "config_rejected")[1]["error"]
        .as_str()
        .unwrap();
    assert!(
        error.contains("gaplab.toml:12:8: train.beta: expected a number > 0"),
        "{error}"
    );
    // Saved in Latin-1 (a non-UTF-8 byte on line 12): named, not silently waited out.
    let mut bytes = config("1e-3", "0.1", "")
        .replace("beta = 0.1", "beta = 0.1 # X")
        .into_bytes();
    let at = bytes.windows(3).position(|w| w == b"# X").unwrap();
    bytes[at + 2] = 0xe9;
    std::fs::write(&file, &bytes).unwrap();
    let rows = wait_for(&run, "a third rejection", |rows| {
        events(rows, "config_rejected").len() >= 3
    });
    let error = events(&rows, "config_rejected")[2]["error"]
        .as_str()
        .unwrap();
    assert!(
        error.contains("gaplab.toml:12:") && error.contains("not UTF-8"),
        "{error}"
    );
    assert!(events(&rows, "applied").is_empty());
    assert!(lr_after(&run, rejected_at)
        .iter()
        .all(|&lr| (lr - 1e-3).abs() < 1e-12));

    // Fixed, with a restart-only change among the live one: the live one applies, the other
    // is named and ignored.
    let before = last_step(&run);
    std::fs::write(
        &file,
        config("2e-3", "0.1", "").replace("batch_size = 2", "batch_size = 4"),
    )
    .unwrap();
    let rec = applied(&run, 0);
    assert_bounded(before, &rec);
    assert_eq!(change(&rec, "train.lr"), Some(("0.001", "0.002")), "{rec}");
    assert_eq!(
        rec["ignored"],
        serde_json::json!(["train.batch_size"]),
        "{rec}"
    );
}

#[test]
fn no_watch_turns_reloading_off() {
    let run = start(&["--no-watch"]);
    let file = run.ws.join("gaplab.toml");
    std::fs::write(&file, config("2e-3", "0.1", "")).unwrap();
    let until = last_step(&run) + 20;
    wait_for(&run, "more steps", |rows| {
        train_steps(rows)
            .last()
            .is_some_and(|r| r["step"].as_u64().unwrap() > until)
    });
    std::thread::sleep(Duration::from_millis(500));
    let rows = records(&run);
    assert!(events(&rows, "applied").is_empty());
    assert!(events(&rows, "config_rejected").is_empty());
}
