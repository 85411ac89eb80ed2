//! TensorBoard event files through the real binary: written live by a run with `[log]
//! tensorboard = true` (stopped by a failed checkpoint and resumed), and by `gaplab export
//! tensorboard`; checked with gaplab's reader (framing and both checksums) and against what
//! TensorBoard's own reader read from the committed fixture (tests/fixtures/tensorboard/,
//! written by `record_fixture` and read by tests/fixtures/check_tensorboard.py).
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{fixture, gaplab, runs, stderr, stdout, tiny_workspace};
use gaplab::runlog::{tail, tensorboard};

/// tag -> (step, wall time, value), in the order TensorBoard lists them.
type View = BTreeMap<String, Vec<(i64, f64, f32)>>;

/// The tiny workspace's first variant, with TensorBoard files on.
fn workspace(dir: &Path) -> PathBuf {
    tiny_workspace(dir, |t| {
        let t = t[..t.find("[[variant]]\nname = \"dpo-poet\"").unwrap()].to_string();
        t.replace("[[variant]]", "[log]\ntensorboard = true\n\n[[variant]]")
    })
}

fn train(fault: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .arg("train")
        .args(args)
        .arg("--headless")
        .env("GAPLAB_FAULT", fault)
        .output()
        .unwrap()
}

/// A run whose checkpoint at step 4 fails, resumed from its checkpoint at step 2 and finished.
fn resumed_run(dir: &Path) -> PathBuf {
    let ws = workspace(dir);
    let root = dir.join("runs");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = train("checkpoint-optimizer@2", &[&s(&ws), "--out", &s(&root)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let run = runs(&root).pop().unwrap();
    let out = train("", &[&s(&ws), "--resume", &s(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    run
}

/// What TensorBoard shows of a log folder: its event files in name order, a SessionLog START
/// dropping every earlier point from its step on (EventAccumulator's purge of orphaned data).
fn tensorboard_view(dir: &Path) -> View {
    let mut view = View::new();
    let files = tensorboard::event_files(dir);
    assert!(!files.is_empty(), "no event files in {}", dir.display());
    for f in files {
        let records = tensorboard::read(&f).unwrap();
        assert_eq!(records[0].file_version.as_deref(), Some("brain.Event:2"));
        for r in records {
            if r.session_start {
                for points in view.values_mut() {
                    points.retain(|p| p.0 < r.step);
                }
            }
            for (tag, x) in r.values {
                view.entry(tag).or_default().push((r.step, r.wall_time, x));
            }
        }
    }
    view.retain(|_, v| !v.is_empty());
    view
}

/// The scalars of a run's records, as its events say them.
fn record_view(run: &Path) -> View {
    let mut view = View::new();
    for ev in tail::replay(run).unwrap() {
        if let Some((step, time, values)) = tensorboard::scalars(&ev) {
            for (tag, x) in values {
                view.entry(tag).or_default().push((step as i64, time, x));
            }
        }
    }
    view
}

/// expected.json as TensorBoard's reader wrote it.
fn expected_view() -> View {
    let v = common::read_json(&fixture("tensorboard/expected.json"));
    assert_eq!(v["file_version"], 2.0);
    let value = |x: &serde_json::Value| match x.as_str() {
        Some("nan") => f32::NAN,
        Some("inf") => f32::INFINITY,
        Some("-inf") => f32::NEG_INFINITY,
        _ => x.as_f64().unwrap() as f32,
    };
    v["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, points)| {
            let points = points
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap(), value(&p[2])))
                .collect();
            (tag.clone(), points)
        })
        .collect()
}

/// The same tags, steps and values (bit for bit, so NaN equals NaN) and wall times within a
/// microsecond (the JSON written by Python holds the shortest decimal of each double, which
/// serde_json may read back one unit in the last place off).
fn assert_same(a: &View, b: &View) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "tags"
    );
    for (tag, x) in a {
        let y = &b[tag];
        let same = x.len() == y.len()
            && x.iter().zip(y).all(|(p, q)| {
                p.0 == q.0 && p.2.to_bits() == q.2.to_bits() && (p.1 - q.1).abs() <= 1e-6
            });
        assert!(same, "{tag}: {x:?} != {y:?}");
    }
}

