//! Chat templates: the Jinja templates of Hugging Face tokenizers, rendered the way transformers'
//! `apply_chat_template` renders them (trim_blocks, lstrip_blocks, Python string methods,
//! `raise_exception`, `tojson` without HTML escaping), with minijinja.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value as Json;

use crate::model::Tok;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from (a file, or "data.chat_template (inline)"), for messages.
    pub origin: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

const NAME: &str = "chat_template";

/// The work one rendering may do, in minijinja's fuel (about one instruction, or 64 bytes of
/// text made or processed): a real template renders a long conversation with a few
/// thousand; a template that loops without end or builds gigabytes of text stops at this
/// (well under a second and a gigabyte) instead of hanging the run or exhausting memory.
pub const RENDER_FUEL: u64 = 10_000_000;

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos`/`pad` are the texts of the tokenizer's special tokens,
    /// passed to the template as `bos_token`, `eos_token`, `pad_token`.
    pub fn new(
        source: &str,
        origin: impl Into<String>,
        bos: Option<String>,
        eos: Option<String>,
        pad: Option<String>,
    ) -> Result<Self> {
        let origin = origin.into();
        let mut env = Environment::new();
        // transformers compiles chat templates with trim_blocks and lstrip_blocks.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| anyhow::anyhow!("{origin}: invalid chat template: {}", describe(&e)))?;
        Ok(Self {
            env,
            origin,
            bos_token: bos,
            eos_token: eos,
            pad_token: pad,
        })
    }

    /// Compiles `source` with the special tokens of `tok`.
    pub fn for_tok(source: &str, origin: impl Into<String>, tok: &Tok) -> Result<Self> {
        let text = |id: Option<u32>| id.and_then(|id| tok.inner.id_to_token(id));
        Self::new(
            source,
            origin,
            text(tok.bos),
            text(Some(tok.eos)),
            text(tok.pad),
        )
    }

    /// Renders `messages` (JSON objects with `role` and `content`), as
    /// `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn render(&self, messages: &[Json], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template(NAME)?;
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        // As transformers does, keys whose value is null are dropped from each message.
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| match m {
                Json::Object(o) => to_value(&Json::Object(
                    o.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )),
                other => to_value(other),
            })
            .collect();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        // transformers passes these explicitly (None), so `tools is none` holds.
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        for (k, v) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
        ] {
            if let Some(v) = v {
                ctx.insert(k, Value::from(v.as_str()));
            }
        }
        tmpl.render(Value::from(ctx)).map_err(|e| {
            let why = if e.kind() == ErrorKind::OutOfFuel {
                format!(
                    "rendering stopped after {RENDER_FUEL} steps, far more than a chat template needs (does it loop without end, or build a huge text?): {}",
                    describe(&e)
                )
            } else {
                describe(&e)
            };
            anyhow::anyhow!("chat template ({}): {why}", self.origin)
        })
    }
}

/// transformers' `strftime_now(format)`: the local time now, formatted by strftime.
fn strftime_now(format: String) -> Result<String, Error> {
    let bad = || Error::new(ErrorKind::InvalidOperation, "strftime_now: invalid format");
    let fmt = std::ffi::CString::new(format).map_err(|_| bad())?;
    let mut buf = vec![0u8; 256];
    // SAFETY: `tm` is filled by localtime_r before use; strftime writes at most buf.len() bytes
    // (including the NUL) into buf and returns the length written, 0 on overflow.
    let n = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(bad());
        }
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm)
    };
    buf.truncate(n);
    String::from_utf8(buf).map_err(|_| bad())
}

