//! The tokenizer of a checkpoint and its special tokens.
//!
//! Convention (see README), as TRL 1.16's DPOTrainer: for standard data, prompt ids =
//! encode(prompt, add_special_tokens = true) and response ids = encode(response,
//! add_special_tokens = false) + [eos]. Text a chat template rendered already holds the special
//! tokens the model wants, its end-of-turn included, so it is encoded with add_special_tokens =
//! false and nothing is appended (transformers' `apply_chat_template(tokenize=True)`).
//! log p(y|x) sums over response tokens.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::ModelConfig;

/// The text of a checkpoint's chat template and the file it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateSource {
    pub text: String,
    pub origin: String,
}

pub struct Tok {
    /// The folder the tokenizer was loaded from.
    pub dir: PathBuf,
    pub inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: Option<u32>,
    /// Tokens that end generation: eos plus any extra ids of config.json / generation_config.json.
    pub stop: Vec<u32>,
    /// The chat template: chat_template.jinja, else chat_template.json, else the
    /// `chat_template` of tokenizer_config.json (as transformers looks for it).
    pub chat_template: Option<TemplateSource>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v = super::parse_json(path, &text)?;
    Ok(Some(v))
}

/// A special token in tokenizer_config.json: a plain string or an AddedToken object.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

/// The `chat_template` of a tokenizer_config.json: a string, or a list of `{"name",
/// "template"}` of which the one named "default" is used.
pub fn template_in_config(v: &Value) -> std::result::Result<Option<String>, String> {
    match v.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let mut names = Vec::new();
            for t in list {
                let name = t.get("name").and_then(Value::as_str);
                let template = t.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some("default"), Some(tpl)) => return Ok(Some(tpl.to_string())),
                    (Some(n), Some(_)) => names.push(n.to_string()),
                    _ => {
                        return Err(
                            "`chat_template`: expected a list of {\"name\", \"template\"} objects"
                                .into(),
                        )
                    }
                }
            }
            Err(format!(
                "`chat_template` has no template named \"default\" (found: {})",
                names.join(", ")
            ))
        }
        Some(_) => {
            Err("`chat_template`: expected a string or a list of {\"name\", \"template\"}".into())
        }
    }
}

/// The chat template of the tokenizer folder `dir` (`tcfg`: its tokenizer_config.json).
fn chat_template(dir: &Path, tcfg: Option<&Value>) -> Result<Option<TemplateSource>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let text = std::fs::read_to_string(&jinja)
            .with_context(|| format!("cannot read {}", jinja.display()))?;
        return Ok(Some(TemplateSource {
            text,
            origin: jinja.display().to_string(),
        }));
    }
    let from = |path: PathBuf, v: Option<&Value>| -> Result<Option<TemplateSource>> {
        let Some(v) = v else { return Ok(None) };
        match template_in_config(v) {
            Ok(t) => Ok(t.map(|text| TemplateSource {
                text,
                origin: path.display().to_string(),
            })),
            Err(e) => bail!("{}: {e}", path.display()),
        }
    };
    let json = dir.join("chat_template.json");
    if let Some(t) = from(json.clone(), read_json(&json)?.as_ref())? {
        return Ok(Some(t));
    }
    from(dir.join("tokenizer_config.json"), tcfg)
}

