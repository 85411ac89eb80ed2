//! The tokenizer of a checkpoint and its special tokens.
//!
//! Convention (see README): prompt ids = encode(prompt, add_special_tokens = true), response ids
//! = encode(response, add_special_tokens = false) + [eos]; log p(y|x) sums over response tokens.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::ModelConfig;

pub struct Tok {
    pub inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: Option<u32>,
    /// Tokens that end generation: eos plus any extra ids of config.json / generation_config.json.
    pub stop: Vec<u32>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}:{}: invalid JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
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
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            stop,
        })
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

    /// Response ids: no special tokens, EOS appended.
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

    /// Padding id for batches (its value never matters: padded positions are masked out).
    pub fn pad_id(&self) -> u32 {
        self.pad.unwrap_or(self.eos)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
