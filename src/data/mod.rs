//! Preference data: reading pairs, tokenizing them by gaplab's convention, and packing rows into
//! right-padded batches with the positions whose predictions score each response token.

pub mod chat;
pub mod stats;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use rayon::prelude::*;
use serde_json::Value as Json;

use crate::model::{SeqBatch, Tok};
use chat::{ChatTemplate, TemplateResolver};

/// A preference pair as text. `templated`: a chat template rendered it, writing the special
/// tokens the model wants, so it is encoded without the tokenizer's (no extra BOS, no EOS
/// appended), prompt and completion together as TRL does.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub templated: bool,
    /// How many bytes of `prompt` the whole conversations start with: a templated pair's
    /// prompt + chosen rendering is `prompt[..shared_len] + chosen` (likewise rejected).
    /// `prompt.len()` unless the template renders the prompt alone differently (a generation
    /// prompt the conversation does not repeat).
    pub shared_len: usize,
}

impl PreferencePair {
    /// A pair of plain strings (standard format).
    pub fn standard(prompt: &str, chosen: &str, rejected: &str) -> Self {
        Self {
            prompt: prompt.into(),
            chosen: chosen.into(),
            rejected: rejected.into(),
            templated: false,
            shared_len: prompt.len(),
        }
    }

    pub fn prompt(&self) -> Prompt {
        Prompt {
            text: self.prompt.clone(),
            templated: self.templated,
        }
    }
}

/// A prompt to generate from: plain text, or text rendered by a chat template.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub templated: bool,
}

/// `data.format`: how the rows of a file are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Per file, from the first row: a string `chosen` is standard, a list conversational.
    #[default]
    Auto,
    /// String prompt, chosen and rejected.
    Standard,
    /// Lists of `{"role", "content"}` messages, with a `prompt` list or an implicit prompt
    /// (the leading messages chosen and rejected share).
    Conversational,
}

/// The names of the fields holding the prompt, the chosen and the rejected response.
#[derive(Clone, Debug, PartialEq)]
pub struct Fields {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            prompt: "prompt".into(),
            chosen: "chosen".into(),
            rejected: "rejected".into(),
        }
    }
}

/// How to read a preference file: `data.format` and the field names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataFormat {
    pub format: Format,
    pub fields: Fields,
}

/// One conversational row split as TRL splits it: the prompt messages and each completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    /// 1-based line in the file.
    pub line: usize,
    pub prompt: Vec<Json>,
    pub chosen: Vec<Json>,
    pub rejected: Vec<Json>,
    /// The prompt was implicit: the leading messages chosen and rejected share.
    pub implicit: bool,
}

/// The rows of one file, in the format detected (or configured) for it.
#[derive(Clone, Debug, PartialEq)]
pub enum Rows {
    Standard(Vec<PreferencePair>),
    Conversational(Vec<Conversation>),
}

/// Prompt messages, chosen completion, rejected completion.
pub type SplitConversation = (Vec<Json>, Vec<Json>, Vec<Json>);

/// Splits full conversations into the prompt (their shared leading messages) and the two
/// completions, like TRL's `extract_prompt`. Errors when nothing is shared or when a
/// completion would be empty.
pub fn extract_prompt(
    chosen: &[Json],
    rejected: &[Json],
) -> std::result::Result<SplitConversation, String> {
    let shared = chosen
        .iter()
        .zip(rejected)
        .take_while(|(a, b)| a == b)
        .count();
    if shared == 0 {
        return Err(
            "chosen and rejected share no leading messages, so there is no prompt to extract (give the prompt messages in a separate prompt field)".into(),
        );
    }
    for (name, msgs) in [("chosen", chosen), ("rejected", rejected)] {
        if msgs.len() == shared {
            return Err(format!(
                "{name} has no messages after the {shared} it shares with the other response (an empty completion)"
            ));
        }
    }
    Ok((
        chosen[..shared].to_vec(),
        chosen[shared..].to_vec(),
        rejected[shared..].to_vec(),
    ))
}

fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// A list of chat messages: objects with a string `role`.
fn messages(v: Option<&Json>, field: &str) -> std::result::Result<Vec<Json>, String> {
    let list = match v {
        Some(Json::Array(a)) => a,
        Some(other) => {
            return Err(format!(
                "`{field}` is {}, expected a list of {{\"role\", \"content\"}} messages",
                kind_of(other)
            ))
        }
        None => return Err(format!("missing field `{field}`")),
    };
    for (i, m) in list.iter().enumerate() {
        if !m.get("role").is_some_and(Json::is_string) {
            return Err(format!(
                "`{field}`[{i}]: expected a message object with a string `role`"
            ));
        }
    }
    Ok(list.clone())
}

fn standard_row(v: &Json, f: &Fields) -> std::result::Result<PreferencePair, String> {
    let Json::Object(o) = v else {
        return Err(format!("got {}", kind_of(v)));
    };
    let mut texts = Vec::with_capacity(3);
    for field in [&f.prompt, &f.chosen, &f.rejected] {
        match o.get(field.as_str()) {
            Some(Json::String(s)) => texts.push(s.clone()),
            Some(other) => return Err(format!("`{field}` is {}", kind_of(other))),
            None => return Err(format!("missing field `{field}`")),
        }
    }
    let rejected = texts.pop().unwrap_or_default();
    let chosen = texts.pop().unwrap_or_default();
    let prompt = texts.pop().unwrap_or_default();
    Ok(PreferencePair {
        shared_len: prompt.len(),
        prompt,
        chosen,
        rejected,
        templated: false,
    })
}