/// A minijinja error with its cause and template line on one line.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// A JSON value as a template value (objects keep their keys, numbers their kind).
fn to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::from(a.iter().map(to_value).collect::<Vec<_>>()),
        Json::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)`, so `<`, `>`, `&`
/// and `'` stay as they are (minijinja's own filter escapes them for HTML).
fn tojson(
    state: &minijinja::State,
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    // minijinja's own filter charges fuel for the text it makes; this one must too, before it
    // makes it: `(messages * 100000) | tojson` would otherwise build gigabytes unbounded.
    if let Some((_, remaining)) = state.fuel_levels() {
        let limit = remaining.saturating_mul(64);
        state.consume_fuel(text_size(value, limit) / 64 + 1)?;
    }
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    for unused in ["ensure_ascii", "separators", "sort_keys"] {
        let _: Option<Value> = kwargs.get(unused)?;
    }
    kwargs.assert_all_used()?;
    let none = Kwargs::from_iter(std::iter::empty::<(&str, Value)>());
    let html = minijinja::filters::tojson(value, indent, none)?;
    let html = html.as_str().unwrap_or_default();
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let esc = &rest[i..];
        let plain = match esc.get(..6) {
            Some("\\u003c") => Some('<'),
            Some("\\u003e") => Some('>'),
            Some("\\u0026") => Some('&'),
            Some("\\u0027") => Some('\''),
            _ => None,
        };
        match plain {
            Some(c) => {
                out.push(c);
                rest = &esc[6..];
            }
            None => {
                // Any other escape is two characters, the backslash and the next one.
                let n = esc[1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&esc[..1 + n]);
                rest = &esc[1 + n..];
            }
        }
    }
    out.push_str(rest);
    Ok(Value::from(out))
}

/// Roughly how many bytes of JSON `value` makes, counted up to just past `limit`.
fn text_size(value: &Value, limit: u64) -> u64 {
    if let Some(s) = value.as_str() {
        return s.len() as u64 + 2;
    }
    let Ok(items) = value.try_iter() else {
        return 8;
    };
    let is_map = value.kind() == minijinja::value::ValueKind::Map;
    let mut size = 2u64;
    for item in items {
        size = size.saturating_add(text_size(&item, limit) + 1);
        if is_map {
            if let Ok(v) = value.get_item(&item) {
                size = size.saturating_add(text_size(&v, limit));
            }
        }
        if size > limit {
            break;
        }
    }
    size
}

/// Where `data.chat_template` points: "" (the tokenizer's), an inline template (it contains
/// `{%`) or a file.
#[derive(Clone, Debug, PartialEq)]
pub enum TemplateSetting {
    Tokenizer,
    Inline(String),
    File(PathBuf),
}

impl TemplateSetting {
    /// `setting` as written in gaplab.toml; a relative file is relative to `base` (the
    /// workspace).
    pub fn parse(setting: &str, base: &Path) -> Self {
        if setting.trim().is_empty() {
            Self::Tokenizer
        } else if setting.contains("{%") {
            Self::Inline(setting.to_string())
        } else {
            let p = Path::new(setting);
            Self::File(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            })
        }
    }
}

/// Finds and compiles the chat template once, when conversational data first needs it (a
/// checkpoint's template that minijinja cannot compile never troubles standard data).
pub struct TemplateResolver<'a> {
    setting: TemplateSetting,
    tok: &'a Tok,
    compiled: Option<std::sync::Arc<ChatTemplate>>,
    /// What to do when the tokenizer has no template.
    hint: &'static str,
}

impl<'a> TemplateResolver<'a> {
    pub fn new(setting: TemplateSetting, tok: &'a Tok) -> Self {
        Self {
            setting,
            tok,
            compiled: None,
            hint: "set `data.chat_template` in gaplab.toml (a .jinja file or an inline template)",
        }
    }

    /// Replaces the advice given when the tokenizer has no template.
    pub fn with_hint(mut self, hint: &'static str) -> Self {
        self.hint = hint;
        self
    }

