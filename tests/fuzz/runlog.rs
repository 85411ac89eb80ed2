//! Run directories read back (`runlog::tail::replay`): events.jsonl of this version and the
//! files of an earlier one (metrics, samples, prefix, log, status) with garbage lines inserted
//! anywhere (random bytes, invalid UTF-8, JSON of the wrong shape, records with huge numbers,
//! NaN strings, negative steps), the last line cut at every byte offset (a writer killed
//! mid-line), empty files, and a config.toml that is garbage. Replay never fails on a record:
//! garbage lines are skipped with a warning naming `file:line`, and every valid record before
//! and after them still comes through.

use std::path::{Path, PathBuf};

use gaplab::event::{Event, Level};
use gaplab::runlog::tail::replay;
use proptest::prelude::*;
use serde_json::Value;

use crate::common;
use crate::harness::{bounded, fuzz};
use crate::mutate;

/// The event records of one run (the first of the UI fixture's two), as events.jsonl holds them.
fn records() -> Vec<String> {
    let text = include_str!("../fixtures/ui-events.jsonl");
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["source"] == 0)
        .map(|v| {
            let ev: Event = serde_json::from_value(v["event"].clone()).unwrap();
            ev.to_record().unwrap()
        })
        .collect()
}

/// An event as JSON (NaN and null compare equal this way).
fn json(ev: &Event) -> Value {
    serde_json::to_value(ev).unwrap()
}

/// Whether `sub` appears in `all` in order.
fn is_subsequence(sub: &[Value], all: &[Value]) -> bool {
    let mut it = all.iter();
    sub.iter().all(|s| it.any(|a| a == s))
}