/// A conversational row. A `prompt` list is the prompt and chosen/rejected are the
/// completions; without one (or with a string prompt beside full conversations, as in
/// UltraFeedback), the prompt is extracted (TRL's `maybe_extract_prompt`).
fn conversational_row(
    v: &Json,
    f: &Fields,
    line: usize,
) -> std::result::Result<Conversation, String> {
    if !v.is_object() {
        return Err(format!("got {}", kind_of(v)));
    }
    let chosen = messages(v.get(&f.chosen), &f.chosen)?;
    let rejected = messages(v.get(&f.rejected), &f.rejected)?;
    match v.get(&f.prompt) {
        Some(p @ Json::Array(_)) => {
            let prompt = messages(Some(p), &f.prompt)?;
            for (name, msgs) in [(&f.chosen, &chosen), (&f.rejected, &rejected)] {
                if msgs.is_empty() {
                    return Err(format!("`{name}` has no messages"));
                }
            }
            if prompt.is_empty() {
                return Err(format!("`{}` has no messages", f.prompt));
            }
            Ok(Conversation {
                line,
                prompt,
                chosen,
                rejected,
                implicit: false,
            })
        }
        None | Some(Json::Null) | Some(Json::String(_)) => {
            let (prompt, chosen, rejected) = extract_prompt(&chosen, &rejected)
                .map_err(|e| format!("implicit prompt: {e}"))?;
            Ok(Conversation {
                line,
                prompt,
                chosen,
                rejected,
                implicit: true,
            })
        }
        Some(other) => Err(format!(
            "`{}` is {}, expected a list of messages (or no `{}`: the prompt is then the messages `{}` and `{}` share)",
            f.prompt,
            kind_of(other),
            f.prompt,
            f.chosen,
            f.rejected
        )),
    }
}

/// Whether `path` is read as Parquet (by its extension) rather than JSONL.
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Where record `n` (1-based) of a data file is: `file:line` for JSONL, `file: row n` for
/// Parquet.
pub fn location(path: &Path, n: usize) -> String {
    if is_parquet(path) {
        format!("{}: row {n}", path.display())
    } else {
        format!("{}:{n}", path.display())
    }
}

/// The records of a data file as JSON objects with their 1-based line (JSONL, blank lines
/// skipped) or row (Parquet) numbers.
pub fn read_records(path: &Path) -> Result<Vec<(usize, Json)>> {
    if is_parquet(path) {
        return read_parquet(path);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in jsonl_lines(&bytes).enumerate() {
        let line = line.map_err(|e| {
            anyhow::anyhow!(
                "{}:{}:{}: not UTF-8 text (save the file as UTF-8)",
                path.display(),
                i + 1,
                e.valid_up_to() + 1
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Json = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}:{}: invalid JSON: {e}",
                path.display(),
                i + 1,
                e.column()
            )
        })?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// The lines of a JSONL file as text, each decoded on its own so that bytes that are not UTF-8
/// are reported at their line; a CR before the newline and a byte-order mark at the start
/// (written by Windows tools) are not part of the text.
fn jsonl_lines(
    bytes: &[u8],
) -> impl Iterator<Item = std::result::Result<&str, std::str::Utf8Error>> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut lines = bytes.split(|&b| b == b'\n');
    // An empty file has no lines (split would give one empty one).
    if bytes.is_empty() {
        lines.next();
    }
    lines.map(|l| std::str::from_utf8(l.strip_suffix(b"\r").unwrap_or(l)))
}

/// Rows of a Parquet file (any compression the Hub uses: snappy, zstd, gzip, lz4), each as a
/// JSON object: strings stay strings, lists of structs become lists of objects, so a
/// conversational column reads exactly like its JSONL form.
fn read_parquet(path: &Path) -> Result<Vec<(usize, Json)>> {
    // The Parquet reader panics on some damaged files (a column chunk with a negative
    // offset): that is a file it cannot read, not a reason to take gaplab down.
    std::panic::catch_unwind(|| read_parquet_rows(path)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        bail!("{}: not a readable Parquet file ({why})", path.display())
    })
}

fn read_parquet_rows(path: &Path) -> Result<Vec<(usize, Json)>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let rows = reader
        .get_row_iter(None)
        .with_context(|| format!("{}: cannot read rows", path.display()))?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.with_context(|| format!("{}: row {}", path.display(), i + 1))?;
        out.push((i + 1, row.to_json_value()));
    }
    Ok(out)
}

/// The files a `data.train` / `data.eval` setting names: the path itself, or the sorted
/// matches of a glob pattern (`data/train_prefs-*.parquet`), which must match something.
pub fn source_files(setting: &Path) -> Result<Vec<PathBuf>> {
    let text = setting.to_string_lossy();
    if !text.contains(['*', '?', '[']) {
        return Ok(vec![setting.to_path_buf()]);
    }
    let mut files = glob::glob(&text)
        .with_context(|| format!("{text}: not a valid glob pattern"))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("{text}: cannot list the matches"))?;
    files.retain(|p| p.is_file());
    files.sort();
    if files.is_empty() {
        bail!("{text}: the pattern matches no files");
    }
    Ok(files)
}

/// Reads a file of preference pairs (JSONL or Parquet), standard or conversational (`fmt`);
/// fields other than the three named ones are ignored. Errors name the file and line (row).
pub fn read_rows(path: &Path, fmt: &DataFormat) -> Result<Rows> {
    let f = &fmt.fields;
    let mut format = fmt.format;
    let mut standard = Vec::new();
    let mut conversations = Vec::new();
    for (n, v) in read_records(path)? {
        if format == Format::Auto {
            format = match v.get(&f.chosen) {
                Some(Json::Array(_)) => Format::Conversational,
                _ => Format::Standard,
            };
        }
        match format {
            Format::Conversational => {
                let c = conversational_row(&v, f, n).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: expected a conversational pair (`{}` and `{}` lists of messages): {e}",
                        location(path, n),
                        f.chosen,
                        f.rejected
                    )
                })?;
                conversations.push(c);
            }
            _ => {
                let p = standard_row(&v, f).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: expected an object with string fields `{}`, `{}`, `{}`: {e}",
                        location(path, n),
                        f.prompt,
                        f.chosen,
                        f.rejected
                    )
                })?;
                standard.push(p);
            }
        }
    }
    if standard.is_empty() && conversations.is_empty() {
        bail!("{}: no preference pairs", path.display());
    }
    Ok(if format == Format::Conversational {
        Rows::Conversational(conversations)
    } else {
        Rows::Standard(standard)
    })
}

