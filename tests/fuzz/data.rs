//! Preference data files: JSONL lines of every shape (wrong types, missing fields, nulls,
//! nested junk, huge strings, lines that are not JSON, BOM, CRLF, invalid UTF-8) and Parquet
//! files cut short or with bytes changed. A file reads, or the error names the file and the
//! line (row).

use std::path::{Path, PathBuf};

use gaplab::data::{read_records, read_rows, DataFormat, Fields, Format, Rows};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::harness::{bounded, fuzz};

/// Any JSON value, nested a few levels.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::from),
        Just(Value::from("x".repeat(100_000))),
        Just(Value::from("\u{0}\u{1b}[31m\r\u{feff}\u{202e}")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A chat message, well formed or not.
pub fn message() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        Just(json!("user")),
        Just(json!("assistant")),
        Just(json!("system")),
        json_value(),
    ];
    let content = prop_oneof![
        ".{0,30}".prop_map(Value::from),
        Just(json!("hello\u{0}\u{7}\u{1b}")),
        json_value(),
    ];
    prop_oneof![
        4 => (role.clone(), content).prop_map(|(r, c)| json!({"role": r, "content": c})),
        1 => role.prop_map(|r| json!({"role": r})),
        1 => json_value(),
    ]
}

pub fn messages() -> impl Strategy<Value = Value> {
    proptest::collection::vec(message(), 0..5).prop_map(Value::from)
}

/// A field of a row: a string, a list of messages or anything.
fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => ".{0,30}".prop_map(Value::from),
        2 => messages(),
        1 => json_value(),
    ]
}

/// One line of a JSONL file.
#[derive(Clone, Debug)]
enum Line {
    /// An object with some of the three fields (and maybe others).
    Row(Vec<(String, Value)>),
    /// A well-formed standard pair.
    Standard,
    /// A well-formed conversational pair.
    Conversational,
    Json(Value),
    Text(String),
    Bytes(Vec<u8>),
    Blank,
}

fn line() -> impl Strategy<Value = Line> {
    let key = prop_oneof![
        Just("prompt".to_string()),
        Just("chosen".to_string()),
        Just("rejected".to_string()),
        Just("messages".to_string()),
        "[a-z]{1,6}",
    ];
    prop_oneof![
        6 => proptest::collection::vec((key, field()), 0..5).prop_map(Line::Row),
        4 => Just(Line::Standard),
        3 => Just(Line::Conversational),
        1 => json_value().prop_map(Line::Json),
        1 => ".{0,30}".prop_map(Line::Text),
        1 => proptest::collection::vec(any::<u8>(), 1..12).prop_map(Line::Bytes),
        1 => Just(Line::Blank),
    ]
}

fn render(l: &Line) -> Vec<u8> {
    match l {
        Line::Row(fields) => {
            let obj: serde_json::Map<String, Value> = fields.iter().cloned().collect();
            Value::Object(obj).to_string().into_bytes()
        }
        Line::Standard => json!({"prompt": "p", "chosen": " c", "rejected": " r"})
            .to_string()
            .into_bytes(),
        Line::Conversational => json!({
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "assistant", "content": "go away"}],
        })
        .to_string()
        .into_bytes(),
        Line::Json(v) => v.to_string().into_bytes(),
        Line::Text(t) => t.clone().into_bytes(),
        Line::Bytes(b) => b.iter().copied().filter(|&b| b != b'\n').collect(),
        Line::Blank => b"   ".to_vec(),
    }
}

#[derive(Clone, Debug)]
struct File {
    lines: Vec<Line>,
    bom: bool,
    crlf: bool,
    format: Format,
}

fn file() -> impl Strategy<Value = File> {
    (
        proptest::collection::vec(line(), 0..8),
        any::<bool>(),
        any::<bool>(),
        proptest::sample::select(vec![Format::Auto, Format::Standard, Format::Conversational]),
    )
        .prop_map(|(lines, bom, crlf, format)| File {
            lines,
            bom,
            crlf,
            format,
        })
}

fn bytes_of(f: &File) -> Vec<u8> {
    let mut out = Vec::new();
    if f.bom {
        out.extend_from_slice("\u{feff}".as_bytes());
    }
    for l in &f.lines {
        out.extend(render(l));
        out.extend_from_slice(if f.crlf { b"\r\n" } else { b"\n" });
    }
    out
}

