//! Where a key of a TOML document sits (line and column), for error messages that point at the
//! exact place a researcher has to edit.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a field path: a table key or an array index (`variant[1].beta`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Parses "train.beta" or "variant[1].beta" into segments.
pub fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            out.push(Seg::Key(rest[..i].to_string()));
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                if let Ok(n) = rest[1..end].parse() {
                    out.push(Seg::Index(n));
                }
                rest = &rest[end + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

pub fn render_path(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The span of the value at `path` (or of the key itself when `key` is true).
pub fn span_of(text: &str, path: &[Seg]) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let mut table: &DeTable = doc.get_ref();
    let mut value: Option<&Spanned<DeValue>> = None;
    let mut key_span = None;
    for seg in path {
        match seg {
            Seg::Key(k) => {
                let t = match value {
                    None => table,
                    Some(v) => v.get_ref().as_table()?,
                };
                let (key, v) = t.get_key_value(k.as_str())?;
                key_span = Some(key.span());
                value = Some(v);
                table = t;
            }
            Seg::Index(i) => {
                value = Some(value?.get_ref().get(*i)?);
            }
        }
    }
    let _ = table;
    match value {
        // Point at the key for tables (their span can start far away), at the value otherwise.
        Some(v) if v.get_ref().is_table() => key_span.or(Some(v.span())),
        Some(v) => Some(v.span()),
        None => None,
    }
}

/// The deepest field path whose key or value contains `offset`.
pub fn path_at(text: &str, offset: usize) -> Vec<Seg> {
    let Ok(doc) = DeTable::parse(text) else {
        return vec![];
    };
    let mut path = Vec::new();
    walk_table(doc.get_ref(), offset, &mut path);
    path
}

fn contains(r: &Range<usize>, offset: usize) -> bool {
    r.start <= offset && offset < r.end.max(r.start + 1)
}

fn walk_table(t: &DeTable, offset: usize, path: &mut Vec<Seg>) -> bool {
    for (k, v) in t.iter() {
        if contains(&k.span(), offset) {
            path.push(Seg::Key(k.get_ref().to_string()));
            return true;
        }
        if contains(&v.span(), offset)
            || matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_))
        {
            path.push(Seg::Key(k.get_ref().to_string()));
            if walk_value(v, offset, path) || contains(&v.span(), offset) {
                return true;
            }
            path.pop();
        }
    }
    false
}

fn walk_value(v: &Spanned<DeValue>, offset: usize, path: &mut Vec<Seg>) -> bool {
    match v.get_ref() {
        DeValue::Table(t) => walk_table(t, offset, path),
        DeValue::Array(_) => {
            let mut i = 0;
            while let Some(item) = v.get_ref().get(i) {
                if contains(&item.span(), offset) || item.get_ref().is_table() {
                    path.push(Seg::Index(i));
                    if walk_value(item, offset, path) || contains(&item.span(), offset) {
                        return true;
                    }
                    path.pop();
                }
                i += 1;
            }
            false
        }
        _ => false,
    }
}

/// Where a TOML/serde error points, for one-line messages `file:line:col: path: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorSite {
    /// 1-based line and column (in characters); None when the error has no position.
    pub at: Option<(usize, usize)>,
    /// The field path (`train.beta`, `variant[1].name`), empty at the top level.
    pub path: String,
    /// The first line of the parser's message.
    pub message: String,
}

/// Locates a `toml::from_str` error in `text`: the deepest field at the error's offset, else the
/// key path the parser recorded, else (a document that does not parse) the enclosing `[table]`
/// and key of the error's line.
pub fn error_site(err: &toml::de::Error, text: &str) -> ErrorSite {
    let message = err
        .message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .trim()
        .to_string();
    let offset = err.span().map(|span| span.start.min(text.len()));
    let deepest = offset
        .map(|o| render_path(&path_at(text, o)))
        .filter(|p| !p.is_empty());
    let path = deepest
        .or_else(|| recorded_keys(err))
        .or_else(|| offset.and_then(|o| enclosing_key(text, o)))
        .unwrap_or_default();
    ErrorSite {
        at: offset.map(|o| line_col(text, o)),
        path,
        message,
    }
}

/// The key path the toml crate recorded for a value error. It only exposes the path through
/// `Display` (as a line "in `a.b.c`", printed when no source text is attached), so it is read
/// back from there.
fn recorded_keys(err: &toml::de::Error) -> Option<String> {
    let mut bare = err.clone();
    bare.set_input(None);
    bare.to_string().lines().find_map(|line| {
        let keys = line.strip_prefix("in `")?.strip_suffix('`')?;
        (!keys.is_empty()).then(|| keys.to_string())
    })
}

/// Best-effort field path for a document that does not parse: the last `[table]` header before
/// `offset` and the key of the error's line.
fn enclosing_key(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    let header = |l: &str| {
        let inner = l.trim().strip_prefix('[')?.trim_start_matches('[');
        inner.split(']').next().map(|name| name.trim().to_string())
    };
    if let Some(h) = header(line) {
        return Some(h);
    }
    let table = text[..line_start].lines().rev().find_map(header);
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('#'));
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (t, k) => t.or(k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[train]\nbeta = 0.1\nlr = 3\n\n[[variant]]\nname = \"a\"\n\n[[variant]]\nname = \"b\"\nbeta = -1\n";

    #[test]
    fn paths_round_trip() {
        let p = parse_path("variant[1].beta");
        assert_eq!(
            p,
            vec![
                Seg::Key("variant".into()),
                Seg::Index(1),
                Seg::Key("beta".into())
            ]
        );
        assert_eq!(render_path(&p), "variant[1].beta");
    }

    #[test]
    fn finds_values_of_tables_and_arrays_of_tables() {
        let s = span_of(DOC, &parse_path("train.lr")).unwrap();
        assert_eq!(line_col(DOC, s.start), (3, 6));
        let s = span_of(DOC, &parse_path("variant[1].beta")).unwrap();
        assert_eq!(line_col(DOC, s.start), (10, 8));
        assert!(span_of(DOC, &parse_path("train.gamma")).is_none());
    }

    #[test]
    fn path_at_offset() {
        let off = DOC.find("-1").unwrap();
        assert_eq!(render_path(&path_at(DOC, off)), "variant[1].beta");
        let off = DOC.find("lr").unwrap();
        assert_eq!(render_path(&path_at(DOC, off)), "train.lr");
    }
}