/// Reads a JSONL file of `{"prompt", "chosen", "rejected"}` strings (the standard format with
/// the default field names); blank lines are skipped. Errors name the file and line. Only the
/// tests read files this way now; gaplab itself goes through [`load_pairs`].
#[cfg(test)]
fn read_pairs_jsonl(path: &Path) -> Result<Vec<PreferencePair>> {
    let fmt = DataFormat {
        format: Format::Standard,
        ..Default::default()
    };
    match read_rows(path, &fmt)? {
        Rows::Standard(p) => Ok(p),
        Rows::Conversational(_) => unreachable!("the format is standard"),
    }
}

/// Renders a conversation as TRL 1.16's `DPOTrainer` does before tokenizing it: the prompt
/// messages with the generation prompt (also when the last one is an assistant message: the
/// completion is then a new assistant turn, not a continuation), and prompt + each completion
/// as one conversation. A completion's text is its conversation's rendering after the part of
/// the prompt's rendering both conversations start with; that is all of it, unless the template
/// renders the prompt alone differently (Gemma's empty thought block, DeepSeek-R1's
/// `<think>`), in which case TRL too starts the completion where the renderings part.
pub fn render_conversation(tpl: &ChatTemplate, c: &Conversation) -> Result<PreferencePair> {
    let prompt = tpl.render(&c.prompt, true)?;
    let whole = |completion: &[Json]| -> Result<String> {
        let all: Vec<Json> = c.prompt.iter().chain(completion).cloned().collect();
        tpl.render(&all, false)
    };
    let (chosen, rejected) = (whole(&c.chosen)?, whole(&c.rejected)?);
    let shared_len =
        common_prefix_bytes(&prompt, &chosen).min(common_prefix_bytes(&prompt, &rejected));
    Ok(PreferencePair {
        chosen: chosen[shared_len..].to_string(),
        rejected: rejected[shared_len..].to_string(),
        prompt,
        templated: true,
        shared_len,
    })
}

/// Length in bytes of the longest common prefix of `a` and `b` (whole characters).
fn common_prefix_bytes(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((at, _), _)| at)
}

