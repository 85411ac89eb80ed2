//! `gaplab attach --headless` and `--jsonl` through the real binary: a run followed without a
//! dashboard, finished or live, and the mistakes a user can make with them.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{gaplab, runs, stderr, stdout, tiny_workspace};
use serde_json::Value;

/// A tiny workspace with one variant of `steps` steps (evaluated and sampled at its start and
/// end, no checkpoints on the way).
fn workspace(dir: &Path, steps: usize) -> PathBuf {
    tiny_workspace(dir, |t| {
        let t = t
            .replace("steps = 6", &format!("steps = {steps}"))
            .replace("interval = 3", "interval = 1000")
            .replace("interval = 2", "interval = 0");
        // The first variant only.
        t[..t.find("[[variant]]\nname = \"dpo-poet\"").unwrap()].to_string()
    })
}

fn finished_run(dir: &Path) -> PathBuf {
    let ws = workspace(dir, 6);
    let out = gaplab(&["train", ws.to_str().unwrap(), "--headless"]);
    assert!(out.status.success(), "{}", stderr(&out));
    runs(&ws.join("runs")).pop().unwrap()
}

/// Whether two JSON values are the same record: floats may differ in their last bit (a record
/// read back and written again), nothing else may.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Asserts that `printed` holds events.jsonl's records of `run`, in order, one a line.
fn assert_records(printed: &str, run: &Path) {
    let on_disk = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    let (a, b): (Vec<&str>, Vec<&str>) = (printed.lines().collect(), on_disk.lines().collect());
    assert_eq!(a.len(), b.len(), "one line per record");
    for (n, (x, y)) in a.iter().zip(&b).enumerate() {
        let (x, y): (Value, Value) = (
            serde_json::from_str(x).unwrap(),
            serde_json::from_str(y).unwrap(),
        );
        assert!(same(&x, &y), "record {}: {x} != {y}", n + 1);
    }
}

#[test]
fn jsonl_prints_a_finished_runs_records_and_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let run = finished_run(tmp.path());
    let out = gaplab(&["attach", "--jsonl", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_records(&stdout(&out), &run);
    let last: Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "state");
    assert_eq!(last["state"]["state"], "finished");
}

#[test]
fn headless_prints_the_progress_lines_of_train() {
    let tmp = tempfile::tempdir().unwrap();
    let run = finished_run(tmp.path());
    let out = gaplab(&["attach", "--headless", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("dpo: started 6 steps"), "{err}");
    for step in 1..=6 {
        assert!(
            err.contains(&format!("dpo {step}/6 [")),
            "step {step}: {err}"
        );
    }
    assert!(err.contains("dpo: eval @ 6: loss"), "{err}");
    assert!(err.contains("dpo: finished 6 steps"), "{err}");
    assert!(stdout(&out).is_empty());
}

/// A child process killed when the test ends, however it ends (unless it was waited for).
struct Reaped(Option<Child>);

impl Reaped {
    fn pid(&self) -> i32 {
        self.0.as_ref().unwrap().id() as i32
    }

    /// Waits for the process to exit, with everything it printed.
    fn output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A headless training of `ws` and its run directory, once the run has written `file`.
fn live_run(ws: &Path, file: &str) -> (Reaped, PathBuf) {
    let trainer = Reaped(Some(
        Command::new(env!("CARGO_BIN_EXE_gaplab"))
            .args(["train", ws.to_str().unwrap(), "--headless"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let root = ws.join("runs");
    wait_until("the run to start", || {
        root.is_dir() && runs(&root).first().is_some_and(|r| r.join(file).exists())
    });
    (trainer, runs(&root).pop().unwrap())
}

fn attach(args: &[&str]) -> Reaped {
    Reaped(Some(
        Command::new(env!("CARGO_BIN_EXE_gaplab"))
            .arg("attach")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

#[test]
fn viewers_follow_a_live_run_until_it_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace(tmp.path(), 150);
    let (trainer, run) = live_run(&ws, "control.sock");
    let r = run.to_str().unwrap();
    // One holding a control connection, as the load benchmark's viewers do.
    let jsonl = attach(&["--jsonl", "--hold-control", r]);
    let headless = attach(&["--headless", r]);
    let status = std::fs::read_to_string(run.join("status.json")).unwrap_or_default();
    assert!(
        !status.contains("finished"),
        "attached after the end: {status}"
    );
    let [jsonl, headless] = [jsonl, headless].map(|v| {
        let out = v.output();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        out
    });
    assert!(trainer.output().status.success());
    assert_records(&stdout(&jsonl), &run);
    let err = stderr(&headless);
    assert!(err.contains("dpo 150/150 ["), "{err}");
    assert!(err.contains("dpo: finished 150 steps"), "{err}");
}

#[test]
fn a_viewer_of_a_live_run_leaves_on_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace(tmp.path(), 1_000_000);
    let (_trainer, run) = live_run(&ws, "events.jsonl");
    let viewer = attach(&["--jsonl", run.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { kill(viewer.pid(), 2) };
    let out = viewer.output();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let first: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], "started");
    // The run goes on without its viewer.
    let status = std::fs::read_to_string(run.join("status.json")).unwrap_or_default();
    assert!(status.contains("running"), "{status}");
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn headless_attach_names_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let not_a_run = tmp.path().join("notes");
    std::fs::create_dir_all(&not_a_run).unwrap();
    let out = gaplab(&["attach", "--headless", not_a_run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("notes: not a run directory (no config.toml) or a workspace"),
        "{}",
        stderr(&out)
    );
    let ws = workspace(tmp.path(), 6);
    let out = gaplab(&["attach", "--jsonl", ws.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("ws: no runs yet"), "{}", stderr(&out));
    // Both at once: one output or the other.
    let out = gaplab(&["attach", "--headless", "--jsonl", ws.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
    // Without a terminal and without either flag, the error says what to use instead.
    let run = finished_run(&tmp.path().join("other"));
    let out = gaplab(&["attach", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--headless"), "{}", stderr(&out));
}

#[test]
fn a_viewer_leaves_a_run_whose_training_was_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace(tmp.path(), 1_000_000);
    let (trainer, run) = live_run(&ws, "control.sock");
    let viewer = attach(&["--headless", run.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1000));
    // SIGKILL: no final state, the socket file stays.
    drop(trainer);
    let t = Instant::now();
    let out = viewer.output();
    assert!(t.elapsed() < Duration::from_secs(90));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("nobody answers on its control socket"),
        "{err}"
    );
    assert!(err.contains("ended without a final state"), "{err}");
}