impl Tok {
    pub fn load(dir: &Path, cfg: Option<&ModelConfig>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            bail!("{}: tokenizer.json missing", dir.display());
        }
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let tcfg = read_json(&dir.join("tokenizer_config.json"))?;
        let gen = read_json(&dir.join("generation_config.json"))?;
        let special = |key: &str| -> Result<Option<u32>> {
            let Some(text) = token_text(tcfg.as_ref().and_then(|c| c.get(key))) else {
                return Ok(None);
            };
            match inner.token_to_id(&text) {
                Some(id) => Ok(Some(id)),
                None => bail!(
                    "{}/tokenizer_config.json: `{key}` \"{text}\" is not in the vocabulary",
                    dir.display()
                ),
            }
        };
        let cfg_eos = cfg.map(|c| c.eos_token_ids.clone()).unwrap_or_default();
        let gen_eos = ids_of(gen.as_ref().and_then(|g| g.get("eos_token_id")));
        let eos = match special("eos_token")? {
            Some(id) => id,
            None => match cfg_eos.first().or(gen_eos.first()) {
                Some(&id) => id,
                None => bail!(
                    "{}: the tokenizer has no eos token (expected `eos_token` in tokenizer_config.json or `eos_token_id` in config.json)",
                    dir.display()
                ),
            },
        };
        let bos = special("bos_token")?.or(cfg.and_then(|c| c.bos_token_id));
        let pad = special("pad_token")?.or(cfg.and_then(|c| c.pad_token_id));
        let mut stop = vec![eos];
        for id in cfg_eos.into_iter().chain(gen_eos) {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        let chat_template = chat_template(dir, tcfg.as_ref())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            inner,
            bos,
            eos,
            pad,
            stop,
            chat_template,
        })
    }

    /// Ids of a prompt: with the tokenizer's special tokens (BOS) for plain text; without them
    /// for text a chat template rendered (it wrote the special tokens itself).
    pub fn encode_prompt_as(&self, prompt: &str, templated: bool) -> Result<Vec<u32>> {
        if templated {
            self.encode_rendered(prompt)
        } else {
            self.encode_prompt(prompt)
        }
    }

    /// Ids of text a chat template rendered: no special tokens added and no EOS appended, since
    /// the template wrote them (transformers' `apply_chat_template(tokenize=True)`).
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, false)
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Prompt ids, with the tokenizer's special tokens (BOS).
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode(prompt, true)
    }

    /// Response ids of standard (untemplated) data: no special tokens, EOS appended (TRL adds
    /// the EOS text to non-conversational responses).
    pub fn encode_response(&self, response: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(response, false)?;
        ids.push(self.eos);
        Ok(ids)
    }

    /// Text of `ids` with special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
    }

    /// The text each token adds to the decoded string (concatenated they give `decode(ids)`
    /// whenever the tokenizer decodes prefixes consistently).
    pub fn pieces(&self, ids: &[u32]) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut prev = String::new();
        for i in 0..ids.len() {
            let now = self.decode(&ids[..=i])?;
            let piece = match now.strip_prefix(prev.as_str()) {
                Some(rest) => rest.to_string(),
                None => self.decode(&ids[i..=i])?,
            };
            out.push(piece);
            prev = now;
        }
        Ok(out)
    }

    /// What a token shows as in a token-by-token view: its piece (leading space kept) in the
    /// context of the token before it, or its vocabulary entry for a special token, which
    /// decodes to nothing (`</s>`, `<|im_end|>`), and for a lone byte of a character.
    pub fn token_text(&self, prev: Option<u32>, id: u32) -> Result<String> {
        let piece = match prev {
            Some(p) => {
                let before = self.decode(&[p])?;
                let both = self.decode(&[p, id])?;
                match both.strip_prefix(before.as_str()) {
                    Some(rest) => rest.to_string(),
                    None => self.decode(&[id])?,
                }
            }
            None => self.decode(&[id])?,
        };
        // A byte of a multi-byte character decodes to U+FFFD alone: its vocabulary entry
        // (`<0xE2>`) says more.
        Ok(if piece.is_empty() || piece.contains('\u{fffd}') {
            self.inner.id_to_token(id).unwrap_or(piece)
        } else {
            piece
        })
    }

    /// Padding id for batches (its value never matters: padded positions are masked out).
    pub fn pad_id(&self) -> u32 {
        self.pad.unwrap_or(self.eos)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_from_string_or_named_list() {
        assert_eq!(
            template_in_config(&serde_json::json!({"chat_template": "abc"})),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            template_in_config(&serde_json::json!({"eos_token": "x"})),
            Ok(None)
        );
        let list = serde_json::json!({"chat_template": [
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"}
        ]});
        assert_eq!(template_in_config(&list), Ok(Some("D".into())));
        let no_default = serde_json::json!({"chat_template": [{"name": "rag", "template": "R"}]});
        assert!(template_in_config(&no_default)
            .unwrap_err()
            .contains("no template named \"default\" (found: rag)"));
        assert!(template_in_config(&serde_json::json!({"chat_template": 3})).is_err());
    }
}