/// Length of the longest common prefix of two id sequences (TRL's `common_prefix_length`).
pub fn common_prefix_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What a data file held, for `gaplab check`.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSummary {
    pub path: PathBuf,
    pub pairs: usize,
    pub kind: FileKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FileKind {
    Standard,
    Conversational {
        /// Rows with a prompt list, and rows whose prompt was extracted.
        with_prompt: usize,
        implicit: usize,
        /// Where the chat template came from.
        template: String,
        /// The first pair as rendered.
        first: Box<PreferencePair>,
        /// The end of the first pair's prompt (as text) that its tokenized conversations do not
        /// share, and so left out of training ([`tokenize_templated`]); None when there is none.
        /// Checked on the first pair only, as TRL warns once: it mostly holds for all.
        prompt_left_out: Option<String>,
    },
}

impl std::fmt::Display for FileSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            FileKind::Standard => write!(f, "standard, {} pairs", self.pairs),
            FileKind::Conversational {
                with_prompt,
                implicit,
                template,
                prompt_left_out,
                ..
            } => {
                write!(
                    f,
                    "conversational, {} pairs ({with_prompt} with a prompt list, {implicit} with the prompt implicit in chosen/rejected), chat template {template}",
                    self.pairs
                )?;
                if let Some(tail) = prompt_left_out {
                    write!(
                        f,
                        "; warning: the first pair's tokenized prompt is not a prefix of its tokenized conversations (the template renders the prompt alone differently, or a token spans its end), so its end {tail:?} is left out of training and the model trains on a context that differs from the one it generates from (TRL does the same); this likely holds for every pair"
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Reads a file of pairs in `fmt`, rendering conversational rows with the chat template of
/// `templates`. Errors name the file and line.
pub fn load_pairs(
    path: &Path,
    fmt: &DataFormat,
    templates: &mut TemplateResolver,
) -> Result<(Vec<PreferencePair>, FileSummary)> {
    match read_rows(path, fmt)? {
        Rows::Standard(pairs) => {
            let summary = FileSummary {
                path: path.to_path_buf(),
                pairs: pairs.len(),
                kind: FileKind::Standard,
            };
            Ok((pairs, summary))
        }
        Rows::Conversational(convs) => {
            let tpl = templates.get(path)?;
            // In parallel: rendering UltraFeedback's 61k conversations is seconds of work.
            // (collected in order first, so the error reported is the first bad row's)
            let pairs = convs
                .par_iter()
                .map(|c| render_conversation(&tpl, c).with_context(|| location(path, c.line)))
                .collect::<Vec<_>>()
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            let implicit = convs.iter().filter(|c| c.implicit).count();
            // A pair that does not tokenize is reported, with its line, by tokenize_pairs.
            let prompt_left_out = match tokenize_templated(templates.tok(), &pairs[0]) {
                Ok((_, tail)) if !tail.is_empty() => Some(
                    templates
                        .tok()
                        .inner
                        .decode(&tail, false)
                        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?,
                ),
                _ => None,
            };
            let summary = FileSummary {
                path: path.to_path_buf(),
                pairs: pairs.len(),
                kind: FileKind::Conversational {
                    with_prompt: convs.len() - implicit,
                    implicit,
                    template: tpl.origin.clone(),
                    first: Box::new(pairs[0].clone()),
                    prompt_left_out,
                },
            };
            Ok((pairs, summary))
        }
    }
}

/// A pair in token ids: standard responses end with EOS, templated ones as the template ends
/// them (`<|im_end|>\n`, `<|eot_id|>`).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizedPair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl TokenizedPair {
    /// k = min(|y_w|, |y_l|), the prefix length POET keeps.
    pub fn k(&self) -> usize {
        self.chosen.len().min(self.rejected.len())
    }
}

/// Tokenizes a pair by the convention (see the README). Standard: the prompt with the
/// tokenizer's special tokens (BOS), each response without them and EOS appended, as TRL does
/// for non-conversational data. Templated: as TRL 1.16 does for conversational data
/// ([`tokenize_templated`]).
pub fn tokenize_pair(tok: &Tok, pair: &PreferencePair) -> Result<TokenizedPair> {
    let t = if pair.templated {
        tokenize_templated(tok, pair)?.0
    } else {
        TokenizedPair {
            prompt: tok.encode_prompt(&pair.prompt)?,
            chosen: tok.encode_response(&pair.chosen)?,
            rejected: tok.encode_response(&pair.rejected)?,
        }
    };
    if t.prompt.is_empty() {
        bail!("the prompt has no tokens (the tokenizer adds no BOS and the text is empty)");
    }
    Ok(t)
}

/// A templated pair in ids as TRL 1.16's `DPOTrainer` makes them: the rendered prompt and each
/// rendered conversation are tokenized as they are, with nothing added (the template wrote the
/// special tokens, the end of turn included), and each completion is its conversation's ids
/// after the longest prefix the prompt's ids share with both conversations. Tokenizing the
/// conversation whole matters where a token spans the end of the prompt (in Qwen2's and
/// Llama 3's vocabularies, the generation prompt's `\n` and a response's leading newline
/// make one `\n\n` token). Also returns the end of the prompt's ids that is left out: empty
/// unless the template renders the prompt alone differently or a token spans that end.
pub fn tokenize_templated(tok: &Tok, pair: &PreferencePair) -> Result<(TokenizedPair, Vec<u32>)> {
    let Some(shared) = pair.prompt.get(..pair.shared_len) else {
        bail!(
            "the prompt's shared length ({}) is not a character boundary of the prompt ({} bytes)",
            pair.shared_len,
            pair.prompt.len()
        );
    };
    let mut prompt = tok.encode_rendered(&pair.prompt)?;
    let chosen = tok.encode_rendered(&format!("{shared}{}", pair.chosen))?;
    let rejected = tok.encode_rendered(&format!("{shared}{}", pair.rejected))?;
    let n = common_prefix_len(&prompt, &chosen).min(common_prefix_len(&prompt, &rejected));
    let left_out = prompt.split_off(n);
    let (chosen, rejected) = (chosen[n..].to_vec(), rejected[n..].to_vec());
    for (name, ids) in [("chosen", &chosen), ("rejected", &rejected)] {
        if ids.is_empty() {
            bail!("the chat template renders the {name} completion as nothing");
        }
    }
    Ok((
        TokenizedPair {
            prompt,
            chosen,
            rejected,
        },
        left_out,
    ))
}

/// Tokenizes every pair; errors name the file and line of the pair (`source` = the file).
pub fn tokenize_pairs(
    tok: &Tok,
    pairs: &[PreferencePair],
    source: &Path,
    vocab_size: usize,
) -> Result<Vec<TokenizedPair>> {
    // In parallel, collected in order so the error reported is the first bad pair's.
    let tokenized: Vec<Result<TokenizedPair>> = pairs
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let t = tokenize_pair(tok, p)
                .with_context(|| format!("{}: pair {}", source.display(), i + 1))?;
            if let Some(&id) = t
                .prompt
                .iter()
                .chain(&t.chosen)
                .chain(&t.rejected)
                .find(|&&id| id as usize >= vocab_size)
            {
                bail!(
                    "{}: pair {}: token id {id} is outside the model's vocabulary ({vocab_size})",
                    source.display(),
                    i + 1
                );
            }
            Ok(t)
        })
        .collect();
    tokenized.into_iter().collect()
}

/// `data.prompt_truncation`: which part of an over-long prompt is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptTruncation {
    /// The last `max_prompt_len` tokens, and a leading BOS (TRL's keep_end).
    #[default]
    KeepEnd,
    /// The first `max_prompt_len` tokens (a leading BOS stays with them).
    KeepStart,
}

/// `data.overlong`: what becomes of a pair still longer than `max_len` once its prompt is cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlong {
    /// Both responses are cut to the room left (as TRL does).
    #[default]
    Truncate,
    /// The pair is left out.
    Drop,
}

impl std::fmt::Display for PromptTruncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::KeepEnd => "keep_end",
            Self::KeepStart => "keep_start",
        })
    }
}

impl std::fmt::Display for Overlong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Truncate => "truncate",
            Self::Drop => "drop",
        })
    }
}

/// Token limits of a pair: the prompt alone, and prompt plus the longer response; and what is
/// done to a pair over them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LengthLimits {
    pub max_prompt_len: usize,
    pub max_len: usize,
    pub prompt_truncation: PromptTruncation,
    pub overlong: Overlong,
}

impl std::fmt::Display for LengthLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max_prompt_len {} ({}) / max_len {} (overlong: {})",
            self.max_prompt_len, self.prompt_truncation, self.max_len, self.overlong
        )
    }
}

/// What fitting did to one pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fit {
    /// The prompt lost tokens.
    pub prompt_cut: bool,
    /// The responses were cut to the room left (`overlong = "truncate"`).
    pub responses_truncated: bool,
    /// The pair is still too long and is to be left out (`overlong = "drop"`).
    pub dropped: bool,
}