/// The line (row) number an error names after `file:` (`file:N...` or `file: row N...`).
fn located_line(shown: &str, path: &Path) -> Option<usize> {
    let rest = shown.strip_prefix(&path.display().to_string())?;
    let rest = rest
        .strip_prefix(": row ")
        .or_else(|| rest.strip_prefix(':'))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether every line of `f` is a well-formed pair of one kind (or blank).
fn all_well_formed(f: &File) -> Option<usize> {
    let (mut standard, mut conversational) = (0, 0);
    for l in &f.lines {
        match l {
            Line::Standard => standard += 1,
            Line::Conversational => conversational += 1,
            Line::Blank => {}
            _ => return None,
        }
    }
    let fits = match f.format {
        Format::Auto => standard == 0 || conversational == 0,
        Format::Standard => conversational == 0,
        Format::Conversational => standard == 0,
    };
    (fits && standard + conversational > 0).then_some(standard + conversational)
}

fn check_jsonl(path: PathBuf, f: File) -> &'static str {
    std::fs::write(&path, bytes_of(&f)).unwrap();
    let fmt = DataFormat {
        format: f.format,
        fields: Fields::default(),
    };
    match read_rows(&path, &fmt) {
        Ok(rows) => {
            let n = match &rows {
                Rows::Standard(p) => p.len(),
                Rows::Conversational(c) => c.len(),
            };
            assert!(n >= 1 && n <= f.lines.len());
            if let Some(expected) = all_well_formed(&f) {
                assert_eq!(n, expected);
            }
            "accepted"
        }
        Err(e) => {
            let shown = format!("{e:#}");
            assert!(
                all_well_formed(&f).is_none(),
                "a file of well-formed pairs is rejected: {shown}"
            );
            if shown.ends_with(": no preference pairs") {
                return "rejected: no pairs";
            }
            let n = located_line(&shown, &path)
                .unwrap_or_else(|| panic!("no line in the error: {shown}"));
            assert!(
                n >= 1 && n <= f.lines.len(),
                "line {n} of {}: {shown}",
                f.lines.len()
            );
            "rejected at file:line"
        }
    }
}

#[test]
fn jsonl_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pairs.jsonl");
    fuzz("jsonl_rows", 1500, file(), |f| {
        let p = path.clone();
        bounded("jsonl_rows", move || check_jsonl(p, f))
    });
}

const PARQUET: [&[u8]; 3] = [
    include_bytes!("../fixtures/chat/ultrafeedback/test_prefs-00000-of-00001.parquet"),
    include_bytes!("../fixtures/chat/ultrafeedback/train_prefs-00000-of-00002.parquet"),
    include_bytes!("../fixtures/chat/ultrafeedback/train_prefs-00001-of-00002.parquet"),
];

/// A damaged Parquet file: bytes changed, inserted or removed, or the file cut short.
#[derive(Clone, Debug)]
enum Damage {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Damage::Insert(i, b)),
        1 => (any::<usize>(), 1..64usize).prop_map(|(i, n)| Damage::Remove(i, n)),
        1 => any::<usize>().prop_map(Damage::Truncate),
    ]
}

fn damaged(base: &[u8], damage: &[Damage]) -> Vec<u8> {
    let mut b = base.to_vec();
    for d in damage {
        let n = b.len().max(1);
        match d {
            Damage::Set(i, v) => {
                if !b.is_empty() {
                    b[i % n] = *v;
                }
            }
            Damage::Insert(i, v) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, v.iter().copied());
            }
            Damage::Remove(i, k) => {
                let at = i % n;
                let end = (at + k).min(b.len());
                b.drain(at.min(b.len())..end);
            }
            Damage::Truncate(i) => b.truncate(i % (b.len() + 1)),
        }
    }
    b
}

fn check_parquet(path: PathBuf, bytes: Vec<u8>) -> &'static str {
    std::fs::write(&path, &bytes).unwrap();
    match read_records(&path) {
        Ok(records) => {
            assert!(records.iter().all(|(n, _)| *n >= 1));
            let fmt = DataFormat::default();
            match read_rows(&path, &fmt) {
                Ok(_) => "read",
                Err(e) => {
                    let shown = format!("{e:#}");
                    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
                    "read, rows rejected naming the file"
                }
            }
        }
        Err(e) => {
            let shown = format!("{e:#}");
            assert!(shown.starts_with(&path.display().to_string()), "{shown}");
            "rejected naming the file"
        }
    }
}

#[test]
fn parquet_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("prefs.parquet");
    let files = (
        proptest::sample::select(PARQUET.to_vec()),
        proptest::collection::vec(damage(), 1..4),
    )
        .prop_map(|(base, d)| damaged(base, &d));
    fuzz("parquet_files", 1500, files, |bytes| {
        let p = path.clone();
        bounded("parquet_files", move || check_parquet(p, bytes))
    });
}
