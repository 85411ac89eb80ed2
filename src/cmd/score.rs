//! `gaplab score`: the reward a reward model gives each pair's chosen and rejected response
//! (and their k-token prefixes with `--k`).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use serde::Serialize;

use crate::data::TokenizedPair;
use crate::model::reward::RewardModel;
use crate::model::{device_label, Tok};
use crate::reward::inputs::{self, PairRewards};
use crate::reward::parse_k_list;

use super::{print, DeviceArgs};

/// Score preference pairs with a reward model: the reward of each pair's chosen and rejected
/// response, and of their first k tokens with --k.
#[derive(clap::Args, Clone, Debug)]
pub struct ScoreArgs {
    /// Reward-model folder: a Hugging Face Llama/Qwen2/Mistral ForSequenceClassification
    /// checkpoint with num_labels 1.
    #[arg(long)]
    pub reward_model: PathBuf,
    /// Preference file (JSONL or Parquet, standard or conversational; a glob reads shards),
    /// tokenized with the reward model's own tokenizer and chat template.
    #[arg(long)]
    pub data: PathBuf,
    /// Response prefix lengths in the reward model's tokens, increasing (e.g. 1,2,4,8); a
    /// response shorter than k is scored whole.
    #[arg(long)]
    pub k: Option<String>,
    /// One JSON object per pair instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// A reward model and its tokenizer loaded for a command (`--reward-model`), with what a user
/// should know about it (printed to stderr: unused tensors, pad == eos).
pub fn load_reward_model(dir: &Path, device: &Device, dtype: DType) -> Result<(RewardModel, Tok)> {
    let (rm, tok, summary) = RewardModel::load_checked(dir, device, dtype)
        .map_err(|e| anyhow::anyhow!("--reward-model: {e:#}"))?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(note) = pad_note(&rm) {
        eprintln!("note: {}: {note}", dir.display());
    }
    Ok((rm, tok))
}

/// What a pad id equal to an EOS id means for the scores, or None.
pub fn pad_note(rm: &RewardModel) -> Option<String> {
    let pad = rm.pad_token_id()?;
    rm.cfg.eos_token_ids.contains(&pad).then(|| {
        format!(
            "pad_token_id {pad} is also an EOS id: as transformers does, a response that ends with EOS is scored at the token before its EOS"
        )
    })
}

/// `--batch-size` checked.
pub fn batch_size(n: usize) -> Result<usize> {
    if n == 0 {
        bail!("--batch-size: expected at least 1, got 0");
    }
    Ok(n)
}

/// Each pair's longest sequence fits the reward model's positions; else an error naming the
/// file and the pair.
pub fn check_lengths(pairs: &[TokenizedPair], data: &Path, max: usize) -> Result<()> {
    for (i, p) in pairs.iter().enumerate() {
        for (side, r) in [("chosen", &p.chosen), ("rejected", &p.rejected)] {
            let n = p.prompt.len() + r.len();
            if n > max {
                bail!(
                    "{}: pair {}: prompt + {side} is {n} tokens, more than the reward model's max_position_embeddings ({max})",
                    data.display(),
                    i + 1
                );
            }
        }
    }
    Ok(())
}

/// The pairs of `--data` as reward-model inputs, checked against its positions.
pub fn load_pairs(data: &Path, rm: &RewardModel, tok: &Tok) -> Result<Vec<TokenizedPair>> {
    let (pairs, _) = inputs::load_rm_pairs(data, tok, rm.cfg.vocab_size)?;
    check_lengths(&pairs, data, rm.cfg.max_position_embeddings)?;
    Ok(pairs)
}

#[derive(Serialize)]
struct PrefixLine {
    k: usize,
    chosen: f64,
    rejected: f64,
}

#[derive(Serialize)]
struct PairLine {
    pair: usize,
    prompt_tokens: usize,
    chosen_tokens: usize,
    rejected_tokens: usize,
    chosen: f64,
    rejected: f64,
    margin: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prefix: Vec<PrefixLine>,
}

fn lines(pairs: &[TokenizedPair], rewards: &[PairRewards], ks: &[usize]) -> Vec<PairLine> {
    pairs
        .iter()
        .zip(rewards)
        .enumerate()
        .map(|(i, (p, r))| PairLine {
            pair: i + 1,
            prompt_tokens: p.prompt.len(),
            chosen_tokens: r.chosen_len,
            rejected_tokens: r.rejected_len,
            chosen: r.chosen,
            rejected: r.rejected,
            margin: r.chosen - r.rejected,
            prefix: ks
                .iter()
                .enumerate()
                .map(|(j, &k)| PrefixLine {
                    k,
                    chosen: r.chosen_prefix[j],
                    rejected: r.rejected_prefix[j],
                })
                .collect(),
        })
        .collect()
}

/// The readable table: one row per pair, chosen/rejected at each k after the full rewards.
fn table(lines: &[PairLine], ks: &[usize]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>5} {:>7} {:>7} {:>10} {:>10} {:>10}",
        "pair", "|y_w|", "|y_l|", "chosen", "rejected", "margin"
    );
    for k in ks {
        let _ = write!(
            out,
            " {:>10} {:>10}",
            format!("chosen@{k}"),
            format!("rejected@{k}")
        );
    }
    out.push('\n');
    for l in lines {
        let _ = write!(
            out,
            "{:>5} {:>7} {:>7} {:>10.4} {:>10.4} {:>10.4}",
            l.pair, l.chosen_tokens, l.rejected_tokens, l.chosen, l.rejected, l.margin
        );
        for p in &l.prefix {
            let _ = write!(out, " {:>10.4} {:>10.4}", p.chosen, p.rejected);
        }
        out.push('\n');
    }
    out
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let ks = match &args.k {
        Some(s) => parse_k_list(s, "--k")?,
        None => vec![],
    };
    let bs = batch_size(args.batch_size)?;
    let (device, dtype) = args.device.resolve()?;
    let (rm, tok) = load_reward_model(&args.reward_model, &device, dtype)?;
    let pairs = load_pairs(&args.data, &rm, &tok)?;
    let rewards = inputs::score_pairs(&rm, &pairs, &ks, bs)?;
    let lines = lines(&pairs, &rewards, &ks);
    if args.json {
        let mut out = String::new();
        for l in &lines {
            out.push_str(&serde_json::to_string(l)?);
            out.push('\n');
        }
        print(&out);
    } else {
        let head = format!(
            "reward model {} ({}, {}) on {}: {} pairs (lengths in the reward model's tokens, EOS included)\n",
            args.reward_model.display(),
            rm.arch_name(),
            device_label(&device, dtype),
            args.data.display(),
            pairs.len()
        );
        print(&(head + &table(&lines, &ks)));
    }
    Ok(())
}
