//! The tokenized data of a run: train and eval pairs read, tokenized and fitted to the length
//! limits once per process, and the seeded order in which steps draw them.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::config::RunConfig;
use crate::data::chat::{ChatTemplate, TemplateResolver, TemplateSetting};
use crate::data::{self, FileKind, FileSummary, PreferencePair, Prompt, TokenizedPair};
use crate::model::Tok;
use crate::rng::Rng;

/// The tokenized data of a run.
#[derive(Clone)]
pub struct Dataset {
    pub train: Vec<TokenizedPair>,
    pub eval: Vec<TokenizedPair>,
    /// Prompt of every eval pair (default sampling prompts); rendered by the chat template for
    /// conversational data.
    pub eval_prompts: Vec<Prompt>,
    /// What fitting to the length limits did to the train and the eval pairs.
    pub train_fit: data::FitCounts,
    pub eval_fit: data::FitCounts,
    /// The format and size of every file read (train, then eval).
    pub files: Vec<FileSummary>,
    /// The chat template of conversational train data: `sample.prompts` are rendered with it,
    /// each as one user message with the generation prompt.
    pub chat: Option<Arc<ChatTemplate>>,
}

/// The last dataset loaded, by what it was loaded from: the variants of a workspace share
/// `[data]` and the tokenizer, so the second variant on UltraFeedback does not spend another
/// half minute rendering and tokenizing 61k pairs.
static LAST_DATASET: std::sync::Mutex<Option<(String, Dataset)>> = std::sync::Mutex::new(None);

/// What a dataset depends on: the `[data]` settings, the workspace, the tokenizer files and
/// every data file's size and modification time.
fn dataset_key(cfg: &RunConfig, tok: &Tok, vocab: usize) -> Result<String> {
    let mut key = format!(
        "{}\n{}\n{}\n{vocab}\n",
        toml::to_string(&cfg.data)?,
        cfg.workspace.display(),
        tok.dir.display()
    );
    let mut stamp = |p: &Path| {
        if let Ok(m) = std::fs::metadata(p) {
            key.push_str(&format!(
                "{} {} {:?}\n",
                p.display(),
                m.len(),
                m.modified().ok()
            ));
        }
    };
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "chat_template.json",
    ] {
        stamp(&tok.dir.join(f));
    }
    if let TemplateSetting::File(p) =
        TemplateSetting::parse(&cfg.data.chat_template, &cfg.workspace)
    {
        stamp(&p);
    }
    for setting in std::iter::once(&cfg.data.train).chain(&cfg.data.eval) {
        for f in data::source_files(setting).unwrap_or_default() {
            stamp(&f);
        }
    }
    Ok(key)
}

/// Reads, tokenizes and length-limits the train and eval pairs of `cfg` (or reuses the last
/// dataset when nothing it came from changed).
pub fn load_dataset(cfg: &RunConfig, tok: &Tok, vocab: usize) -> Result<Dataset> {
    let key = dataset_key(cfg, tok, vocab)?;
    if let Some((k, d)) = LAST_DATASET
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        if *k == key {
            return Ok(d.clone());
        }
    }
    let d = read_dataset(cfg, tok, vocab)?;
    *LAST_DATASET.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, d.clone()));
    Ok(d)
}