/// Fits a pair into `limits` the way TRL does: when prompt + longer response is too long, the
/// prompt keeps its last `max_prompt_len` tokens (and its BOS) with keep_end, or its first ones
/// with keep_start; then, if the pair is still too long, both responses are cut to what is left
/// (a cut response loses its EOS), or with `overlong = "drop"` the pair is marked dropped (its
/// responses untouched).
pub fn fit_lengths(p: &mut TokenizedPair, limits: LengthLimits, bos: Option<u32>) -> Fit {
    let mut fit = Fit::default();
    let longest = p.chosen.len().max(p.rejected.len());
    if p.prompt.len() + longest <= limits.max_len {
        return fit;
    }
    if p.prompt.len() > limits.max_prompt_len {
        fit.prompt_cut = true;
        match limits.prompt_truncation {
            PromptTruncation::KeepEnd => {
                let keep_bos = bos.is_some() && p.prompt.first() == bos.as_ref();
                let cut = p.prompt.len() - limits.max_prompt_len;
                if keep_bos {
                    p.prompt.drain(1..1 + cut);
                } else {
                    p.prompt.drain(..cut);
                }
            }
            PromptTruncation::KeepStart => p.prompt.truncate(limits.max_prompt_len),
        }
    }
    if p.prompt.len() + longest <= limits.max_len {
        return fit;
    }
    match limits.overlong {
        Overlong::Truncate => {
            let room = limits.max_len.saturating_sub(p.prompt.len()).max(1);
            p.chosen.truncate(room);
            p.rejected.truncate(room);
            fit.responses_truncated = true;
        }
        Overlong::Drop => fit.dropped = true,
    }
    fit
}

/// What fitting did to a set of pairs. Prompts cut and responses truncated count the pairs
/// kept; a dropped pair counts only as dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FitCounts {
    pub pairs: usize,
    pub prompts_cut: usize,
    pub responses_truncated: usize,
    pub dropped: usize,
}

impl FitCounts {
    /// Whether any pair was changed or dropped.
    pub fn any(&self) -> bool {
        self.prompts_cut + self.responses_truncated + self.dropped > 0
    }
}

impl std::fmt::Display for FitCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} prompts cut, {} pairs with responses truncated, {} of {} pairs dropped",
            self.prompts_cut, self.responses_truncated, self.dropped, self.pairs
        )
    }
}

/// Fits every pair into `limits` ([`fit_lengths`]) and removes the dropped ones, keeping the
/// order of the rest. Returns the counts and, per input pair, whether it was kept.
pub fn fit_pairs(
    pairs: &mut Vec<TokenizedPair>,
    limits: LengthLimits,
    bos: Option<u32>,
) -> (FitCounts, Vec<bool>) {
    let mut counts = FitCounts {
        pairs: pairs.len(),
        ..Default::default()
    };
    let mut kept = Vec::with_capacity(pairs.len());
    for p in pairs.iter_mut() {
        let fit = fit_lengths(p, limits, bos);
        if fit.dropped {
            counts.dropped += 1;
        } else {
            counts.prompts_cut += fit.prompt_cut as usize;
            counts.responses_truncated += fit.responses_truncated as usize;
        }
        kept.push(!fit.dropped);
    }
    let mut keep = kept.iter();
    pairs.retain(|_| *keep.next().unwrap_or(&true));
    (counts, kept)
}

// Constructors of the model's input from tokenized pairs.
impl SeqBatch {
    /// Chosen rows first, then rejected rows, in pair order.
    pub fn from_pairs(pairs: &[TokenizedPair], pad: u32, device: &Device) -> Result<Self> {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .chain(
                pairs
                    .iter()
                    .map(|p| (p.prompt.as_slice(), p.rejected.as_slice())),
            )
            .collect();
        Self::new(&rows, pad, device)
    }

