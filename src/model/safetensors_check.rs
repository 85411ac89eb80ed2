//! Checkpoint validation from safetensors headers alone: the 8-byte little-endian header length
//! and the JSON header of every file, never the tensor data. It finds what a load would trip
//! over (a truncated download, a config.json that does not match the weights, a quantized or
//! half-copied sharded checkpoint) in milliseconds and before any tensor is allocated, and names
//! the file and the tensor.
//!
//! The check is generic: a set of files ([`FileSet`]: one file, or the shards of a
//! `*.safetensors.index.json`) against the tensors an architecture needs ([`Expected`]: name →
//! shape). The decoder ([`super::io`]) and PEFT adapters ([`super::lora`]) use it today; other
//! heads (a reward model's `score` layer) only need to list their tensors.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The header length of a safetensors file is capped by the format (100 MB); a bigger value
/// means the bytes are not a safetensors file at all.
const MAX_HEADER: u64 = 100_000_000;

/// Weight dtypes gaplab loads (and converts to the run's precision).
const SUPPORTED: [&str; 3] = ["F32", "BF16", "F16"];

/// Unexpected or missing names listed in one message before "and N more".
const LIST_MAX: usize = 5;

/// One tensor entry of a safetensors header.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range inside the data section (which starts right after the header).
    pub begin: u64,
    pub end: u64,
}

/// The header of one safetensors file, checked for sanity: every entry's byte range matches
/// its dtype and shape and lies inside the file.
#[derive(Clone, Debug)]
pub struct Header {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
    /// Bytes of tensor data the header describes.
    pub data_bytes: u64,
}

/// Bytes per element of a safetensors dtype; None for sub-byte or unknown ones (whose sizes
/// are not checked).
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

impl Header {
    /// Reads the header of the safetensors file at `path` (its first 8 + N bytes only).
    pub fn read(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        Self::from_reader(file, len, path)
    }

    /// The header read from `r`, the start of a file of `file_len` bytes named `path`.
    pub fn from_reader(mut r: impl Read, file_len: u64, path: &Path) -> Result<Self> {
        let name = path.display();
        let mut prefix = [0u8; 8];
        if file_len < 8 {
            bail!(
                "{name}: {file_len} bytes, too short for a safetensors file (truncated or empty)"
            );
        }
        r.read_exact(&mut prefix)
            .with_context(|| format!("cannot read {name}"))?;
        let header_len = u64::from_le_bytes(prefix);
        if header_len > MAX_HEADER || 8 + header_len > file_len {
            let hint = if prefix.starts_with(b"version ") {
                " It is a Git LFS pointer, not the weights: fetch them with `git lfs pull`."
            } else if header_len > MAX_HEADER {
                " It is not a safetensors file."
            } else {
                " The file looks truncated (an interrupted download or copy?)."
            };
            bail!(
                "{name}: the header length ({header_len} bytes) runs past the end of the file ({file_len} bytes).{hint}"
            );
        }
        let mut json = vec![0u8; header_len as usize];
        r.read_exact(&mut json)
            .with_context(|| format!("cannot read {name}"))?;
        let v: Value = serde_json::from_slice(&json).map_err(|e| {
            anyhow::anyhow!("{name}: the safetensors header is not valid JSON: {e}")
        })?;
        let Value::Object(map) = v else {
            bail!("{name}: the safetensors header is not a JSON object");
        };
        let mut entries = Vec::with_capacity(map.len());
        for (k, v) in &map {
            if k == "__metadata__" {
                continue;
            }
            entries
                .push(parse_entry(k, v).map_err(|e| anyhow::anyhow!("{name}: tensor `{k}`: {e}"))?);
        }
        let data_len = file_len - 8 - header_len;
        check_data_section(&entries, data_len, 8 + header_len, file_len)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let data_bytes = entries.iter().map(|e| e.end - e.begin).sum();
        Ok(Self {
            path: path.to_path_buf(),
            entries,
            data_bytes,
        })
    }
}