#[test]
fn a_resumed_run_shows_in_tensorboard_as_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let run = resumed_run(tmp.path());
    let tb = run.join("tb");
    let files = tensorboard::event_files(&tb);
    assert_eq!(files.len(), 2, "one file per process start: {files:?}");
    // The resumed process says where the run starts again: after its checkpoint at step 2.
    let second = tensorboard::read(&files[1]).unwrap();
    assert!(second[1].session_start && second[1].step == 3, "{second:?}");
    // The first process got past step 2 before its checkpoint at step 4 failed: TensorBoard
    // must drop those points for the recomputed ones.
    let first = tensorboard::read(&files[0]).unwrap();
    assert!(first.iter().any(|r| r.step > 2 && !r.values.is_empty()));

    let view = tensorboard_view(&tb);
    assert_same(&view, &record_view(&run));
    for tag in [
        "train/loss",
        "train/rewards/margins",
        "train/learning_rate",
        "eval/loss",
        "eval/rewards/margins",
    ] {
        assert!(view.contains_key(tag), "{tag}: {:?}", view.keys());
    }
    let steps: Vec<i64> = view["train/loss"].iter().map(|p| p.0).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    assert!(view
        .keys()
        .all(|t| t.starts_with("train/") || t.starts_with("eval/")));
}

#[test]
fn a_failed_event_file_write_stops_the_run_and_resume_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace(tmp.path());
    let root = tmp.path().join("runs");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // Written: the file's version, the start, the eval at step 0, steps 1 and 2 (and the
    // checkpoint at step 2); step 3 is not.
    let out = train("tensorboard-write@6", &[&s(&ws), "--out", &s(&root)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let run = runs(&root).pop().unwrap();
    let file = tensorboard::event_files(&run.join("tb")).pop().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot write {}: No space left on device",
            file.display()
        )),
        "{err}"
    );
    let out = train("", &[&s(&ws), "--resume", &s(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same(&tensorboard_view(&run.join("tb")), &record_view(&run));
}

#[test]
fn tensorboard_reads_what_gaplab_writes() {
    let expected = expected_view();
    let run = fixture("tensorboard/run");
    // What TensorBoard read from the files of the run's live writer is gaplab's view of them,
    // and the run's records.
    assert_same(&tensorboard_view(&run.join("tb")), &expected);
    assert_same(&record_view(&run), &expected);
    // An export of the same run writes the same scalars at the same steps and times.
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("logs");
    let out = gaplab(&[
        "export",
        "tensorboard",
        run.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("tensorboard --logdir"),
        "{}",
        stdout(&out)
    );
    assert_same(&tensorboard_view(&out_dir.join("run")), &expected);
}

#[test]
fn export_writes_into_a_runs_tb_folder_once() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    for f in ["config.toml", "events.jsonl"] {
        std::fs::copy(fixture("tensorboard/run").join(f), run.join(f)).unwrap();
    }
    let out = gaplab(&["export", "tensorboard", run.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same(&tensorboard_view(&run.join("tb")), &expected_view());
    // A second export would show every point twice.
    let out = gaplab(&["export", "tensorboard", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}: already holds TensorBoard event files",
            run.join("tb").display()
        )),
        "{err}"
    );
    let out = gaplab(&[
        "export",
        "tensorboard",
        tmp.path().join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a run directory"),
        "{}",
        stderr(&out)
    );
}

/// Re-records tests/fixtures/tensorboard/run from a fresh resumed run; then run
/// tests/fixtures/check_tensorboard.py.
#[test]
#[ignore]
fn record_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let run = resumed_run(tmp.path());
    let dest = fixture("tensorboard/run");
    if dest.exists() {
        std::fs::remove_dir_all(&dest).unwrap();
    }
    std::fs::create_dir_all(dest.join("tb")).unwrap();
    for f in ["config.toml", "events.jsonl"] {
        std::fs::copy(run.join(f), dest.join(f)).unwrap();
    }
    for f in tensorboard::event_files(&run.join("tb")) {
        std::fs::copy(&f, dest.join("tb").join(f.file_name().unwrap())).unwrap();
    }
}