    /// Chosen rows only (supervised fine-tuning).
    pub fn chosen_only(pairs: &[TokenizedPair], pad: u32, device: &Device) -> Result<Self> {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .collect();
        Self::new(&rows, pad, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(prompt_truncation: PromptTruncation, overlong: Overlong) -> LengthLimits {
        LengthLimits {
            max_prompt_len: 3,
            max_len: 6,
            prompt_truncation,
            overlong,
        }
    }

    fn pair(prompt: &[u32], chosen: &[u32], rejected: &[u32]) -> TokenizedPair {
        TokenizedPair {
            prompt: prompt.to_vec(),
            chosen: chosen.to_vec(),
            rejected: rejected.to_vec(),
        }
    }

    #[test]
    fn long_pairs_are_cut_like_trl() {
        let limits = limits(PromptTruncation::KeepEnd, Overlong::Truncate);
        let mut p = pair(&[0, 1, 2, 3, 4], &[7, 8, 9, 1], &[5, 1]);
        assert_eq!(
            fit_lengths(&mut p, limits, Some(0)),
            Fit {
                prompt_cut: true,
                responses_truncated: true,
                dropped: false
            }
        );
        assert_eq!(
            p.prompt,
            vec![0, 3, 4],
            "BOS and the end of the prompt survive"
        );
        assert_eq!(
            p.chosen,
            vec![7, 8, 9],
            "the long response loses its tail and EOS"
        );
        assert_eq!(p.rejected, vec![5, 1]);
        let mut short = pair(&[0, 1], &[2, 1], &[3, 1]);
        assert_eq!(fit_lengths(&mut short, limits, Some(0)), Fit::default());
        // Without a BOS (or a first token that is not BOS), keep_end keeps the plain end.
        for bos in [None, Some(9)] {
            let mut p = pair(&[0, 1, 2, 3, 4], &[7, 1], &[5, 1]);
            let fit = fit_lengths(&mut p, limits, bos);
            assert!(fit.prompt_cut && !fit.responses_truncated && !fit.dropped);
            assert_eq!(p.prompt, vec![2, 3, 4], "{bos:?}");
        }
        // A long prompt is only cut when the pair is over max_len (as TRL does).
        let mut p = pair(&[0, 1, 2, 3, 4], &[1], &[1]);
        assert_eq!(fit_lengths(&mut p, limits, Some(0)), Fit::default());
        assert_eq!(p.prompt.len(), 5);
    }

    #[test]
    fn keep_start_keeps_the_beginning_of_the_prompt() {
        let limits = limits(PromptTruncation::KeepStart, Overlong::Truncate);
        for bos in [Some(0), None] {
            let mut p = pair(&[0, 1, 2, 3, 4], &[7, 8, 9, 1], &[5, 1]);
            let fit = fit_lengths(&mut p, limits, bos);
            assert!(fit.prompt_cut && fit.responses_truncated && !fit.dropped);
            assert_eq!(p.prompt, vec![0, 1, 2], "a leading BOS stays ({bos:?})");
            assert_eq!((p.chosen, p.rejected), (vec![7, 8, 9], vec![5, 1]));
        }
        let mut p = pair(&[4, 5, 6, 7], &[8, 9, 1], &[1]);
        let fit = fit_lengths(&mut p, limits, Some(0));
        assert!(fit.prompt_cut && !fit.responses_truncated);
        assert_eq!((p.prompt, p.chosen), (vec![4, 5, 6], vec![8, 9, 1]));
    }

    #[test]
    fn overlong_pairs_are_truncated_or_dropped() {
        // Pairs: fits; fits once the prompt is cut; still too long after (twice).
        let pairs = vec![
            pair(&[0, 1], &[2, 1], &[3, 1]),
            pair(&[0, 1, 2, 3, 4, 5], &[6, 7, 1], &[1]),
            pair(&[0, 1, 2, 3, 4], &[7, 8, 9, 1], &[5, 1]),
            pair(&[0, 1], &[2, 3, 4, 5, 6, 1], &[1]),
        ];
        for keep in [PromptTruncation::KeepEnd, PromptTruncation::KeepStart] {
            let limits = limits(keep, Overlong::Truncate);
            let mut v = pairs.clone();
            let (counts, kept) = fit_pairs(&mut v, limits, Some(0));
            assert_eq!(
                counts,
                FitCounts {
                    pairs: 4,
                    prompts_cut: 2,
                    responses_truncated: 2,
                    dropped: 0
                }
            );
            assert_eq!(kept, vec![true; 4]);
            for p in &v {
                assert!(p.prompt.len() <= limits.max_prompt_len || p == &pairs[0]);
                assert!(p.prompt.len() + p.chosen.len().max(p.rejected.len()) <= limits.max_len);
            }

            let limits = self::limits(keep, Overlong::Drop);
            let mut v = pairs.clone();
            let (counts, kept) = fit_pairs(&mut v, limits, Some(0));
            assert_eq!(
                counts,
                FitCounts {
                    pairs: 4,
                    prompts_cut: 1,
                    responses_truncated: 0,
                    dropped: 2
                },
                "a dropped pair counts only as dropped"
            );
            assert_eq!(kept, vec![true, true, false, false]);
            assert_eq!(v.len(), 2);
            assert_eq!(v[0], pairs[0], "the order of the kept pairs is kept");
            assert_eq!(v[1].prompt.len(), 3);
            assert_eq!(v[1].chosen, vec![6, 7, 1], "kept responses are whole");
            assert!(v
                .iter()
                .all(|p| p.prompt.len() + p.chosen.len().max(p.rejected.len()) <= limits.max_len));
        }
        // A dropped pair's responses are untouched.
        let mut p = pairs[3].clone();
        let fit = fit_lengths(
            &mut p,
            limits(PromptTruncation::KeepEnd, Overlong::Drop),
            None,
        );
        assert!(fit.dropped && !fit.prompt_cut && !fit.responses_truncated);
        assert_eq!(p, pairs[3]);
    }

    fn write(dir: &Path, name: &str, lines: &[serde_json::Value]) -> PathBuf {
        let p = dir.join(name);
        let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        std::fs::write(&p, text.join("\n") + "\n").unwrap();
        p
    }

    fn u(t: &str) -> Json {
        serde_json::json!({"role": "user", "content": t})
    }

    fn a(t: &str) -> Json {
        serde_json::json!({"role": "assistant", "content": t})
    }

    fn conversations(rows: Rows) -> Vec<Conversation> {
        match rows {
            Rows::Conversational(c) => c,
            Rows::Standard(p) => panic!("read as standard: {p:?}"),
        }
    }

    #[test]
    fn format_is_detected_per_file_from_the_first_row() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let std_file = write(
            dir.path(),
            "s.jsonl",
            &[json!({"prompt": "p", "chosen": "c", "rejected": "r", "score": 3})],
        );
        let conv_file = write(
            dir.path(),
            "c.jsonl",
            &[json!({"prompt": [u("p")], "chosen": [a("c")], "rejected": [a("r")]})],
        );
        let auto = DataFormat::default();
        assert_eq!(
            read_rows(&std_file, &auto).unwrap(),
            Rows::Standard(vec![PreferencePair::standard("p", "c", "r")]),
            "extra fields are ignored"
        );
        let c = conversations(read_rows(&conv_file, &auto).unwrap());
        assert_eq!(
            c,
            vec![Conversation {
                line: 1,
                prompt: vec![u("p")],
                chosen: vec![a("c")],
                rejected: vec![a("r")],
                implicit: false,
            }]
        );
        // A forced format that does not fit is an error at the row.
        let standard = DataFormat {
            format: Format::Standard,
            ..Default::default()
        };
        let e = format!("{:#}", read_rows(&conv_file, &standard).unwrap_err());
        assert!(
            e.contains("c.jsonl:1: expected an object with string fields `prompt`, `chosen`, `rejected`: `prompt` is a list"),
            "{e}"
        );
        let conversational = DataFormat {
            format: Format::Conversational,
            ..Default::default()
        };
        let e = format!("{:#}", read_rows(&std_file, &conversational).unwrap_err());
        assert!(
            e.contains("s.jsonl:1: expected a conversational pair")
                && e.contains("`chosen` is a string"),
            "{e}"
        );
        // Rows after the first follow the first row's format.
        let mixed = write(
            dir.path(),
            "m.jsonl",
            &[
                json!({"prompt": "p", "chosen": "c", "rejected": "r"}),
                json!({"prompt": [u("p")], "chosen": [a("c")], "rejected": [a("r")]}),
            ],
        );
        let e = format!("{:#}", read_rows(&mixed, &auto).unwrap_err());
        assert!(
            e.contains("m.jsonl:2: expected an object with string fields"),
            "{e}"
        );
    }

    #[test]
    fn standard_rows_missing_fields_keep_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "d.jsonl",
            &[serde_json::json!({"prompt": "a", "chosen": "b"})],
        );
        let e = format!("{:#}", read_pairs_jsonl(&p).unwrap_err());
        assert!(
            e.contains("d.jsonl:1: expected an object with string fields `prompt`, `chosen`, `rejected`: missing field `rejected`"),
            "{e}"
        );
    }

    #[test]
    fn implicit_prompt_is_the_shared_leading_messages() {
        let sys = serde_json::json!({"role": "system", "content": "s"});
        let chosen = [sys.clone(), u("q"), a("yes"), u("more?"), a("ok")];
        let rejected = [sys.clone(), u("q"), a("no")];
        let (p, c, r) = extract_prompt(&chosen, &rejected).unwrap();
        assert_eq!(p, vec![sys.clone(), u("q")]);
        assert_eq!(c, vec![a("yes"), u("more?"), a("ok")]);
        assert_eq!(r, vec![a("no")]);
        let e = extract_prompt(&[u("x"), a("y")], &[u("z"), a("y")]).unwrap_err();
        assert!(e.contains("share no leading messages"), "{e}");
        let e = extract_prompt(&[u("x")], &[u("x"), a("y")]).unwrap_err();
        assert!(e.contains("chosen has no messages after"), "{e}");
        let e = extract_prompt(&[u("x"), a("y")], &[u("x"), a("y")]).unwrap_err();
        assert!(e.contains("empty completion"), "{e}");

        // Through a file: no `prompt`, or a string prompt beside full conversations
        // (UltraFeedback), both extract; errors name the line.
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "i.jsonl",
            &[
                serde_json::json!({"chosen": chosen, "rejected": rejected}),
                serde_json::json!({"prompt": "q", "chosen": [u("q"), a("y")], "rejected": [u("q"), a("n")], "messages": [], "score_chosen": 8.0, "score_rejected": 2.0, "prompt_id": "ab"}),
            ],
        );
        let c = conversations(read_rows(&f, &DataFormat::default()).unwrap());
        assert!(c.iter().all(|c| c.implicit));
        assert_eq!((c[0].prompt.len(), c[1].prompt.clone()), (2, vec![u("q")]));
        let bad = write(
            dir.path(),
            "b.jsonl",
            &[
                serde_json::json!({"chosen": [u("q"), a("y")], "rejected": [u("q"), a("n")]}),
                serde_json::json!({"chosen": [u("q"), a("y")], "rejected": [u("r"), a("n")]}),
            ],
        );
        let e = format!("{:#}", read_rows(&bad, &DataFormat::default()).unwrap_err());
        assert!(
            e.contains("b.jsonl:2:")
                && e.contains("implicit prompt: chosen and rejected share no leading messages"),
            "{e}"
        );
    }

    #[test]
    fn field_names_can_be_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let fmt = DataFormat {
            format: Format::Auto,
            fields: Fields {
                prompt: "question".into(),
                chosen: "good".into(),
                rejected: "bad".into(),
            },
        };
        let s = write(
            dir.path(),
            "s.jsonl",
            &[serde_json::json!({"question": "q", "good": "g", "bad": "b", "prompt": 1})],
        );
        assert_eq!(
            read_rows(&s, &fmt).unwrap(),
            Rows::Standard(vec![PreferencePair::standard("q", "g", "b")])
        );
        let c = write(
            dir.path(),
            "c.jsonl",
            &[serde_json::json!({"good": [u("q"), a("g")], "bad": [u("q"), a("b")]})],
        );
        let conv = conversations(read_rows(&c, &fmt).unwrap());
        assert_eq!(conv[0].chosen, vec![a("g")]);
        let e = format!("{:#}", read_rows(&c, &DataFormat::default()).unwrap_err());
        assert!(e.contains("missing field `prompt`"), "{e}");
        // A message without a role is an error naming the field and index.
        let m = write(
            dir.path(),
            "m.jsonl",
            &[serde_json::json!({"good": [u("q"), {"content": "g"}], "bad": [u("q"), a("b")]})],
        );
        let e = format!("{:#}", read_rows(&m, &fmt).unwrap_err());
        assert!(e.contains("m.jsonl:1:") && e.contains("`good`[1]"), "{e}");
    }

    #[test]
    fn rendering_follows_trl() {
        const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(CHATML, "t", None, None, None).unwrap();
        let c = Conversation {
            line: 1,
            prompt: vec![u("hi")],
            chosen: vec![a("yes")],
            rejected: vec![a("no")],
            implicit: false,
        };
        let prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(
            render_conversation(&t, &c).unwrap(),
            PreferencePair {
                prompt: prompt.into(),
                chosen: "yes<|im_end|>\n".into(),
                rejected: "no<|im_end|>\n".into(),
                templated: true,
                shared_len: prompt.len(),
            }
        );
        // A prompt ending with an assistant message gets the generation prompt too (TRL 1.16):
        // the completion is a new assistant turn.
        let after_assistant = Conversation {
            prompt: vec![u("hi"), a("Sure:")],
            chosen: vec![a(" yes")],
            ..c.clone()
        };
        let p = render_conversation(&t, &after_assistant).unwrap();
        assert!(
            p.prompt
                .ends_with("assistant\nSure:<|im_end|>\n<|im_start|>assistant\n"),
            "{p:?}"
        );
        assert_eq!(p.chosen, " yes<|im_end|>\n");
        // A template that renders the prompt alone differently: the completions start where
        // the renderings part (the prompt keeps its whole text, for generation).
        let think = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant><think></think>{% endif %}",
            "think.jinja",
            None,
            None,
            None,
        )
        .unwrap();
        let p = render_conversation(&think, &c).unwrap();
        assert_eq!(p.prompt, "<user>hi<assistant><think></think>");
        assert_eq!(p.shared_len, "<user>hi<assistant>".len());
        assert_eq!((p.chosen.as_str(), p.rejected.as_str()), ("yes", "no"));
        // Where the two renderings part differently, the shorter shared part counts.
        let c2 = Conversation {
            chosen: vec![a("<think>x")],
            ..c.clone()
        };
        let p = render_conversation(&think, &c2).unwrap();
        assert_eq!(p.shared_len, "<user>hi<assistant>".len());
        assert_eq!(p.chosen, "<think>x");
        assert_eq!(common_prefix_bytes("aé", "aè"), 1, "whole characters");
        assert_eq!(common_prefix_bytes("ab", "abc"), 2);
        assert_eq!(common_prefix_len(&[1, 2, 3], &[1, 2]), 2);
    }

    #[test]
    fn templated_pairs_are_tokenized_whole_with_nothing_added() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2");
        let tok = Tok::load(&dir, None).unwrap();
        let plain = tokenize_pair(&tok, &PreferencePair::standard("a b", "c", "d")).unwrap();
        let templated = tokenize_pair(
            &tok,
            &PreferencePair {
                templated: true,
                ..PreferencePair::standard("a b", "c", "d")
            },
        )
        .unwrap();
        // Standard: BOS before the prompt, EOS after each response; templated: neither.
        assert_eq!(plain.prompt[0], tok.bos.unwrap());
        assert_eq!(plain.prompt[1..], templated.prompt[..]);
        assert_eq!(plain.chosen, [&templated.chosen[..], &[tok.eos]].concat());
        assert_eq!(
            plain.rejected,
            [&templated.rejected[..], &[tok.eos]].concat()
        );
        // "q: " + "the" is one token "Ġthe" where "q: " alone ends with "Ġ": as TRL does, the
        // completion starts where the ids part, and the prompt's "Ġ" is left out.
        let pair = PreferencePair {
            templated: true,
            ..PreferencePair::standard("q: ", "the", "an")
        };
        let ids = |t: &str| tok.encode_rendered(t).unwrap();
        let (t, left_out) = tokenize_templated(&tok, &pair).unwrap();
        assert_eq!(ids("q: ").len(), 3);
        assert_eq!(t.prompt, ids("q:"));
        assert_eq!(left_out, ids(" "));
        assert_eq!(t.chosen, ids(" the"));
        assert_eq!(t.rejected, ids(" an"));
        assert_eq!(tokenize_pair(&tok, &pair).unwrap(), t);
        // The completion is cut from prompt[..shared_len] + response.
        let shorter = PreferencePair {
            shared_len: 2,
            chosen: " the".into(),
            rejected: " an".into(),
            ..pair.clone()
        };
        assert_eq!(tokenize_templated(&tok, &shorter).unwrap(), (t, left_out));
        let empty = PreferencePair {
            templated: true,
            ..PreferencePair::standard("a b", "c", "")
        };
        let e = tokenize_pair(&tok, &empty).unwrap_err().to_string();
        assert!(
            e.contains("renders the rejected completion as nothing"),
            "{e}"
        );
    }

    #[test]
    fn bad_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{\"prompt\": 3}\n",
        )
        .unwrap();
        let e = format!("{:#}", read_pairs_jsonl(&p).unwrap_err());
        assert!(e.contains("d.jsonl:2"), "{e}");
        std::fs::write(&p, "{\"prompt\":\"a\",\n").unwrap();
        let e = format!("{:#}", read_pairs_jsonl(&p).unwrap_err());
        assert!(e.contains("d.jsonl:1") && e.contains("invalid JSON"), "{e}");
    }

    #[test]
    fn a_damaged_parquet_file_is_an_error_not_a_crash() {
        // Found by tests/fuzz: a fixture shard with one byte of a column chunk's metadata
        // changed made the Parquet reader panic ("column start and length should not be
        // negative").
        let good = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/chat/ultrafeedback/test_prefs-00000-of-00001.parquet"
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.parquet");
        let mut crashed = 0;
        for at in 0..good.len() {
            for byte in [0x00, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = byte;
                std::fs::write(&p, &bad).unwrap();
                if let Err(e) = read_records(&p) {
                    let e = format!("{e:#}");
                    assert!(e.starts_with(&p.display().to_string()), "{e}");
                    crashed += e.contains("not a readable Parquet file (") as usize;
                }
            }
        }
        assert!(crashed > 0, "no damaged file made the reader panic");
    }

    #[test]
    fn bytes_that_are_not_utf8_name_their_line_and_a_bom_is_no_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        let row = "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}";
        std::fs::write(&p, format!("\u{feff}{row}\r\n{row}\r\n")).unwrap();
        assert_eq!(read_pairs_jsonl(&p).unwrap().len(), 2);
        let mut bytes = format!("{row}\n\n{{\"prompt\":\"").into_bytes();
        bytes.extend_from_slice(b"\xff\"}\n");
        std::fs::write(&p, bytes).unwrap();
        let e = format!("{:#}", read_pairs_jsonl(&p).unwrap_err());
        assert!(
            e.ends_with("d.jsonl:3:12: not UTF-8 text (save the file as UTF-8)"),
            "{e}"
        );
        std::fs::write(&p, "").unwrap();
        let e = format!("{:#}", read_pairs_jsonl(&p).unwrap_err());
        assert!(e.ends_with("d.jsonl: no preference pairs"), "{e}");
    }
}