/// One header entry: `{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}` with a
/// byte length that matches dtype and shape.
fn parse_entry(name: &str, v: &Value) -> Result<Entry, String> {
    let dtype = v
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or("field `dtype` missing or not a string")?
        .to_string();
    let shape = v
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
        })
        .ok_or("field `shape` missing or not a list of sizes")?;
    let offsets = v
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .filter(|a| a.len() == 2)
        .ok_or("field `data_offsets` must be [begin, end]")?;
    let (begin, end) = (offsets[0], offsets[1]);
    if begin > end {
        return Err(format!(
            "data_offsets [{begin}, {end}] end before they begin"
        ));
    }
    if let Some(size) = dtype_size(&dtype) {
        let want = shape
            .iter()
            .try_fold(size, |n, &d| n.checked_mul(d as u64))
            .ok_or("shape too large")?;
        if end - begin != want {
            return Err(format!(
                "data_offsets [{begin}, {end}] hold {} bytes but {dtype} {shape:?} needs {want}",
                end - begin
            ));
        }
    }
    Ok(Entry {
        name: name.to_string(),
        dtype,
        shape,
        begin,
        end,
    })
}

/// Every entry's bytes lie inside the data section of `data_len` bytes (starting at byte
/// `data_start` of a file of `file_len` bytes); the first tensor cut off is named.
fn check_data_section(
    entries: &[Entry],
    data_len: u64,
    data_start: u64,
    file_len: u64,
) -> Result<(), String> {
    let Some(cut) = entries
        .iter()
        .filter(|e| e.end > data_len)
        .min_by_key(|e| (e.end, e.name.as_str()))
    else {
        return Ok(());
    };
    // Saturating: the offsets come from an untrusted header.
    let want = data_start.saturating_add(entries.iter().map(|e| e.end).max().unwrap_or(0));
    Err(format!(
        "tensor `{}` ends at byte {}, past the end of the file: expected {want} bytes, got {file_len}; the file looks truncated (an interrupted download or copy?)",
        cut.name,
        data_start.saturating_add(cut.end)
    ))
}

/// The files of a checkpoint: one safetensors file, or the shards a
/// `*.safetensors.index.json` names.
#[derive(Clone, Debug)]
pub struct FileSet {
    pub files: Vec<PathBuf>,
    pub index: Option<ShardIndex>,
}

/// A shard index: its path and `weight_map` (tensor name → shard file name).
#[derive(Clone, Debug)]
pub struct ShardIndex {
    pub path: PathBuf,
    pub weight_map: BTreeMap<String, String>,
}

/// The `weight_map` of the shard index at `path`.
pub fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = super::parse_json(path, &text)?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .with_context(|| format!("{}: field `weight_map` missing", path.display()))?;
    map.iter()
        .map(|(k, f)| match f.as_str() {
            Some(f) => Ok((k.clone(), f.to_string())),
            None => bail!(
                "{}: `weight_map` entry `{k}` is not a file name",
                path.display()
            ),
        })
        .collect()
}

impl FileSet {
    pub fn single(path: PathBuf) -> Self {
        Self {
            files: vec![path],
            index: None,
        }
    }

    /// The files of the checkpoint folder `dir` whose weights are `stem.safetensors` or the
    /// shards of `stem.safetensors.index.json` (which wins); every shard must exist.
    pub fn of_dir(dir: &Path, stem: &str) -> Result<Self> {
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        if index.exists() {
            let weight_map = read_index(&index)?;
            let mut files: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (tensor, file) in &weight_map {
                files.entry(file).or_default().push(tensor);
            }
            for (file, tensors) in &files {
                if !dir.join(file).is_file() {
                    bail!(
                        "{}: shard {file} does not exist (the index puts {} there, e.g. `{}`): an incomplete download?",
                        index.display(),
                        plural(tensors.len(), "tensor"),
                        tensors[0]
                    );
                }
            }
            let files = files.keys().map(|f| dir.join(f)).collect();
            return Ok(Self {
                files,
                index: Some(ShardIndex {
                    path: index,
                    weight_map,
                }),
            });
        }
        let single = dir.join(format!("{stem}.safetensors"));
        if single.exists() {
            return Ok(Self::single(single));
        }
        bail!(
            "{}: no {stem}.safetensors or {stem}.safetensors.index.json",
            dir.display()
        )
    }

    /// How messages name the set: the index of a sharded checkpoint, else its file.
    fn label(&self) -> String {
        match (&self.index, self.files.as_slice()) {
            (Some(i), _) => i.path.display().to_string(),
            (None, [one]) => one.display().to_string(),
            (None, files) => format!("{} safetensors files", files.len()),
        }
    }
}

/// One tensor an architecture needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    pub name: String,
    pub shape: Vec<usize>,
}