fn read_dataset(cfg: &RunConfig, tok: &Tok, vocab: usize) -> Result<Dataset> {
    let limits = cfg.data.length_limits();
    let fmt = cfg.data.data_format();
    let mut templates = TemplateResolver::new(
        TemplateSetting::parse(&cfg.data.chat_template, &cfg.workspace),
        tok,
    );
    if templates.is_explicit() {
        // A template set in gaplab.toml must be valid whatever the data.
        templates.get(&cfg.data.train)?;
    }
    let mut files = Vec::new();
    // A setting may be a glob over shards: their pairs are concatenated in file-name order.
    let mut read = |setting: &Path| -> Result<(Vec<Prompt>, Vec<TokenizedPair>)> {
        let (mut prompts, mut tokenized) = (Vec::new(), Vec::new());
        for path in data::source_files(setting)? {
            let (pairs, summary) = data::load_pairs(&path, &fmt, &mut templates)?;
            tokenized.extend(data::tokenize_pairs(tok, &pairs, &path, vocab)?);
            prompts.extend(pairs.iter().map(PreferencePair::prompt));
            files.push(summary);
        }
        Ok((prompts, tokenized))
    };
    let (train_prompts, mut train) = read(&cfg.data.train)?;
    let (mut eval_prompts, mut eval) = match &cfg.data.eval {
        Some(p) => read(p)?,
        None if cfg.data.eval_holdout > 0 => {
            let n = cfg.data.eval_holdout;
            if n >= train.len() {
                bail!(
                    "data.eval_holdout: {n} held-out pairs leave nothing of the {} in {}",
                    train.len(),
                    cfg.data.train.display()
                );
            }
            let eval = train.split_off(train.len() - n);
            (train_prompts[train_prompts.len() - n..].to_vec(), eval)
        }
        None => (vec![], vec![]),
    };
    let chat = match files[0].kind {
        FileKind::Conversational { .. } => Some(templates.get(&cfg.data.train)?),
        FileKind::Standard => None,
    };
    // Dropped pairs go before any index is drawn, so the order stays a function of the seed.
    let (train_fit, _) = data::fit_pairs(&mut train, limits, tok.bos);
    if train.is_empty() {
        bail!(
            "{}: all {} train pairs are longer than data.max_len ({}) even with their prompts cut to data.max_prompt_len ({}, {}), and data.overlong = \"drop\" leaves them out; raise the limits or set data.overlong = \"truncate\"",
            cfg.data.train.display(),
            train_fit.pairs,
            limits.max_len,
            limits.max_prompt_len,
            limits.prompt_truncation
        );
    }
    let (eval_fit, kept) = data::fit_pairs(&mut eval, limits, tok.bos);
    let mut keep = kept.iter();
    eval_prompts.retain(|_| *keep.next().unwrap_or(&true));
    Ok(Dataset {
        train,
        eval,
        eval_prompts,
        train_fit,
        eval_fit,
        files,
        chat,
    })
}

/// The `per` pair indices of step `step` (0-based): consecutive positions of an endless stream
/// of epochs, each a shuffle seeded by `seed` and the epoch. It depends on nothing but the seed
/// and the step, so every variant sees the same order and a resumed run continues it exactly.
pub fn stream_indices(n: usize, per: usize, seed: u64, step: usize) -> Vec<usize> {
    let mut orders: Vec<(usize, Vec<usize>)> = Vec::new();
    (step * per..(step + 1) * per)
        .map(|pos| {
            let epoch = pos / n;
            let at = match orders.iter().position(|o| o.0 == epoch) {
                Some(at) => at,
                None => {
                    let mut v: Vec<usize> = (0..n).collect();
                    Rng::new(seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                        .shuffle(&mut v);
                    orders.push((epoch, v));
                    orders.len() - 1
                }
            };
            orders[at].1[pos % n]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_is_a_permutation_and_steps_continue_it() {
        let (n, per, seed) = (5, 2, 7);
        // Steps 0..5 cover positions 0..10: two whole epochs.
        let all: Vec<usize> = (0..5)
            .flat_map(|s| stream_indices(n, per, seed, s))
            .collect();
        for epoch in all.chunks(n) {
            let mut e = epoch.to_vec();
            e.sort();
            assert_eq!(e, (0..n).collect::<Vec<_>>());
        }
        assert_ne!(all[..n], all[n..], "each epoch has its own shuffle");
        // A step spanning an epoch boundary takes the end of one order and the start of the next.
        assert_eq!(stream_indices(n, 3, seed, 1), [all[3], all[4], all[5]]);
    }

    #[test]
    fn the_order_depends_only_on_the_seed_and_the_step() {
        assert_eq!(stream_indices(9, 4, 1, 3), stream_indices(9, 4, 1, 3));
        assert_ne!(
            (0..3)
                .map(|s| stream_indices(9, 3, 1, s))
                .collect::<Vec<_>>(),
            (0..3)
                .map(|s| stream_indices(9, 3, 2, s))
                .collect::<Vec<_>>()
        );
    }
}
