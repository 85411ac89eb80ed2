//! Theme files: the shipped themes with random edits and random colour strings. A theme parses
//! (and then resolves at every colour depth and draws any value) or is rejected with
//! `file:line:col: field: message`.

use gaplab::ui::theme::{ColorDepth, Theme, ThemeFile};
use proptest::prelude::*;

use crate::harness::{bounded, fuzz};
use crate::mutate;

const BASES: [&str; 4] = [
    include_str!("../../themes/default.toml"),
    include_str!("../../themes/dark.toml"),
    include_str!("../../themes/light.toml"),
    include_str!("../../themes/mono.toml"),
];

fn keys() -> Vec<String> {
    let mut keys: Vec<String> = BASES
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty() && !k.starts_with('#'))
        .collect();
    keys.extend(
        [
            "fg",
            "bg",
            "bold",
            "styles.text.fg",
            "chart.axis",
            "heatmap.sequential_16",
        ]
        .map(str::to_string),
    );
    keys.sort();
    keys.dedup();
    keys
}

/// A colour as someone might write one.
fn colour() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "\"#12345g\"",
            "\"#fff\"",
            "\"#ＦＦ0000\"",
            "\"#ffffff\"",
            "\"#FFFFFF \"",
            "\"light-red\"",
            "\"Dark_Gray\"",
            "\"reset\"",
            "\"\"",
            "\"#\"",
            "\"##123456\"",
            "256",
            "-1",
            "255",
            "0",
            "1e3",
            "nan",
            "true",
            "[\"red\"]",
            "[]",
            "{}",
            "\"é#12345\"",
        ])
        .prop_map(str::to_string),
        "#[0-9a-fA-F]{0,8}".prop_map(|s| format!("\"{s}\"")),
        ".{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        any::<i64>().prop_map(|i| i.to_string()),
    ]
}

/// Replaces the `k`-th string literal (modulo their count) with `v`.
fn swap_colour(text: &[u8], k: usize, v: &str) -> Vec<u8> {
    let quotes: Vec<usize> = text
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'"')
        .map(|(i, _)| i)
        .collect();
    let pairs = quotes.len() / 2;
    if pairs == 0 {
        return text.to_vec();
    }
    let i = k % pairs;
    let (a, b) = (quotes[2 * i], quotes[2 * i + 1]);
    let mut out = text[..a].to_vec();
    out.extend_from_slice(v.as_bytes());
    out.extend_from_slice(&text[b + 1..]);
    out
}

fn theme_text() -> impl Strategy<Value = Vec<u8>> {
    let swaps = proptest::collection::vec((any::<usize>(), colour()), 0..4);
    let edits = proptest::collection::vec(mutate::edit(keys()), 0..4);
    (proptest::sample::select(BASES.to_vec()), swaps, edits).prop_map(|(base, swaps, edits)| {
        let mut t = base.as_bytes().to_vec();
        for (k, v) in &swaps {
            t = swap_colour(&t, *k, v);
        }
        mutate::apply(&t, &edits)
    })
}

/// Everything a dashboard asks of a theme.
fn draw_with(theme: &Theme) {
    for v in [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.0,
        0.0,
        0.3,
        1.0,
        7.0,
    ] {
        let _ = theme.diverging(v);
        let _ = theme.sequential(v);
        let _ = Theme::shade(v);
    }
    for i in [0, 1, 5, usize::MAX] {
        let _ = theme.series(i);
        let _ = theme.series_faded(i);
    }
}

fn check(bytes: Vec<u8>) -> &'static str {
    // Themes are read with read_to_string: text that is not UTF-8 is an I/O error naming the
    // file (ThemeFile::load), so only text reaches the parser.
    let text = String::from_utf8_lossy(&bytes).into_owned();
    match ThemeFile::parse(&text, "fuzz.toml") {
        Ok(file) => {
            for depth in [
                ColorDepth::TrueColor,
                ColorDepth::C256,
                ColorDepth::C16,
                ColorDepth::Mono,
            ] {
                draw_with(&file.resolve(depth));
            }
            "accepted"
        }
        Err(e) => {
            let shown = format!("{e:#}");
            let rest = shown
                .strip_prefix("fuzz.toml:")
                .unwrap_or_else(|| panic!("{shown}"));
            let mut parts = rest.splitn(3, ':');
            let (line, col) = (parts.next(), parts.next());
            let located = [line, col]
                .iter()
                .all(|p| p.is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n >= 1)));
            if located {
                let line: usize = line.unwrap().parse().unwrap();
                assert!(line <= text.split('\n').count(), "{shown}");
                "rejected at line:col"
            } else {
                assert!(rest.starts_with(' '), "{shown}");
                "rejected naming the field"
            }
        }
    }
}

#[test]
fn theme_files() {
    fuzz("theme_files", 1500, theme_text(), |bytes| {
        bounded("theme_files", move || check(bytes))
    });
}

#[test]
fn theme_files_not_utf8_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, b"name = \"x\xff\"\n").unwrap();
    let e = ThemeFile::load(&path).unwrap_err();
    assert!(
        format!("{e:#}").contains(&path.display().to_string()),
        "{e:#}"
    );
}