/// What the files must hold: the tensors, where their shapes come from (for messages:
/// "config.json", "the base model with r = 8"), what a wrong shape suggests, and how tensors
/// nobody asked for are taken.
#[derive(Clone, Debug)]
pub struct Expectation {
    pub tensors: Vec<Expected>,
    pub shapes_from: String,
    /// Appended to a shape mismatch (": an adapter made for another base?"), or empty.
    pub mismatch_hint: String,
    pub unexpected: Unexpected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unexpected {
    /// Named in a warning and ignored (leftovers such as `rotary_emb.inv_freq` are harmless).
    Warn,
    /// Refused: the loader would refuse them too.
    Refuse,
}

/// What a valid file set holds, and what looked odd.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The expected tensors (all present).
    pub tensors: usize,
    pub files: usize,
    pub sharded: bool,
    /// Bytes of the expected tensors' data.
    pub bytes: u64,
    /// Their dtypes, lowercase ("bf16"), in order.
    pub dtypes: Vec<String>,
    pub warnings: Vec<String>,
}

impl std::fmt::Display for Summary {
    /// "12 tensors, 3 shards, 1.2 GiB, bf16"
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files = if self.sharded {
            plural(self.files, "shard")
        } else {
            plural(self.files, "file")
        };
        write!(
            f,
            "{}, {files}, {}, {}",
            plural(self.tensors, "tensor"),
            bytes(self.bytes),
            self.dtypes.join("+")
        )
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A byte count in binary units with one decimal ("1.2 GiB").
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut x = n as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    format!("{x:.1} {}", UNITS[unit])
}

