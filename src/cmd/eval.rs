//! `gaplab eval`: score preference pairs with a policy (and reference) under an objective.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use serde::Serialize;

use crate::config::range;
use crate::data::{self, TokenizedPair};
use crate::model::SeqBatch;
use crate::model::{io, CausalLm, Tok};
use crate::objective::prefix::{self, PairTokenLogps, PrefixCurve};
use crate::objective::{self, Loss, Objective, PairStats};
use crate::train::reference_logps;

use super::{check_flag, print, DeviceArgs};

/// Score preference pairs: log-probs, rewards, margins, loss and prefix diagnostics.
#[derive(clap::Args, Clone, Debug)]
#[command(mut_arg("dtype", |a| a.help(
    "f32, bf16 or f16 (weights and activations; log-probs are computed in f32)"
)))]
pub struct EvalArgs {
    /// Hugging Face checkpoint folder of the policy.
    #[arg(long)]
    pub model: PathBuf,
    /// Checkpoint folder of the reference model (DPO/IPO); default: the policy itself.
    #[arg(long = "ref")]
    pub reference: Option<PathBuf>,
    /// JSONL or Parquet file of pairs (or a quoted glob over shards): string fields
    /// prompt, chosen, rejected, or conversational (message lists, rendered with the
    /// model's chat template).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum)]
    pub objective: Loss,
    /// Default: 0.1 for dpo and ipo, 2.0 for simpo.
    #[arg(long)]
    pub beta: Option<f64>,
    /// SimPO's target margin (absolute, not gamma/beta).
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f64,
    /// Count only the first k = min(|chosen|, |rejected|) response tokens of each pair.
    #[arg(long)]
    pub poet: bool,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl EvalArgs {
    /// The objective the flags name, with beta's default for the loss; a value out of range
    /// is an error naming its flag.
    pub fn objective(&self) -> Result<Objective> {
        let loss = self.objective;
        let beta = self
            .beta
            .unwrap_or(if loss == Loss::Simpo { 2.0 } else { 0.1 });
        check_flag("beta", range::beta(beta))?;
        check_flag("gamma", range::gamma(self.gamma))?;
        Ok(Objective {
            loss,
            beta,
            gamma: self.gamma,
            poet: self.poet,
        })
    }
}

/// A pair as `--json` prints it.
#[derive(Serialize)]
struct JsonPair {
    chosen_logps: f64,
    rejected_logps: f64,
    ref_chosen_logps: Option<f64>,
    ref_rejected_logps: Option<f64>,
    chosen_tokens: usize,
    rejected_tokens: usize,
    margin: f64,
    loss: f64,
}

#[derive(Serialize)]
pub struct EvalReport {
    pub objective: Loss,
    pub beta: f64,
    pub gamma: f64,
    pub poet: bool,
    pub loss: f64,
    pub reward_accuracy: f64,
    pub reward_margin: f64,
    #[serde(serialize_with = "ser_pairs")]
    pub pairs: Vec<PairStats>,
    /// Prefix margin and accuracy at j = 1, 2, 4, ...
    pub prefix: PrefixCurve,
}

fn ser_pairs<S: serde::Serializer>(pairs: &[PairStats], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(pairs.len()))?;
    for p in pairs {
        seq.serialize_element(&JsonPair {
            chosen_logps: p.chosen_logps,
            rejected_logps: p.rejected_logps,
            ref_chosen_logps: p.ref_chosen_logps,
            ref_rejected_logps: p.ref_rejected_logps,
            chosen_tokens: p.chosen_tokens,
            rejected_tokens: p.rejected_tokens,
            margin: p.margin,
            loss: p.loss,
        })?;
    }
    seq.end()
}

/// Per-token log-probs of every pair, kept for the prefix diagnostics.
struct PairTokens {
    chosen: Vec<f32>,
    rejected: Vec<f32>,
    ref_chosen: Option<Vec<f32>>,
    ref_rejected: Option<Vec<f32>>,
}

/// Scores the pairs and prints the report (a table, or JSON with `--json`).
pub fn run(args: &EvalArgs) -> Result<()> {
    let obj = args.objective()?;
    let (device, dtype) = args.device.resolve()?;
    let report = evaluate(args, &obj, &device, dtype)?;
    if args.json {
        print(&(serde_json::to_string(&report)? + "\n"));
    } else {
        print(&render(&report));
    }
    Ok(())
}

/// The report of `obj` on the pairs of `args.data`.
pub fn evaluate(
    args: &EvalArgs,
    obj: &Objective,
    device: &Device,
    dtype: DType,
) -> Result<EvalReport> {
    if obj.loss == Loss::Sft {
        bail!("--objective: eval scores preference pairs (dpo, simpo or ipo)");
    }
    let (policy, tok) = io::load_dir(&args.model, device, dtype)?;
    let reference: Option<CausalLm> = match &args.reference {
        Some(dir) if obj.loss.needs_reference() => {
            let r = io::load_model(dir, device, dtype)?;
            if r.cfg.vocab_size != policy.cfg.vocab_size {
                bail!(
                    "{}: vocab_size {} differs from the policy's {}",
                    dir.display(),
                    r.cfg.vocab_size,
                    policy.cfg.vocab_size
                );
            }
            Some(r)
        }
        _ => None,
    };
    // Standard or conversational (the format detected from the first row, default field
    // names); conversations are rendered with the model's chat template.
    let mut templates = data::chat::TemplateResolver::new(
        data::chat::TemplateSetting::Tokenizer,
        &tok,
    )
    .with_hint(
        "add a `chat_template` to its tokenizer_config.json (or a chat_template.jinja beside it)",
    );
    // JSONL or Parquet, one file or a glob over shards.
    let mut pairs = Vec::new();
    for path in data::source_files(&args.data)? {
        let (p, _) = data::load_pairs(&path, &data::DataFormat::default(), &mut templates)?;
        pairs.extend(data::tokenize_pairs(
            &tok,
            &p,
            &path,
            policy.cfg.vocab_size,
        )?);
    }
    let (stats, tokens) = score(
        &policy,
        reference.as_ref(),
        &tok,
        &pairs,
        obj,
        args.batch_size,
        device,
    )?;
    Ok(report(obj, stats, &tokens))
}