/// A line that is not a record of this file (though it may happen to be one).
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let shapes = proptest::sample::select(vec![
        "{}",
        "[]",
        "null",
        "42",
        "\"step\"",
        "{\"v\": 1}",
        "{\"v\": 1, \"event\": \"step\"}",
        "{\"v\": 1, \"event\": \"step\", \"step\": -1, \"time\": 0, \"metrics\": {}}",
        "{\"v\": 1, \"event\": \"step\", \"step\": 1e400, \"time\": 0, \"metrics\": {}}",
        "{\"v\": 1, \"event\": \"step\", \"step\": 18446744073709551616, \"time\": 0, \"metrics\": {}}",
        "{\"v\": 1, \"event\": \"step\", \"step\": \"NaN\", \"time\": \"NaN\", \"metrics\": {\"loss\": \"NaN\"}}",
        "{\"v\": 1, \"event\": \"log\", \"step\": 3, \"level\": \"warn\", \"message\": \"NaN\"}",
        "{\"v\": 1, \"event\": \"no-such-event\", \"step\": 1}",
        "{\"v\": 99, \"event\": \"step\", \"step\": 1}",
        "{\"v\": -1}",
        "{\"v\": \"1\", \"event\": \"step\"}",
        "{\"step\": -5, \"split\": \"train\", \"loss\": \"NaN\"}",
        "{\"step\": 99999999999999999999999, \"split\": \"eval\"}",
        "{\"step\": 3, \"split\": \"train\", \"loss\": 1e308, \"time\": -1e308}",
        "{\"step\": 2, \"event\": \"applied\", \"changes\": 5}",
        "{\"step\": 2, \"event\": \"skipped\"}",
        "{\"step\": 3, \"prefix\": {\"j\": [-1], \"margin\": [\"NaN\"]}}",
        "{\"step\": 3, \"prompt_id\": -1, \"text\": 5}",
        "{\"step\":",
        "20261202-022358 step 99999999999999999999 info: x",
        "20261202-022358 step 1 nonsense",
        "\u{feff}{}",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    prop_oneof![
        3 => shapes,
        1 => proptest::collection::vec(any::<u8>(), 1..40),
        1 => Just(vec![0xff, 0xfe, b'{', 0xc3]),
        1 => crate::data::json_value().prop_map(|v| v.to_string().into_bytes()),
    ]
    .prop_map(|mut b| {
        b.retain(|&c| c != b'\n');
        b
    })
}

/// `lines` joined, each ending in a newline.
fn file_of(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

/// A run directory of this version holding `events` (and the config of the v0 fixture).
fn run_dir(root: &Path, events: &[u8]) -> PathBuf {
    let dir = root.join("run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        common::fixture("run-v0/config.toml"),
        dir.join("config.toml"),
    )
    .unwrap();
    std::fs::write(dir.join("events.jsonl"), events).unwrap();
    dir
}

/// Garbage lines inserted among the records: (position, line).
fn check_events(root: PathBuf, inserts: Vec<(usize, Vec<u8>)>) -> &'static str {
    let valid = records();
    let mut lines: Vec<(bool, Vec<u8>)> = valid
        .iter()
        .map(|r| (true, r.as_bytes().to_vec()))
        .collect();
    for (at, g) in &inserts {
        let at = at % (lines.len() + 1);
        lines.insert(at, (false, g.clone()));
    }
    let bytes = file_of(&lines.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>());
    let dir = run_dir(&root, &bytes);
    let events = replay(&dir).unwrap();
    let got: Vec<Value> = events.iter().map(json).collect();
    let want: Vec<Value> = valid
        .iter()
        .map(|r| json(&Event::from_record(r).unwrap()))
        .collect();
    assert!(is_subsequence(&want, &got), "a valid record was lost");
    // Each unreadable garbage line is reported with its line number.
    let warnings: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Log {
                level: Level::Warn,
                message,
                ..
            } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    let mut newer = false;
    let mut unreadable = 0;
    for (n, (is_valid, l)) in lines.iter().enumerate() {
        let text = String::from_utf8_lossy(l);
        let text = text.trim_end_matches('\r');
        if *is_valid || text.trim().is_empty() {
            continue;
        }
        match Event::from_record(text) {
            Ok(_) => {}
            Err(gaplab::event::RecordError::Newer(_)) => newer = true,
            Err(_) => {
                unreadable += 1;
                let at = format!("events.jsonl:{}: skipped", n + 1);
                assert!(
                    warnings.iter().any(|w| w.contains(&at)),
                    "no warning for line {}: {text:?} in {warnings:?}",
                    n + 1
                );
            }
        }
    }
    if newer {
        assert!(warnings.iter().any(|w| w.contains("newer")), "{warnings:?}");
    }
    if unreadable > 0 || newer {
        "garbage skipped with warnings, every record kept"
    } else {
        "garbage read as records, every record kept"
    }
}

#[test]
fn events_jsonl_with_garbage_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let inserts = proptest::collection::vec((any::<usize>(), garbage()), 1..6);
    fuzz("events_jsonl", 400, inserts, |ins| {
        let r = root.clone();
        bounded("events_jsonl", move || check_events(r, ins))
    });
}

/// events.jsonl cut at every byte offset of its last line: the complete lines read as before,
/// the torn one is left out without a warning (it may still be being written).
#[test]
fn events_jsonl_cut_at_every_offset_of_its_last_line() {
    let tmp = tempfile::tempdir().unwrap();
    let valid = records();
    let full = file_of(
        &valid
            .iter()
            .map(|r| r.as_bytes().to_vec())
            .collect::<Vec<_>>(),
    );
    let last_start = full.len() - valid.last().unwrap().len() - 1;
    let before: Vec<Value> = replay(&run_dir(tmp.path(), &full[..last_start]))
        .unwrap()
        .iter()
        .map(json)
        .collect();
    for cut in last_start..full.len() {
        let got: Vec<Value> = replay(&run_dir(tmp.path(), &full[..cut]))
            .unwrap()
            .iter()
            .map(json)
            .collect();
        assert_eq!(got, before, "cut at byte {cut}");
    }
    assert!(replay(&run_dir(tmp.path(), b"")).unwrap().is_empty());
    crate::harness::note(
        "events_jsonl_cut",
        &format!(
            "{} cut offsets, each read as the complete lines",
            full.len() - last_start
        ),
    );
}

