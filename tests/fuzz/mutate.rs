//! Random edits of a text file as a person, an editor or a full disk makes them: lines
//! deleted, duplicated or added, values replaced by other types, bytes inserted (invalid UTF-8
//! too), the file cut short.

use proptest::prelude::*;

/// One edit; positions are taken modulo the size of the text they apply to.
#[derive(Clone, Debug)]
pub enum Edit {
    DeleteLine(usize),
    DuplicateLine(usize),
    /// Replaces what follows the `=` of a line (or appends `= value`).
    SetValue(usize, String),
    InsertLine(usize, String),
    InsertBytes(usize, Vec<u8>),
    Truncate(usize),
}

/// A TOML value of any type, or something that is almost one.
pub fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("99999999999999999999999999".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("nan".to_string()),
        Just("+inf".to_string()),
        Just("-inf".to_string()),
        Just("1e400".to_string()),
        Just("-0.0".to_string()),
        Just("true".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("[]".to_string()),
        Just("[1, \"a\", [2.5, {}]]".to_string()),
        Just("{ a = 1, b = \"x\" }".to_string()),
        Just("{}".to_string()),
        Just("\"".to_string()),
        Just("\"\"\"\nmulti\nline".to_string()),
        Just("[".to_string()),
        Just("{ a = ".to_string()),
        Just("'lit\\eral'".to_string()),
        Just("\"min\"".to_string()),
        Just("\"sigmoid\"".to_string()),
        Just("[\"sigmoid\", \"sft\"]".to_string()),
        Just("\"all-linear\"".to_string()),
        ".{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[a-z_]{1,12}".prop_map(|s| format!("\"{s}\"")),
        ".{0,20}",
    ]
}

/// A key line, a table header or junk.
pub fn toml_line(keys: Vec<String>) -> impl Strategy<Value = String> {
    let known = proptest::sample::select(keys);
    prop_oneof![
        3 => (known.clone(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => ("[a-z_]{1,10}", toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => ("\"[^\"\\\\]{0,10}\"", toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => known.prop_map(|k| format!("[{k}]")),
        1 => proptest::sample::select(vec![
            "[train]", "[[variant]]", "[model]", "[model.scratch]", "[lora]", "[sft]", "[data]",
            "[ui]", "[judge]", "[[train]]", "[variant]", "[styles.text]", "[chart]", "[series]",
            "[heatmap]", "[[styles]]", "[", "[]", "[[", "name = ", "= 1", "a.b.c = 1",
        ])
        .prop_map(str::to_string),
        1 => ".{0,30}",
    ]
}

/// Bytes as an editor or a torn write may leave them: invalid UTF-8, NULs, BOMs, CR.
pub fn junk_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..16),
        Just(vec![0xff]),
        Just(vec![0xc3]),
        Just(vec![0xef, 0xbb, 0xbf]),
        Just(vec![0]),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        ".{1,8}".prop_map(String::into_bytes),
    ]
}

pub fn edit(keys: Vec<String>) -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => any::<usize>().prop_map(Edit::DeleteLine),
        1 => any::<usize>().prop_map(Edit::DuplicateLine),
        4 => (any::<usize>(), toml_value()).prop_map(|(i, v)| Edit::SetValue(i, v)),
        3 => (any::<usize>(), toml_line(keys)).prop_map(|(i, l)| Edit::InsertLine(i, l)),
        1 => (any::<usize>(), junk_bytes()).prop_map(|(i, b)| Edit::InsertBytes(i, b)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// One of `bases` with 1 to `max_edits` edits.
pub fn edited(
    bases: Vec<&'static str>,
    keys: Vec<String>,
    max_edits: usize,
) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(bases),
        proptest::collection::vec(edit(keys), 1..=max_edits),
    )
        .prop_map(|(base, edits)| apply(base.as_bytes(), &edits))
}

pub fn apply(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut text = base.to_vec();
    for e in edits {
        text = apply_one(text, e);
    }
    text
}

fn apply_one(text: Vec<u8>, e: &Edit) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let n = lines.len();
    match e {
        Edit::DeleteLine(i) => {
            lines.remove(i % n);
        }
        Edit::DuplicateLine(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Edit::SetValue(i, v) => {
            // Prefer a line that has a value: the first `key = ...` line from i on.
            let at = (0..n)
                .map(|k| (i % n + k) % n)
                .find(|&k| lines[k].contains(&b'='))
                .unwrap_or(i % n);
            let line = &mut lines[at];
            match line.iter().position(|&b| b == b'=') {
                Some(eq) => {
                    line.truncate(eq + 1);
                    line.push(b' ');
                    line.extend_from_slice(v.as_bytes());
                }
                None => line.extend_from_slice(format!(" = {v}").as_bytes()),
            }
        }
        Edit::InsertLine(i, l) => lines.insert(i % (n + 1), l.clone().into_bytes()),
        Edit::InsertBytes(i, b) => {
            let mut t = text;
            let at = i % (t.len() + 1);
            t.splice(at..at, b.iter().copied());
            return t;
        }
        Edit::Truncate(i) => {
            let mut t = text;
            t.truncate(i % (t.len() + 1));
            return t;
        }
    }
    lines.join(&b'\n')
}

#[test]
fn edits_apply_where_they_say() {
    let base = b"a = 1\nb = 2\n[t]";
    assert_eq!(apply(base, &[Edit::DeleteLine(1)]), b"a = 1\n[t]");
    assert_eq!(
        apply(base, &[Edit::SetValue(2, "x".into())]),
        b"a = x\nb = 2\n[t]"
    );
    assert_eq!(apply(base, &[Edit::Truncate(3)]), b"a =");
    assert_eq!(
        apply(base, &[Edit::InsertBytes(0, vec![0xff])]),
        b"\xffa = 1\nb = 2\n[t]"
    );
}
