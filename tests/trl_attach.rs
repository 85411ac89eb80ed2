//! A TRL (Hugging Face Trainer) output folder read as a finished gaplab run, through the real
//! binary and the dashboard: tests/fixtures/trl-dpo holds the trainer_state.json files of a
//! real DPOTrainer run on the tiny Llama (tests/fixtures/make_trl_fixture.py), and
//! tests/fixtures/trl-dpo-tensorboard.json what TensorBoard read from that run's own event file.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use common::render_app as render;

use std::collections::BTreeMap;

use common::{fixture, gaplab, read_json, stderr, stdout};
use gaplab::event::{Event, Observer};
use gaplab::ui::state::{App, Pane, Role};
use gaplab::ui::theme::{ColorDepth, ThemeFile, BUILTIN};
use serde_json::Value;

/// The numbers of a log_history entry, but its step.
fn numbers(entry: &Value) -> BTreeMap<String, f64> {
    entry
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.as_str() != "step")
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect()
}

#[test]
fn attach_jsonl_prints_the_trainers_log_as_gaplab_records() {
    let dir = fixture("trl-dpo");
    let out = gaplab(&["attach", "--jsonl", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let events: Vec<Event> = stdout(&out)
        .lines()
        .map(|l| Event::from_record(l).unwrap())
        .collect();
    let Event::Started {
        variant,
        total_steps,
        run_dir,
        ..
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!((variant.as_str(), *total_steps), ("trl-dpo", 6));
    assert_eq!(run_dir, &dir);

    // Every train entry is a step, every eval entry an eval, with the same numbers, in order.
    let state = read_json(&dir.join("trainer_state.json"));
    let history = state["log_history"].as_array().unwrap();
    let mut want = Vec::new();
    for e in history.iter().filter(|e| e.get("train_runtime").is_none()) {
        let eval = e
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("eval_"));
        want.push((eval, e["step"].as_u64().unwrap() as usize, numbers(e)));
    }
    let got: Vec<(bool, usize, BTreeMap<String, f64>)> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::Step(m) => Some((false, m.step, m.metrics.clone())),
            Event::Eval(r) => Some((true, r.step, r.metrics.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.iter().filter(|g| !g.0).count(), 6);
    assert!(got[0].2.contains_key("logps/chosen") && got[0].2.contains_key("rewards/margins"));

    let checkpoints: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Checkpoint { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(checkpoints, [3, 6]);
    let summary = history.last().unwrap();
    let runtime = format!(
        "train_runtime {}",
        summary["train_runtime"].as_f64().unwrap()
    );
    assert!(events.iter().any(|e| matches!(e, Event::Log { message, .. }
        if message.starts_with("Trainer summary: ") && message.contains(&runtime))));
    let last = serde_json::to_value(events.last().unwrap()).unwrap();
    assert_eq!(
        (last["event"].as_str(), last["state"]["state"].as_str()),
        (Some("state"), Some("finished"))
    );
}

#[test]
fn attach_headless_prints_progress_and_exits() {
    let dir = fixture("trl-dpo");
    let out = gaplab(&["attach", "--headless", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("trl-dpo: eval @ 3: loss 0.2601  accuracy 0.750"),
        "{err}"
    );
    assert!(err.contains("trl-dpo: finished 6 steps in"), "{err}");
}

#[test]
fn a_bad_trainer_state_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("trainer_state.json");
    std::fs::write(&file, "{\"log_history\": [{\"loss\": 0.7, \"step\": 1},").unwrap();
    for flag in ["--jsonl", "--headless"] {
        let out = gaplab(&["attach", flag, tmp.path().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "error: {}: expected a Trainer state: a JSON object whose \"log_history\" is a list",
                file.display()
            )),
            "{err}"
        );
    }
}

/// TensorBoard's view of an event file, tag -> [(step, value)]: what TRL's own run wrote
/// (trl-dpo-tensorboard.json) and what `gaplab export tensorboard` writes for its folder.
type Points = BTreeMap<String, Vec<(i64, f32)>>;

#[test]
fn an_export_of_the_folder_has_the_tags_trl_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let out = gaplab(&[
        "export",
        "tensorboard",
        fixture("trl-dpo").to_str().unwrap(),
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = gaplab::runlog::tensorboard::event_files(&tmp.path().join("trl-dpo"));
    let mut ours = Points::new();
    for r in gaplab::runlog::tensorboard::read(&files[0]).unwrap() {
        for (tag, x) in r.values {
            ours.entry(tag).or_default().push((r.step, x));
        }
    }
    let mut theirs: Points = read_json(&fixture("trl-dpo-tensorboard.json"))
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, points)| {
            let points = points
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32))
                .collect();
            (tag.clone(), points)
        })
        .collect();
    // The Trainer's closing summary is a log line in gaplab, not metrics: its numbers (and the
    // epoch logged with them) are the only points TRL wrote that the export does not.
    for tag in [
        "train/train_runtime",
        "train/train_loss",
        "train/train_samples_per_second",
        "train/train_steps_per_second",
        "train/total_flos",
    ] {
        assert_eq!(theirs.remove(tag).unwrap().len(), 1, "{tag}");
    }
    let epoch = theirs.get_mut("train/epoch").unwrap();
    assert_eq!(epoch.pop(), Some((6, 2.0)));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    // The same steps and values. serde_json reads a decimal to the nearest double or one next
    // to it, which can round to the neighbouring float when the number is halfway between two
    // (a mean of f32 values can be): one unit in the last place of an f32 is allowed.
    for (tag, a) in &ours {
        let b = &theirs[tag];
        let close = a.len() == b.len()
            && a.iter().zip(b).all(|(p, q)| {
                p.0 == q.0 && (p.1.to_bits() as i64 - q.1.to_bits() as i64).abs() <= 1
            });
        assert!(close, "{tag}: {a:?} != {b:?}");
    }
}

#[test]
fn the_dashboard_charts_the_trainers_loss() {
    let theme = ThemeFile::parse(BUILTIN[0].1, "default")
        .unwrap()
        .resolve(ColorDepth::C16);
    let mut app = App::new(
        Role::Attached {
            controllable: false,
        },
        theme,
    );
    for ev in gaplab::runlog::tail::replay(&fixture("trl-dpo")).unwrap() {
        app.on_event(0, &ev);
    }
    app.focus = Pane::Loss;
    app.expanded = true;
    let screen = render(&mut app, 80, 24);
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines[0].starts_with("┏ Loss"), "{screen}");
    assert!(screen.contains("trl-dpo"), "{screen}");
    assert!(lines.last().unwrap().contains("step 6/6"), "{screen}");
    // A curve: Braille points in the chart.
    let points = screen
        .chars()
        .filter(|c| ('\u{2801}'..='\u{28ff}').contains(c))
        .count();
    assert!(points > 10, "{screen}");
    insta::assert_snapshot!("trl_loss_80x24", screen);
}