/// An earlier version's run directory (tests/fixtures/run-v0) with garbage in its files.
const LEGACY_FILES: [&str; 5] = [
    "metrics.jsonl",
    "samples.jsonl",
    "prefix.jsonl",
    "log.txt",
    "status.json",
];

fn legacy_copy(root: &Path) -> PathBuf {
    let dir = root.join("v0");
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_dir(&common::fixture("run-v0"), &dir);
    dir
}

fn steps(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| matches!(e, Event::Step(_) | Event::Skipped { .. }))
        .map(json)
        .collect()
}

fn check_legacy(
    root: PathBuf,
    inserts: Vec<(usize, usize, Vec<u8>)>,
    empty: Option<usize>,
) -> &'static str {
    let dir = legacy_copy(&root);
    let want = steps(&replay(&dir).unwrap());
    for (f, at, g) in &inserts {
        let path = dir.join(LEGACY_FILES[f % LEGACY_FILES.len()]);
        let text = std::fs::read(&path).unwrap();
        let mut lines: Vec<Vec<u8>> = text
            .strip_suffix(b"\n")
            .unwrap_or(&text)
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        let at = at % (lines.len() + 1);
        lines.insert(at, g.clone());
        std::fs::write(&path, file_of(&lines)).unwrap();
    }
    if let Some(f) = empty {
        std::fs::write(dir.join(LEGACY_FILES[f % LEGACY_FILES.len()]), b"").unwrap();
    }
    let events = replay(&dir).unwrap();
    if empty.is_some_and(|f| LEGACY_FILES[f % LEGACY_FILES.len()] == "metrics.jsonl") {
        return "an empty file read as empty";
    }
    assert!(
        is_subsequence(&want, &steps(&events)),
        "a valid step record was lost"
    );
    "garbage skipped, every step kept"
}

#[test]
fn earlier_versions_files_with_garbage_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let inserts = proptest::collection::vec((any::<usize>(), any::<usize>(), garbage()), 1..6);
    let cases = (inserts, proptest::option::weighted(0.2, any::<usize>()));
    fuzz("legacy_run_files", 300, cases, |(ins, empty)| {
        let r = root.clone();
        bounded("legacy_run_files", move || check_legacy(r, ins, empty))
    });
}

/// The earlier version's files cut at every byte offset of their last line.
#[test]
fn earlier_versions_files_cut_at_every_offset_of_their_last_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for name in LEGACY_FILES {
        let full = std::fs::read(common::fixture("run-v0").join(name)).unwrap();
        let body = full.strip_suffix(b"\n").unwrap_or(&full);
        let last_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for cut in last_start..full.len() {
            let dir = legacy_copy(tmp.path());
            std::fs::write(dir.join(name), &full[..cut]).unwrap();
            replay(&dir).unwrap();
            n += 1;
        }
    }
    crate::harness::note("legacy_run_files_cut", &format!("{n} cut offsets replayed"));
}

/// A config.toml that is garbage: the run directory is refused, naming the file (and the line
/// and column when it is text).
#[test]
fn a_garbage_config_toml_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let base: &'static str = Box::leak(
        std::fs::read_to_string(common::fixture("run-v0/config.toml"))
            .unwrap()
            .into_boxed_str(),
    );
    let keys = vec!["variant".into(), "train.beta".into(), "model.path".into()];
    let texts = mutate::edited(vec![base], keys, 4);
    fuzz("run_config_toml", 300, texts, |bytes| {
        let r = root.clone();
        bounded("run_config_toml", move || {
            let dir = legacy_copy(&r);
            let path = dir.join("config.toml");
            std::fs::write(&path, &bytes).unwrap();
            match replay(&dir) {
                Ok(_) => "still a valid config",
                Err(e) => {
                    let shown = format!("{e:#}");
                    assert!(shown.contains(&path.display().to_string()), "{shown}");
                    if std::str::from_utf8(&bytes).is_ok() {
                        let at = format!("{}:", path.display());
                        assert!(shown.starts_with(&at), "{shown}");
                        "refused at config.toml:line:col"
                    } else {
                        "refused naming config.toml (not UTF-8)"
                    }
                }
            }
        })
    });
}
