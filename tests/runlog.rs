//! Run directories read back as events: the format of this version (`events.jsonl`) and the
//! one before it, which `gaplab attach` keeps reading.
//!
//! tests/fixtures/run-v0 is a run directory written by gaplab before events.jsonl existed
//! (checkpoint folders keep only trainer_state.json, paths are shortened): eight DPO steps on
//! the tiny Llama, paused at step 0 over the control socket, stepped singly to step 4 (step 2
//! made NaN with GAPLAB_FAULT_NAN_STEPS=2), its lr edited (applied) and its beta made invalid
//! (rejected) while paused, then resumed to the end. tests/fixtures/run-v0-replay.jsonl holds
//! the events that version's reader gave for it (paths as `<run>`, configs left out).
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use gaplab::config::Workspace;
use gaplab::engine::{self, Command, Outcome, Plan, Work};
use gaplab::event::{Event, Observer};
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

fn of_kind<'a>(events: &'a [Event], kind: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| serde_json::to_value(e).unwrap()["event"] == kind)
        .collect()
}

fn steps_of(events: &[&Event]) -> Vec<usize> {
    events.iter().map(|e| e.step()).collect()
}

#[test]
fn the_earlier_versions_run_gives_every_kind_of_event() {
    let got = replay(&v0()).unwrap();
    match &got[0] {
        Event::Started {
            variant,
            run_dir,
            start_step,
            total_steps,
            device,
            params,
            ..
        } => {
            assert_eq!((variant.as_str(), run_dir), ("dpo", &v0()));
            assert_eq!((*start_step, *total_steps), (0, 8));
            // Read from the log's prose.
            assert_eq!((device.as_str(), *params), ("cpu", 133_440));
        }
        e => panic!("expected Started first, got {e:?}"),
    }
    // status.json keeps the latest state only; the log's state lines are not repeated.
    assert_eq!(
        of_kind(&got, "state"),
        vec![&Event::State {
            step: 8,
            state: gaplab::event::RunState::Finished
        }]
    );
    assert_eq!(steps_of(&of_kind(&got, "step")), vec![1, 3, 4, 5, 6, 7, 8]);
    assert_eq!(steps_of(&of_kind(&got, "skipped")), vec![2]);
    let evals = of_kind(&got, "eval");
    assert_eq!(steps_of(&evals), vec![0, 3, 6, 8]);
    assert!(evals
        .iter()
        .all(|e| matches!(e, Event::Eval(r) if !r.prefix.j.is_empty())));
    assert_eq!(steps_of(&of_kind(&got, "samples")), vec![0, 4, 8]);
    // Only the checkpoints still on disk.
    assert_eq!(steps_of(&of_kind(&got, "checkpoint")), vec![6, 8]);
    match &of_kind(&got, "applied")[..] {
        [Event::Applied {
            step: 4,
            changes,
            ignored,
        }] => {
            assert_eq!(changes.len(), 1);
            assert_eq!(
                (
                    changes[0].field.as_str(),
                    changes[0].old.as_str(),
                    changes[0].new.as_str()
                ),
                ("train.lr", "0.001", "0.0005")
            );
            assert!(ignored.is_empty());
        }
        e => panic!("{e:?}"),
    }
    match &of_kind(&got, "config_rejected")[..] {
        [Event::ConfigRejected { step: 4, error }] => {
            assert!(
                error.ends_with("train.beta: expected a number > 0, got -1"),
                "{error}"
            )
        }
        e => panic!("{e:?}"),
    }
    // The log's own messages, without the lines it wrote for the events above.
    match &of_kind(&got, "log")[..] {
        [Event::Log {
            step: 0, message, ..
        }] => {
            assert!(message.starts_with("memory estimate on cpu"), "{message}")
        }
        e => panic!("{e:?}"),
    }
}

/// Equal JSON, numbers up to their last bits: serde_json's default float parser (without its
/// `float_roundtrip` feature) may read a written f64 back one unit in the last place off.
fn assert_same(got: &[serde_json::Value], want: &[serde_json::Value]) {
    use serde_json::Value;
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-14 * x.abs().max(y.abs()),
                _ => x == y,
            },
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(same(g, w), "got {g}\nwant {w}");
    }
}

/// Records what an observer is given.
#[derive(Default)]
struct Recorder(Vec<(usize, Event)>);

impl Observer for Recorder {
    fn on_event(&mut self, source: usize, ev: &Event) {
        self.0.push((source, ev.clone()));
    }
}

#[test]
fn a_new_run_directory_reads_back_as_its_live_events() {
    let tmp = tempfile::tempdir().unwrap();
    let ws_dir = common::tiny_workspace(tmp.path(), |t| t);
    let ws = Workspace::load(&ws_dir).unwrap();
    let engine = engine::spawn(Plan {
        runs_root: ws_dir.join("runs"),
        work: Work::Variants(vec![ws.run_config("dpo").unwrap()]),
    })
    .unwrap();
    // An invalid and a valid edit, taken at the first step boundary.
    engine
        .commands
        .send(Command::ConfigError("gaplab.toml:3:8: bad".into()))
        .unwrap();
    let mut edited = ws.clone();
    edited.config.train.lr = 5e-4;
    engine
        .commands
        .send(Command::Reload(Box::new(edited)))
        .unwrap();
    let mut live = Recorder::default();
    for ev in engine.events.iter() {
        live.on_event(0, &ev);
    }
    assert_eq!(engine.join().unwrap(), Outcome::Finished);
    let live: Vec<Event> = live.0.into_iter().map(|(_, e)| e).collect();
    for kind in [
        "started",
        "state",
        "step",
        "eval",
        "samples",
        "checkpoint",
        "log",
        "applied",
        "config_rejected",
    ] {
        assert!(!of_kind(&live, kind).is_empty(), "no {kind} event");
    }
    let json = |events: &[Event]| -> Vec<serde_json::Value> {
        // Through JSON: a NaN is not equal to itself, its JSON (null) is.
        events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    };

    let Event::Started { run_dir, .. } = &live[0] else {
        panic!("{:?}", live[0])
    };
    // Every record carries its format version and reads back as the event sent.
    let text = std::fs::read_to_string(run_dir.join("events.jsonl")).unwrap();
    let records: Vec<Event> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["v"], 1, "{l}");
            Event::from_record(l).unwrap()
        })
        .collect();
    assert_same(&json(&records), &json(&live));
    // The tailer gives what the engine sent, in order.
    assert_same(&json(&replay(run_dir).unwrap()), &json(&live));

    // log.txt says in words what viewers say.
    let log = std::fs::read_to_string(run_dir.join("log.txt")).unwrap();
    assert!(
        log.contains("info: config applied: train.lr 0.001 -> 0.0005"),
        "{log}"
    );
    assert!(
        log.contains("warn: config rejected, previous config kept: gaplab.toml:3:8: bad"),
        "{log}"
    );
    assert!(
        log.lines().last().unwrap().ends_with("info: finished"),
        "{log}"
    );
}
