//! What a reward model is given: preference files tokenized with the reward model's own
//! tokenizer and chat template (gaplab's training convention), k-token prefixes of their
//! responses, and prompt files for generation.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use crate::data::chat::{ChatTemplate, TemplateResolver, TemplateSetting};
use crate::data::{self, DataFormat, FileSummary, Prompt, TokenizedPair};
use crate::model::reward::RewardModel;
use crate::model::Tok;

use super::score_unique;

/// The pairs of a preference file (JSONL or Parquet, standard or conversational; a glob over
/// shards reads them all) as reward-model inputs: standard data as gaplab tokenizes it
/// (prompt with BOS, each response + EOS), conversational data rendered by the reward model's
/// own chat template over prompt + response, split where TRL splits it.
pub fn load_rm_pairs(
    path: &Path,
    rm_tok: &Tok,
    vocab_size: usize,
) -> Result<(Vec<TokenizedPair>, Vec<FileSummary>)> {
    let mut templates = TemplateResolver::new(TemplateSetting::Tokenizer, rm_tok).with_hint(
        "a reward model scores conversations through its own chat template (chat_template.jinja or `chat_template` in tokenizer_config.json)",
    );
    let (mut out, mut files) = (Vec::new(), Vec::new());
    for file in data::source_files(path)? {
        let (pairs, summary) = data::load_pairs(&file, &DataFormat::default(), &mut templates)?;
        out.extend(data::tokenize_pairs(rm_tok, &pairs, &file, vocab_size)?);
        files.push(summary);
    }
    Ok((out, files))
}

/// `prompt` + the first `k` ids of `response` (all of it when `k` is None or ≥ its length).
pub fn prefix_seq(prompt: &[u32], response: &[u32], k: Option<usize>) -> Vec<u32> {
    let n = k.map_or(response.len(), |k| k.min(response.len()));
    let mut s = Vec::with_capacity(prompt.len() + n);
    s.extend_from_slice(prompt);
    s.extend_from_slice(&response[..n]);
    s
}

/// The rewards of one pair: of each k-prefix (in the order of the k list) and of the full
/// responses, with the responses' lengths in the reward model's tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct PairRewards {
    pub chosen_prefix: Vec<f64>,
    pub rejected_prefix: Vec<f64>,
    pub chosen: f64,
    pub rejected: f64,
    pub chosen_len: usize,
    pub rejected_len: usize,
}

/// Scores every pair's responses, full and at each k of `ks` (equal sequences are scored once).
pub fn score_pairs(
    rm: &RewardModel,
    pairs: &[TokenizedPair],
    ks: &[usize],
    batch_size: usize,
) -> Result<Vec<PairRewards>> {
    let per = 2 * (ks.len() + 1);
    let mut seqs = Vec::with_capacity(pairs.len() * per);
    for p in pairs {
        for resp in [&p.chosen, &p.rejected] {
            seqs.extend(ks.iter().map(|&k| prefix_seq(&p.prompt, resp, Some(k))));
            seqs.push(prefix_seq(&p.prompt, resp, None));
        }
    }
    let scores = score_unique(rm, &seqs, batch_size)?;
    let n = ks.len();
    Ok(scores
        .chunks(per)
        .zip(pairs)
        .map(|(c, p)| PairRewards {
            chosen_prefix: c[..n].to_vec(),
            chosen: c[n],
            rejected_prefix: c[n + 1..2 * n + 1].to_vec(),
            rejected: c[2 * n + 1],
            chosen_len: p.chosen.len(),
            rejected_len: p.rejected.len(),
        })
        .collect())
}

/// A prompt of a prompts file before a model's chat template is applied.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptSource {
    Text(String),
    Messages(Vec<Json>),
}

/// The prompts of FILE (JSONL or Parquet): each record's `prompt` field, a string or a list of
/// `{"role", "content"}` messages; a preference file with conversational `chosen`/`rejected`
/// and no `prompt` gives the messages they share (TRL's implicit prompt).
pub fn read_prompts(path: &Path) -> Result<Vec<PromptSource>> {
    let mut out = Vec::new();
    for (n, v) in data::read_records(path)? {
        let at = || data::location(path, n);
        let p = match (v.get("prompt"), v.get("chosen"), v.get("rejected")) {
            (Some(Json::String(s)), _, _) => PromptSource::Text(s.clone()),
            (Some(Json::Array(m)), _, _) => PromptSource::Messages(m.clone()),
            (None, Some(Json::Array(c)), Some(Json::Array(r))) => {
                let (prompt, _, _) =
                    data::extract_prompt(c, r).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
                PromptSource::Messages(prompt)
            }
            _ => bail!(
                "{}: expected a `prompt` field (a string, or a list of {{\"role\", \"content\"}} messages)",
                at()
            ),
        };
        out.push(p);
    }
    if out.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(out)
}

/// The prompt as model `tok` sees it: plain text as it is; messages rendered by its chat
/// template with the generation prompt.
pub fn render_prompt(tok: &Tok, p: &PromptSource, what: &str) -> Result<Prompt> {
    Ok(match p {
        PromptSource::Text(t) => Prompt {
            text: t.clone(),
            templated: false,
        },
        PromptSource::Messages(m) => {
            let src = tok.chat_template.as_ref().with_context(|| {
                format!(
                    "{what} ({}): chat prompts need a chat template and this tokenizer has none",
                    tok.dir.display()
                )
            })?;
            let tpl = ChatTemplate::for_tok(&src.text, src.origin.clone(), tok)?;
            Prompt {
                text: tpl.render(m, true)?,
                templated: true,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_keep_the_prompt_and_stop_at_the_response() {
        assert_eq!(prefix_seq(&[0, 5], &[7, 8, 1], Some(2)), [0, 5, 7, 8]);
        assert_eq!(prefix_seq(&[0, 5], &[7, 8, 1], Some(3)), [0, 5, 7, 8, 1]);
        assert_eq!(prefix_seq(&[0, 5], &[7, 8, 1], Some(9)), [0, 5, 7, 8, 1]);
        assert_eq!(prefix_seq(&[0], &[7, 1], None), [0, 7, 1]);
    }

    #[test]
    fn prompt_files_hold_strings_messages_or_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.jsonl");
        std::fs::write(
            &f,
            concat!(
                "{\"prompt\": \"hi\"}\n",
                "{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}]}\n",
                "{\"chosen\": [{\"role\": \"user\", \"content\": \"q2\"}, {\"role\": \"assistant\", \"content\": \"a\"}],",
                " \"rejected\": [{\"role\": \"user\", \"content\": \"q2\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n"
            ),
        )
        .unwrap();
        let p = read_prompts(&f).unwrap();
        assert_eq!(p[0], PromptSource::Text("hi".into()));
        assert!(matches!(&p[1], PromptSource::Messages(m) if m.len() == 1));
        assert!(matches!(&p[2], PromptSource::Messages(m) if m[0]["content"] == "q2"));
        std::fs::write(&f, "{\"question\": \"hi\"}\n").unwrap();
        let e = read_prompts(&f).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:1") && e.contains("`prompt`"), "{e}");
    }
}