/// `names` as "`a`, `b`, `c`" with at most [`LIST_MAX`] of them, then "and N more".
fn name_list<S: AsRef<str>>(names: &[S]) -> String {
    let shown: Vec<String> = names
        .iter()
        .take(LIST_MAX)
        .map(|n| format!("`{}`", n.as_ref()))
        .collect();
    match names.len().saturating_sub(LIST_MAX) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// Reads the headers of `set` and checks them against `want`; see [`validate`].
pub fn check(want: &Expectation, set: &FileSet) -> Result<Summary> {
    let headers = set
        .files
        .iter()
        .map(|f| Header::read(f))
        .collect::<Result<Vec<_>>>()?;
    validate(want, set, &headers)
}

/// Checks the headers of `set`'s files (in its order) against `want`: the index agrees with
/// the shards, no tensor is stored twice, every expected tensor is there once with its shape
/// and a supported dtype. Tensors nobody expects, and tensors the index does not list, are
/// warnings (or refused, per `want.unexpected`).
pub fn validate(want: &Expectation, set: &FileSet, headers: &[Header]) -> Result<Summary> {
    let mut warnings = Vec::new();
    // Where each tensor is, refusing a tensor stored twice: which copy a loader takes is
    // anyone's guess.
    let mut found: BTreeMap<&str, (&Header, &Entry)> = BTreeMap::new();
    for h in headers {
        for e in &h.entries {
            if let Some((first, _)) = found.insert(&e.name, (h, e)) {
                bail!(
                    "tensor `{}` is stored twice, in {} and in {}",
                    e.name,
                    first.path.display(),
                    h.path.display()
                );
            }
        }
    }
    if let Some(index) = &set.index {
        for (tensor, file) in &index.weight_map {
            match found.get(tensor.as_str()) {
                Some((h, _)) if h.path.file_name() == Some(file.as_ref()) => {}
                Some((h, _)) => bail!(
                    "{}: puts tensor `{tensor}` in {file}, but it is in {}",
                    index.path.display(),
                    h.path.display()
                ),
                None => bail!(
                    "{}: puts tensor `{tensor}` in {file}, which does not hold it",
                    index.path.display()
                ),
            }
        }
        let unlisted: Vec<&str> = found
            .keys()
            .copied()
            .filter(|n| !index.weight_map.contains_key(*n))
            .collect();
        if !unlisted.is_empty() {
            warnings.push(format!(
                "{}: {} in the shards but not in the index: {}",
                index.path.display(),
                plural(unlisted.len(), "tensor"),
                name_list(&unlisted)
            ));
        }
    }
    let label = set.label();
    let missing: Vec<&str> = want
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !found.contains_key(n))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{label}: {} missing: {}",
            plural(missing.len(), "expected tensor"),
            name_list(&missing)
        );
    }
    let misshaped: Vec<(&Expected, &Header, &Entry)> = want
        .tensors
        .iter()
        .filter_map(|t| {
            let (h, e) = found[t.name.as_str()];
            (e.shape != t.shape).then_some((t, h, e))
        })
        .collect();
    if let Some((t, h, e)) = misshaped.first() {
        let more = match misshaped.len() - 1 {
            0 => String::new(),
            1 => " (and 1 more tensor differs)".to_string(),
            n => format!(" (and {n} more tensors differ)"),
        };
        bail!(
            "{}: tensor `{}` has shape {:?} but {} implies {:?}{}{more}",
            h.path.display(),
            t.name,
            e.shape,
            want.shapes_from,
            t.shape,
            want.mismatch_hint
        );
    }
    let mut dtypes = BTreeSet::new();
    let mut data = 0;
    for t in &want.tensors {
        let (h, e) = found[t.name.as_str()];
        if !SUPPORTED.contains(&e.dtype.as_str()) {
            bail!(
                "{}: tensor `{}` is {}; gaplab reads F32, BF16 and F16 weights (a quantized checkpoint? use the unquantized one)",
                h.path.display(),
                t.name,
                e.dtype
            );
        }
        dtypes.insert(e.dtype.to_lowercase());
        data += e.end - e.begin;
    }
    let wanted: BTreeSet<&str> = want.tensors.iter().map(|t| t.name.as_str()).collect();
    let extra: Vec<&str> = found
        .keys()
        .copied()
        .filter(|n| !wanted.contains(n))
        .collect();
    if !extra.is_empty() {
        let msg = format!(
            "{label}: {} not used by this model: {}",
            plural(extra.len(), "tensor"),
            name_list(&extra)
        );
        match want.unexpected {
            Unexpected::Warn => warnings.push(format!("{msg} (ignored)")),
            Unexpected::Refuse => bail!("{msg}"),
        }
    }
    Ok(Summary {
        tensors: want.tensors.len(),
        files: set.files.len(),
        sharded: set.index.is_some(),
        bytes: data,
        dtypes: dtypes.into_iter().collect(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file: the header JSON as given, then `data` zero bytes.
    fn raw(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data, 0);
        v
    }

    /// A well-formed file holding `tensors` (name, dtype, shape), packed in order.
    fn file(tensors: &[(&str, &str, &[usize])]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut at = 0u64;
        for (name, dtype, shape) in tensors {
            let n = dtype_size(dtype).unwrap() * shape.iter().product::<usize>() as u64;
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + n]}),
            );
            at += n;
        }
        raw(&serde_json::Value::Object(header).to_string(), at as usize)
    }

    fn header(name: &str, bytes: &[u8]) -> Result<Header> {
        Header::from_reader(bytes, bytes.len() as u64, Path::new(name))
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    fn want(tensors: &[(&str, &[usize])]) -> Expectation {
        Expectation {
            tensors: tensors
                .iter()
                .map(|(n, s)| Expected {
                    name: n.to_string(),
                    shape: s.to_vec(),
                })
                .collect(),
            shapes_from: "config.json".into(),
            mismatch_hint: String::new(),
            unexpected: Unexpected::Warn,
        }
    }

    const TWO: [(&str, &str, &[usize]); 2] = [("a", "F32", &[4, 8]), ("b", "BF16", &[8])];

    #[test]
    fn a_sound_file_is_summarised() {
        let bytes = file(&TWO);
        let h = header("m.safetensors", &bytes).unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.data_bytes, 4 * 8 * 4 + 8 * 2);
        let set = FileSet::single("m.safetensors".into());
        let s = validate(&want(&[("a", &[4, 8]), ("b", &[8])]), &set, &[h]).unwrap();
        assert_eq!(s.to_string(), "2 tensors, 1 file, 144 B, bf16+f32");
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn a_truncated_file_names_the_cut_tensor_and_both_lengths() {
        let bytes = file(&TWO);
        let cut = &bytes[..bytes.len() - 10];
        let e = err(header("m.safetensors", cut));
        let want_len = bytes.len();
        let got_len = cut.len();
        assert!(
            e.contains("m.safetensors")
                && e.contains("tensor `b`")
                && e.contains(&format!("expected {want_len} bytes, got {got_len}"))
                && e.contains("truncated"),
            "{e}"
        );
        // Cut inside the header: its length runs past the end.
        let e = err(header("m.safetensors", &bytes[..20]));
        assert!(
            e.contains("header length") && e.contains("truncated"),
            "{e}"
        );
        let e = err(header("m.safetensors", &bytes[..5]));
        assert!(e.contains("5 bytes, too short"), "{e}");
    }

    #[test]
    fn a_header_length_past_the_end_is_named() {
        let mut bytes = file(&TWO);
        bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let e = err(header("m.safetensors", &bytes));
        assert!(e.contains("not a safetensors file"), "{e}");
        let lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n";
        let e = err(header("m.safetensors", lfs));
        assert!(e.contains("Git LFS pointer"), "{e}");
    }

    #[test]
    fn garbage_json_is_named() {
        let e = err(header("m.safetensors", &raw("{\"a\": [1, ", 0)));
        assert!(
            e.contains("m.safetensors") && e.contains("not valid JSON"),
            "{e}"
        );
        let e = err(header("m.safetensors", &raw("[1, 2]", 0)));
        assert!(e.contains("not a JSON object"), "{e}");
    }

    #[test]
    fn bad_offsets_are_named() {
        let h = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}"#;
        let e = err(header("m.safetensors", &raw(h, 8)));
        assert!(
            e.contains("tensor `a`") && e.contains("end before they begin"),
            "{e}"
        );
        let h = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 6]}}"#;
        let e = err(header("m.safetensors", &raw(h, 8)));
        assert!(e.contains("hold 6 bytes but F32 [2] needs 8"), "{e}");
        let h = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}"#;
        let e = err(header("m.safetensors", &raw(h, 8)));
        assert!(e.contains("must be [begin, end]"), "{e}");
        let h = format!(
            r#"{{"a": {{"dtype": "U8", "shape": [1], "data_offsets": [{0}, {1}]}}}}"#,
            u64::MAX - 1,
            u64::MAX
        );
        let e = err(header("m.safetensors", &raw(&h, 8)));
        assert!(e.contains("looks truncated"), "{e}");
        let h = r#"{"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}"#;
        let e = err(header("m.safetensors", &raw(h, 8)));
        assert!(e.contains("field `shape`"), "{e}");
    }

    #[test]
    fn an_unsupported_dtype_is_named() {
        let h = header("q.safetensors", &file(&[("a", "I8", &[4, 8])])).unwrap();
        let set = FileSet::single("q.safetensors".into());
        let e = err(validate(&want(&[("a", &[4, 8])]), &set, &[h]));
        assert!(
            e.contains("q.safetensors")
                && e.contains("tensor `a` is I8")
                && e.contains("quantized"),
            "{e}"
        );
        // An unknown dtype's size is not checked, but the tensor is still refused.
        let raw_h = r#"{"a": {"dtype": "F4", "shape": [4, 8], "data_offsets": [0, 16]}}"#;
        let h = header("q.safetensors", &raw(raw_h, 16)).unwrap();
        let e = err(validate(&want(&[("a", &[4, 8])]), &set, &[h]));
        assert!(e.contains("is F4"), "{e}");
    }

    #[test]
    fn a_wrong_shape_names_both_shapes() {
        let h = header("m.safetensors", &file(&TWO)).unwrap();
        let set = FileSet::single("m.safetensors".into());
        let e = err(validate(
            &want(&[("a", &[4, 16]), ("b", &[16])]),
            &set,
            &[h],
        ));
        assert!(
            e.contains("m.safetensors: tensor `a` has shape [4, 8] but config.json implies [4, 16] (and 1 more tensor differs)"),
            "{e}"
        );
    }

    #[test]
    fn missing_tensors_are_listed() {
        let h = header("m.safetensors", &file(&TWO)).unwrap();
        let set = FileSet::single("m.safetensors".into());
        let names: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
        let mut w: Vec<(&str, &[usize])> = vec![("a", &[4, 8])];
        w.extend(names.iter().map(|n| (n.as_str(), &[1usize][..])));
        let e = err(validate(&want(&w), &set, &[h]));
        assert!(
            e.contains("8 expected tensors missing: `m0`, `m1`, `m2`, `m3`, `m4` and 3 more"),
            "{e}"
        );
    }

    #[test]
    fn unexpected_tensors_warn_or_are_refused() {
        let h = header(
            "m.safetensors",
            &file(&[
                ("a", "F32", &[4, 8]),
                ("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", &[4]),
            ]),
        )
        .unwrap();
        let set = FileSet::single("m.safetensors".into());
        let mut w = want(&[("a", &[4, 8])]);
        let s = validate(&w, &set, std::slice::from_ref(&h)).unwrap();
        assert_eq!(s.warnings.len(), 1);
        assert!(s.warnings[0].contains("rotary_emb.inv_freq") && s.warnings[0].contains("ignored"));
        w.unexpected = Unexpected::Refuse;
        let e = err(validate(&w, &set, &[h]));
        assert!(e.contains("not used by this model"), "{e}");
    }

    fn sharded(files: &[&str], map: &[(&str, &str)]) -> FileSet {
        FileSet {
            files: files.iter().map(PathBuf::from).collect(),
            index: Some(ShardIndex {
                path: "m.safetensors.index.json".into(),
                weight_map: map
                    .iter()
                    .map(|(t, f)| (t.to_string(), f.to_string()))
                    .collect(),
            }),
        }
    }

    #[test]
    fn shards_agree_with_their_index() {
        let s1 = header("s1", &file(&[("a", "F32", &[4, 8])])).unwrap();
        let s2 = header("s2", &file(&[("b", "F32", &[8]), ("c", "F32", &[1])])).unwrap();
        let w = want(&[("a", &[4, 8]), ("b", &[8])]);
        let set = sharded(&["s1", "s2"], &[("a", "s1"), ("b", "s2")]);
        let s = validate(&w, &set, &[s1.clone(), s2.clone()]).unwrap();
        assert_eq!(s.to_string(), "2 tensors, 2 shards, 160 B, f32");
        // `c` is neither listed nor needed: two warnings.
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("not in the index: `c`"));
        // The index points at the wrong shard, or at a tensor no shard holds.
        let set = sharded(&["s1", "s2"], &[("a", "s2"), ("b", "s2")]);
        let e = err(validate(&w, &set, &[s1.clone(), s2.clone()]));
        assert!(e.contains("puts tensor `a` in s2, but it is in s1"), "{e}");
        let set = sharded(&["s1", "s2"], &[("a", "s1"), ("b", "s2"), ("z", "s2")]);
        let e = err(validate(&w, &set, &[s1, s2]));
        assert!(
            e.contains("tensor `z` in s2, which does not hold it"),
            "{e}"
        );
    }

    #[test]
    fn a_tensor_in_two_shards_names_both() {
        let s1 = header("s1", &file(&[("a", "F32", &[4, 8])])).unwrap();
        let s2 = header("s2", &file(&[("a", "F32", &[4, 8])])).unwrap();
        let set = sharded(&["s1", "s2"], &[("a", "s1")]);
        let e = err(validate(&want(&[("a", &[4, 8])]), &set, &[s1, s2]));
        assert!(
            e.contains("tensor `a` is stored twice, in s1 and in s2"),
            "{e}"
        );
    }

    #[test]
    fn an_index_naming_a_missing_shard_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s1"), file(&[("a", "F32", &[2])])).unwrap();
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "s1", "b": "s2", "c": "s2"}}"#,
        )
        .unwrap();
        let e = err(FileSet::of_dir(dir.path(), "model"));
        assert!(
            e.contains("shard s2 does not exist (the index puts 2 tensors there, e.g. `b`)"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("s2"),
            file(&[("b", "F32", &[2]), ("c", "F32", &[2])]),
        )
        .unwrap();
        let set = FileSet::of_dir(dir.path(), "model").unwrap();
        let s = check(&want(&[("a", &[2]), ("b", &[2]), ("c", &[2])]), &set).unwrap();
        assert_eq!(s.to_string(), "3 tensors, 2 shards, 24 B, f32");
        let e = err(FileSet::of_dir(&dir.path().join("none"), "model"));
        assert!(e.contains("no model.safetensors"), "{e}");
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1_288_490_189), "1.2 GiB");
    }

    #[test]
    fn a_file_written_by_the_safetensors_crate_reads_back() {
        // The header reader agrees with the writer gaplab saves checkpoints with.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let t =
            candle_core::Tensor::zeros((3, 5), candle_core::DType::BF16, &candle_core::Device::Cpu)
                .unwrap();
        safetensors::serialize_to_file([("w", t)], None, &path).unwrap();
        let h = Header::read(&path).unwrap();
        assert_eq!(h.entries[0].shape, vec![3, 5]);
        assert_eq!(h.entries[0].dtype, "BF16");
        assert_eq!(h.data_bytes, 30);
    }
}
