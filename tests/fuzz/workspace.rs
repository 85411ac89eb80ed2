//! gaplab.toml: the shipped workspaces with random edits. Every text either loads (and each
//! variant resolves to a run config that survives a reload and the run directory's
//! config.toml) or is rejected at `file:line:col` with the field path when there is one.

use std::path::{Path, PathBuf};

use gaplab::config::{RunConfig, Workspace};

use crate::harness::{bounded, fuzz};
use crate::mutate;

const BASES: [&str; 3] = [
    include_str!("../../workspaces/demo/gaplab.toml"),
    include_str!("../../workspaces/tiny/gaplab.toml"),
    include_str!("../fixtures/ws-tiny/gaplab.toml"),
];

/// Every field of the schema (`train.beta`), and the bare field names, as keys to insert.
fn keys() -> Vec<String> {
    let mut keys: Vec<String> = gaplab::config::all_fields()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let bare: Vec<String> = keys
        .iter()
        .filter_map(|k| k.rsplit('.').next().map(str::to_string))
        .collect();
    keys.extend(bare);
    keys.extend(["name".to_string(), "variant".to_string()]);
    keys
}

/// Lines of a text as an editor counts them (a last line without newline counts).
fn line_count(text: &str) -> usize {
    text.split('\n').count()
}

/// What an accepted workspace must allow: every variant resolves; its config reloads onto
/// itself and onto the base workspace's with no error, and round-trips through config.toml.
fn accepted(ws: &Workspace) {
    let originals: Vec<Workspace> = BASES
        .iter()
        .map(|t| Workspace::parse(&ws.dir, &ws.file, t).unwrap())
        .collect();
    for name in ws.variant_names() {
        let rc = ws.run_config(&name).unwrap();
        let _ = rc.lora_settings();
        let _ = rc.record();
        let (_, changes, ignored) = rc.with_live_changes(&rc).unwrap();
        assert!(
            changes.is_empty() && ignored.is_empty(),
            "{changes:?} {ignored:?}"
        );
        for o in &originals {
            if let Ok(before) = o.run_config(&name) {
                before.with_live_changes(&rc).unwrap();
            }
        }
        for pairs in [0, 1, 7, usize::MAX] {
            let _ = rc.train.total_steps(pairs);
        }
        let _ = rc.train.objective();
        let text = toml::to_string(&rc).expect("the run config serialises");
        let back: RunConfig = toml::from_str(&text).expect("config.toml reads back");
        assert_eq!(
            toml::to_string(&back).unwrap(),
            text,
            "config.toml round trip"
        );
    }
}

/// Checks one edited text; the outcome's name.
fn check(dir: PathBuf, file: PathBuf, bytes: Vec<u8>) -> &'static str {
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return not_utf8(&dir, &file, e.as_bytes()),
    };
    match Workspace::parse(&dir, &file, &text) {
        Ok(ws) => {
            accepted(&ws);
            "accepted"
        }
        Err(e) => {
            assert_eq!(e.file, file);
            assert!(
                e.line >= 1 && e.line <= line_count(&text) && e.col >= 1,
                "{e} is outside the text ({} lines):\n{text}",
                line_count(&text)
            );
            let shown = e.to_string();
            let at = format!("{}:{}:{}: ", file.display(), e.line, e.col);
            assert!(shown.starts_with(&at), "{shown}");
            assert!(!e.message.trim().is_empty(), "{shown}");
            if e.path.is_empty() {
                "rejected at line:col"
            } else {
                "rejected at line:col with the field path"
            }
        }
    }
}

/// A file that is not UTF-8 is read by `Workspace::load` (as `gaplab train` and `check` do).
fn not_utf8(dir: &Path, file: &Path, bytes: &[u8]) -> &'static str {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(file, bytes).unwrap();
    let e = Workspace::load(file).expect_err("not UTF-8 text");
    let shown = format!("{e:#}");
    let at = format!("{}:", file.display());
    assert!(shown.starts_with(&at), "{shown}");
    let rest = &shown[at.len()..];
    let located = rest
        .split(':')
        .take(2)
        .all(|n| n.parse::<usize>().is_ok_and(|n| n >= 1));
    assert!(located, "no line:col in {shown}");
    "not UTF-8, rejected at line:col"
}

#[test]
fn workspace_toml() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ws");
    let file = dir.join("gaplab.toml");
    let texts = mutate::edited(BASES.to_vec(), keys(), 6);
    fuzz("workspace_toml", 1500, texts, |bytes| {
        let (d, f) = (dir.clone(), file.clone());
        bounded("workspace_toml", move || check(d, f, bytes))
    });
}