/// Per-pair statistics and per-token log-probs under the policy and the reference, scored in
/// batches of `batch_pairs` pairs.
fn score(
    policy: &CausalLm,
    reference: Option<&CausalLm>,
    tok: &Tok,
    pairs: &[TokenizedPair],
    obj: &Objective,
    batch_pairs: usize,
    device: &Device,
) -> Result<(Vec<PairStats>, Vec<PairTokens>)> {
    let mut stats = Vec::with_capacity(pairs.len());
    let mut tokens = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_pairs.max(1)) {
        let batch = SeqBatch::from_pairs(chunk, tok.pad_id(), device)?;
        let pol = reference_logps(policy, &batch)?;
        // Without --ref the policy is its own reference.
        let refp = match (obj.loss.needs_reference(), reference) {
            (false, _) => None,
            (true, Some(r)) => Some(reference_logps(r, &batch)?),
            (true, None) => Some(pol.clone()),
        };
        let pol_t = candle_core::Tensor::new(pol.as_slice(), device)?;
        let out = objective::preference_loss(obj, &batch, &pol_t, refp.as_deref())?;
        stats.extend(out.pairs);
        let rows = batch.split(&pol);
        let ref_rows = refp.as_ref().map(|r| batch.split(r));
        let b = chunk.len();
        for i in 0..b {
            tokens.push(PairTokens {
                chosen: rows[i].to_vec(),
                rejected: rows[b + i].to_vec(),
                ref_chosen: ref_rows.as_ref().map(|r| r[i].to_vec()),
                ref_rejected: ref_rows.as_ref().map(|r| r[b + i].to_vec()),
            });
        }
    }
    Ok((stats, tokens))
}

fn report(obj: &Objective, pairs: Vec<PairStats>, tokens: &[PairTokens]) -> EvalReport {
    let n = pairs.len() as f64;
    let views: Vec<PairTokenLogps> = tokens
        .iter()
        .map(|t| PairTokenLogps {
            chosen: &t.chosen,
            rejected: &t.rejected,
            ref_chosen: t.ref_chosen.as_deref(),
            ref_rejected: t.ref_rejected.as_deref(),
        })
        .collect();
    let max_k = views.iter().map(|v| v.k()).max().unwrap_or(0);
    let curve = prefix::prefix_curve(obj, &views, &prefix::prefix_lengths(max_k));
    EvalReport {
        objective: obj.loss,
        beta: obj.beta,
        gamma: obj.gamma,
        poet: obj.poet,
        loss: pairs.iter().map(|p| p.loss).sum::<f64>() / n,
        reward_accuracy: pairs
            .iter()
            .filter(|p| p.reward_chosen > p.reward_rejected)
            .count() as f64
            / n,
        reward_margin: pairs.iter().map(|p| p.margin).sum::<f64>() / n,
        pairs,
        prefix: curve,
    }
}

/// The human-readable report.
pub fn render(r: &EvalReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}{}  beta {}{}  ·  {} pairs",
        r.objective,
        if r.poet { "+poet" } else { "" },
        r.beta,
        if r.objective == Loss::Simpo {
            format!("  gamma {}", r.gamma)
        } else {
            String::new()
        },
        r.pairs.len()
    );
    let _ = writeln!(
        s,
        "loss {:.6}  reward accuracy {:.3}  reward margin {:+.6}",
        r.loss, r.reward_accuracy, r.reward_margin
    );
    let _ = writeln!(
        s,
        "\n{:>5} {:>12} {:>12} {:>12} {:>12} {:>9} {:>11} {:>10}",
        "pair", "logps/ch", "logps/rej", "ref/ch", "ref/rej", "tokens", "margin", "loss"
    );
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    for (i, p) in r.pairs.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:>5} {:>12.4} {:>12.4} {:>12} {:>12} {:>9} {:>+11.5} {:>10.5}",
            i + 1,
            p.chosen_logps,
            p.rejected_logps,
            opt(p.ref_chosen_logps),
            opt(p.ref_rejected_logps),
            format!("{}/{}", p.chosen_tokens, p.rejected_tokens),
            p.margin,
            p.loss
        );
    }
    if !r.prefix.j.is_empty() {
        let _ = writeln!(s, "\nprefix diagnostics (j = response tokens counted)");
        let _ = writeln!(
            s,
            "{:>6} {:>12} {:>10} {:>7}",
            "j", "margin", "accuracy", "pairs"
        );
        for i in 0..r.prefix.j.len() {
            let _ = writeln!(
                s,
                "{:>6} {:>+12.5} {:>10.3} {:>7}",
                r.prefix.j[i], r.prefix.margin[i], r.prefix.accuracy[i], r.prefix.pairs[i]
            );
        }
    }
    s
}
