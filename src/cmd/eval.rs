//! `gaplab eval`: score preference pairs with a policy (and reference) under an objective.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use serde::Serialize;

use crate::data::{self, TokenizedPair};
use crate::model::SeqBatch;
use crate::model::{io, CausalLm, Tok};
use crate::objective::prefix::{self, PairTokenLogps, PrefixCurve};
use crate::objective::{self, Loss, Objective, PairStats};
use crate::train::reference_logps;

pub struct EvalArgs {
    pub model: PathBuf,
    pub reference: Option<PathBuf>,
    pub data: PathBuf,
    pub objective: Objective,
    pub batch_pairs: usize,
    pub device: Device,
    pub dtype: DType,
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

pub fn run(args: &EvalArgs) -> Result<EvalReport> {
    let obj = args.objective;
    if obj.loss == Loss::Sft {
        bail!("--objective: eval scores preference pairs (dpo, simpo or ipo)");
    }
    let (policy, tok) = io::load_dir(&args.model, &args.device, args.dtype)?;
    let reference: Option<CausalLm> = match &args.reference {
        Some(dir) if obj.loss.needs_reference() => {
            let r = io::load_model(dir, &args.device, args.dtype)?;
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
    let (stats, tokens) = score(&policy, reference.as_ref(), &tok, &pairs, &obj, args)?;
    Ok(report(&obj, stats, &tokens))
}

fn score(
    policy: &CausalLm,
    reference: Option<&CausalLm>,
    tok: &Tok,
    pairs: &[TokenizedPair],
    obj: &Objective,
    args: &EvalArgs,
) -> Result<(Vec<PairStats>, Vec<PairTokens>)> {
    let mut stats = Vec::with_capacity(pairs.len());
    let mut tokens = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(args.batch_pairs.max(1)) {
        let batch = SeqBatch::from_pairs(chunk, tok.pad_id(), &args.device)?;
        let pol = reference_logps(policy, &batch)?;
        // Without --ref the policy is its own reference.
        let refp = match (obj.loss.needs_reference(), reference) {
            (false, _) => None,
            (true, Some(r)) => Some(reference_logps(r, &batch)?),
            (true, None) => Some(pol.clone()),
        };
        let pol_t = candle_core::Tensor::new(pol.as_slice(), &args.device)?;
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
