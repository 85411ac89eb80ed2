//! The engine's command loop: pause, single steps, sample and checkpoint on demand, live
//! settings, stop. Every command is acknowledged by an event.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::mpsc::Receiver;
use std::time::Duration;

use gaplab::config::Workspace;
use gaplab::engine::{self, Command, Outcome, Plan, Work};
use gaplab::event::{Event, RunState};

fn next(rx: &Receiver<Event>) -> Event {
    rx.recv_timeout(Duration::from_secs(60)).expect("an event")
}

/// Waits for the first event matching `f`, returning the events passed on the way.
fn until(rx: &Receiver<Event>, f: impl Fn(&Event) -> bool) -> (Event, Vec<Event>) {
    let mut seen = Vec::new();
    loop {
        let ev = next(rx);
        if f(&ev) {
            return (ev, seen);
        }
        seen.push(ev);
    }
}

#[test]
fn commands_are_taken_between_steps_and_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let ws_dir = common::tiny_workspace(tmp.path(), |t| t.replace("steps = 6", "steps = 40"));
    let ws = Workspace::load(&ws_dir).unwrap();
    let cfg = ws.run_config("dpo").unwrap();
    let engine = engine::spawn(Plan {
        runs_root: ws_dir.join("runs"),
        work: Work::Variants(vec![cfg.clone()]),
    })
    .unwrap();
    let (rx, tx) = (&engine.events, engine.commands.clone());

    // Pause as soon as training runs; the pause is acknowledged.
    until(rx, |e| matches!(e, Event::Step(_)));
    tx.send(Command::Pause).unwrap();
    let (ev, _) = until(rx, |e| {
        matches!(
            e,
            Event::State {
                state: RunState::Paused,
                ..
            }
        )
    });
    let Event::State {
        step: paused_at, ..
    } = ev
    else {
        unreachable!()
    };

    // Nothing moves while paused.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());

    // Two single steps, then on-demand samples and checkpoint, then a live edit.
    tx.send(Command::Step).unwrap();
    tx.send(Command::Step).unwrap();
    let mut steps = Vec::new();
    while steps.len() < 2 {
        if let Event::Step(m) = next(rx) {
            steps.push(m.step);
        }
    }
    assert_eq!(steps, vec![paused_at + 1, paused_at + 2]);
    tx.send(Command::SampleNow).unwrap();
    let (ev, _) = until(rx, |e| matches!(e, Event::Samples { .. }));
    let Event::Samples { step, samples } = ev else {
        unreachable!()
    };
    assert_eq!(step, paused_at + 2);
    assert!(samples.iter().all(|s| s.source == "policy"));
    tx.send(Command::Checkpoint).unwrap();
    let (ev, _) = until(rx, |e| matches!(e, Event::Checkpoint { .. }));
    let Event::Checkpoint { step, path } = ev else {
        unreachable!()
    };
    assert_eq!(step, paused_at + 2);
    // The fixture is sharded, and so is its checkpoint.
    assert!(gaplab::model::io::weight_files(&path).is_ok_and(|f| f.len() == 3));

    // An invalid edit is reported and changes nothing.
    tx.send(Command::ConfigError("gaplab.toml:3:8: bad".into()))
        .unwrap();
    let (ev, _) = until(rx, |e| matches!(e, Event::ConfigRejected { .. }));
    assert!(matches!(ev, Event::ConfigRejected { step, .. } if step == paused_at + 2));
    // batch_size needs a restart: reported, not applied.
    let mut edited = ws.clone();
    edited.config.train.lr = 5e-4;
    edited.config.train.beta = 0.25;
    edited.config.train.batch_size = 3;
    tx.send(Command::Reload(Box::new(edited))).unwrap();
    let (ev, _) = until(rx, |e| matches!(e, Event::Applied { .. }));
    let Event::Applied {
        changes, ignored, ..
    } = ev
    else {
        unreachable!()
    };
    let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, vec!["train.beta", "train.lr"]);
    assert_eq!(ignored, vec!["train.batch_size"]);
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "still paused"
    );

    // Resume: training continues with the new settings, then stop.
    tx.send(Command::Resume).unwrap();
    until(rx, |e| {
        matches!(
            e,
            Event::State {
                state: RunState::Running,
                ..
            }
        )
    });
    let (ev, _) = until(rx, |e| matches!(e, Event::Step(_)));
    let Event::Step(m) = ev else { unreachable!() };
    // Cosine schedule from the new base rate: at most the new lr, above the old one's share.
    assert!(m.metrics["learning_rate"] <= 5e-4 && m.metrics["learning_rate"] > 1e-4);
    tx.send(Command::Stop).unwrap();
    let (ev, before) = until(rx, |e| {
        matches!(
            e,
            Event::State {
                state: RunState::Stopped,
                ..
            }
        )
    });
    assert!(
        before.iter().any(|e| matches!(e, Event::Checkpoint { .. })),
        "stop writes a checkpoint"
    );
    let Event::State {
        step: stopped_at, ..
    } = ev
    else {
        unreachable!()
    };
    assert!(stopped_at < 40);
    drop(tx);
    assert_eq!(engine.join().unwrap(), Outcome::Stopped);

    // The applied change is part of the run's record.
    let run = std::fs::read_dir(ws_dir.join("runs"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("dpo-"))
        .unwrap()
        .path();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics
        .lines()
        .any(|l| l.contains("\"event\":\"applied\"") && l.contains("train.lr")));
}