    /// The tokenizer whose special tokens the template gets.
    pub fn tok(&self) -> &'a Tok {
        self.tok
    }

    /// Whether the template was set explicitly (not taken from the tokenizer).
    pub fn is_explicit(&self) -> bool {
        self.setting != TemplateSetting::Tokenizer
    }

    /// The template; `file` is the data file that needs it (named in the error when there is
    /// none).
    pub fn get(&mut self, file: &Path) -> Result<std::sync::Arc<ChatTemplate>> {
        if let Some(t) = &self.compiled {
            return Ok(t.clone());
        }
        let t = match &self.setting {
            TemplateSetting::Tokenizer => match &self.tok.chat_template {
                Some(src) => ChatTemplate::for_tok(&src.text, src.origin.clone(), self.tok)?,
                None => bail!(
                    "{}: conversational data needs a chat template, and the tokenizer ({}) has none: {}",
                    file.display(),
                    self.tok.dir.display(),
                    self.hint
                ),
            },
            TemplateSetting::Inline(s) => {
                ChatTemplate::for_tok(s, "data.chat_template (inline)", self.tok)?
            }
            TemplateSetting::File(p) => {
                let text = std::fs::read_to_string(p).with_context(|| {
                    format!("data.chat_template: cannot read {}", p.display())
                })?;
                ChatTemplate::for_tok(&text, p.display().to_string(), self.tok)?
            }
        };
        let t = std::sync::Arc::new(t);
        self.compiled = Some(t.clone());
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn tpl(src: &str) -> ChatTemplate {
        ChatTemplate::new(src, "test", Some("<s>".into()), Some("</s>".into()), None).unwrap()
    }

    #[test]
    fn a_template_that_never_ends_is_stopped() {
        let m = [json!({"role": "user", "content": "hi ".repeat(40_000)})];
        for src in [
            "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
            "{% for a in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}",
            "{% macro g(n) %}{{ g(n) ~ g(n) }}{% endmacro %}{{ g(0) }}",
            // Found by tests/fuzz: tojson of a long repeated list of long messages ran for
            // minutes (gaplab's tojson was not charged).
            "{{ (messages * 100000) | tojson }}",
        ] {
            let started = std::time::Instant::now();
            let e = format!("{:#}", tpl(src).render(&m, true).unwrap_err());
            assert!(e.starts_with("chat template (test): "), "{e}");
            assert!(started.elapsed().as_secs() < 10, "{src}");
        }
        let e = format!("{:#}", tpl(PIECES_LOOP).render(&m, true).unwrap_err());
        assert!(e.contains("far more than a chat template needs"), "{e}");
        // A long conversation is far from the budget.
        let long: Vec<Json> = (0..200)
            .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "word ".repeat(2000)}))
            .collect();
        assert!(tpl(CHATML).render(&long, true).is_ok());
    }

    const PIECES_LOOP: &str =
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}";

    #[test]
    fn renders_chatml() {
        let t = tpl(CHATML);
        let m = [json!({"role": "user", "content": "hi"})];
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&m, false).unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n"
        );
    }

    #[test]
    fn special_tokens_python_methods_and_block_trimming() {
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'user' %}\n[INST] {{ m.content.strip() }} [/INST]\n  {% else %}\n{{ m['content'] | trim }}{{ eos_token }}\n  {% endif %}\n{% endfor %}";
        let t = tpl(src);
        let m = [
            json!({"role": "user", "content": "  a  "}),
            json!({"role": "assistant", "content": "b"}),
        ];
        assert_eq!(t.render(&m, false).unwrap(), "<s>[INST] a [/INST]\nb</s>\n");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = tpl("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok");
        let e = t
            .render(&[json!({"role": "assistant", "content": "x"})], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("first message must be from the user"), "{e}");
        assert!(e.contains("chat template (test)"), "{e}");
    }

    #[test]
    fn tools_is_none_and_tojson_is_not_html_escaped() {
        let t = tpl("{% if tools is none %}none{% endif %}|{{ messages[0] | tojson }}");
        let m = [json!({"role": "user", "content": "a<b & 'c' \\u003c é"})];
        assert_eq!(
            t.render(&m, false).unwrap(),
            "none|{\"content\": \"a<b & 'c' \\\\u003c é\", \"role\": \"user\"}"
        );
    }

    #[test]
    fn null_keys_are_dropped_and_strftime_now_exists() {
        let t = tpl("{% for m in messages %}{{ m.tool_calls is defined }}{% endfor %}|{{ strftime_now('%Y') | length }}");
        let m = [json!({"role": "assistant", "content": "x", "tool_calls": null})];
        assert_eq!(t.render(&m, false).unwrap(), "False|4");
    }

    #[test]
    fn syntax_errors_name_the_origin() {
        let e = ChatTemplate::new("{% for %}", "x.jinja", None, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.jinja: invalid chat template"), "{e}");
    }

    #[test]
    fn setting_is_tokenizer_inline_or_file() {
        let base = Path::new("/ws");
        assert_eq!(TemplateSetting::parse("", base), TemplateSetting::Tokenizer);
        assert_eq!(
            TemplateSetting::parse("{% for m in messages %}{% endfor %}", base),
            TemplateSetting::Inline("{% for m in messages %}{% endfor %}".into())
        );
        assert_eq!(
            TemplateSetting::parse("t/chatml.jinja", base),
            TemplateSetting::File("/ws/t/chatml.jinja".into())
        );
        assert_eq!(
            TemplateSetting::parse("/abs/c.jinja", base),
            TemplateSetting::File("/abs/c.jinja".into())
        );
    }
}
