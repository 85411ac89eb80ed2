//! `gaplab eval`: score preference pairs with a policy (and reference) under an objective.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use serde::Serialize;

use crate::config::{range, TrainSettings};
use crate::data::{self, TokenizedPair};
use crate::model::SeqBatch;
use crate::model::{io, CausalLm, Tok};
use crate::objective::prefix::{self, PairTokenLogps, PrefixCurve};
use crate::objective::tokens::PoetMode;
use crate::objective::{self, FDivergenceType, Loss, LossList, Objective, PairStats, TokenExtras};
use crate::train::{log_sum_sq_probs, reference_logps};

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
    /// PEFT LoRA adapter folder applied to --model: the policy is base + adapter.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Checkpoint folder of the reference model (DPO/IPO); default: the policy itself, or with
    /// --adapter the base with the adapter off.
    #[arg(long = "ref")]
    pub reference: Option<PathBuf>,
    /// JSONL or Parquet file of pairs (or a quoted glob over shards): string fields
    /// prompt, chosen, rejected, or conversational (message lists, rendered with the
    /// model's chat template).
    #[arg(long)]
    pub data: PathBuf,
    /// A loss or a comma-separated list of losses (TRL's loss_type): sigmoid (dpo), hinge,
    /// ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero,
    /// apo_down, discopop, sigmoid_norm, sft; or one of simpo, cpo, slic, orpo, alphapo.
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    pub objective: Vec<Loss>,
    /// Weights of the listed losses (TRL's loss_weights); default 1 each.
    #[arg(long, value_delimiter = ',')]
    pub loss_weights: Vec<f64>,
    /// Default: 2.0 for simpo and alphapo, 0.1 otherwise (orpo: the paper's lambda).
    #[arg(long)]
    pub beta: Option<f64>,
    /// SimPO's and AlphaPO's target margin (absolute, not gamma/beta: TRL's simpo_gamma).
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f64,
    /// POET: count only each pair's first k = min(|chosen|, |rejected|) response tokens;
    /// or a rule: min, ratio_k, ratio_own, fixed.
    #[arg(long, num_args = 0..=1, default_missing_value = "min", value_name = "RULE")]
    pub poet: Option<String>,
    /// r of --poet ratio_k / ratio_own.
    #[arg(long, default_value_t = 0.5)]
    pub poet_ratio: f64,
    /// N of --poet fixed.
    #[arg(long, default_value_t = 32)]
    pub poet_tokens: usize,
    /// A response POET cuts still counts its end (EOS).
    #[arg(long)]
    pub keep_eos: bool,
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// reverse_kl, forward_kl, js_divergence or alpha_divergence (TRL's f_divergence_type).
    #[arg(long, default_value = "reverse_kl")]
    pub f_divergence: String,
    /// TRL's f_alpha_divergence_coef.
    #[arg(long, default_value_t = 0.5)]
    pub f_alpha: f64,
    /// LD-DPO: tokens past min(|chosen|, |rejected|) weigh this much.
    #[arg(long)]
    pub ld_alpha: Option<f64>,
    /// WPO weighting (TRL's use_weighting).
    #[arg(long)]
    pub wpo: bool,
    #[arg(long, default_value_t = 0.05)]
    pub discopop_tau: f64,
    /// NLL weight of cpo and slic (TRL's cpo_alpha).
    #[arg(long, default_value_t = 1.0)]
    pub cpo_alpha: f64,
    /// AlphaPO's reward shaping (TRL CPOConfig's alpha).
    #[arg(long, default_value_t = 0.0)]
    pub alpha: f64,
    /// R-DPO's length regulariser.
    #[arg(long, default_value_t = 0.0)]
    pub rdpo_alpha: f64,
    /// Adds sft with this weight (RPO).
    #[arg(long)]
    pub rpo_alpha: Option<f64>,
    /// SamPO: the same number of tokens, sampled, from each response.
    #[arg(long)]
    pub sampo: bool,
    /// Token t weighs DECAY^t.
    #[arg(long)]
    pub position_decay: Option<f64>,
    /// Seed of SamPO's samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
    /// or flags that contradict each other are an error naming the flag.
    pub fn objective(&self) -> Result<Objective> {
        let losses = LossList(self.objective.clone());
        let beta = self.beta.unwrap_or(
            if matches!(losses.0.first(), Some(Loss::Simpo | Loss::Alphapo)) {
                2.0
            } else {
                0.1
            },
        );
        check_flag("beta", range::beta(beta))?;
        check_flag("gamma", range::gamma(self.gamma))?;
        let poet: PoetMode = match &self.poet {
            None => PoetMode::Off,
            Some(rule) => serde_json::from_value(serde_json::Value::String(rule.clone()))
                .map_err(|e| anyhow::anyhow!("--poet: {e}"))?,
        };
        let f_divergence_type = FDivergenceType::from_name(&self.f_divergence)?;
        let settings = TrainSettings {
            objective: losses,
            loss_weights: self.loss_weights.clone(),
            rpo_alpha: self.rpo_alpha,
            beta,
            gamma: self.gamma,
            poet,
            poet_ratio: self.poet_ratio,
            poet_tokens: self.poet_tokens,
            keep_eos: self.keep_eos,
            label_smoothing: self.label_smoothing,
            f_divergence_type,
            f_alpha_divergence_coef: self.f_alpha,
            ld_alpha: self.ld_alpha,
            use_weighting: self.wpo,
            discopop_tau: self.discopop_tau,
            cpo_alpha: self.cpo_alpha,
            alpha: self.alpha,
            rdpo_alpha: self.rdpo_alpha,
            sampo: self.sampo,
            position_decay: self.position_decay,
            seed: self.seed,
            ..Default::default()
        };
        // `sft` alone is scored on pairs, as TRL's DPOTrainer does (a workspace makes it a stage).
        if let Some((field, msg)) = settings.objective_problems().into_iter().next() {
            bail!("--{}: {msg}", flag_of(field));
        }
        Ok(settings.objective())
    }
}

/// The flag of a `[train]` objective setting.
fn flag_of(field: &str) -> String {
    match field {
        "f_divergence_type" => "f-divergence".into(),
        "f_alpha_divergence_coef" => "f-alpha".into(),
        "use_weighting" => "wpo".into(),
        f => f.replace('_', "-"),
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
    pub objective: LossList,
    pub beta: f64,
    pub gamma: f64,
    pub poet: bool,
    /// The mean of the batches' losses, each weighted by its pairs (TRL's evaluation loop).
    pub loss: f64,
    /// Means over all pairs with TRL's names (and `nll_loss` where the loss has an NLL term).
    pub metrics: std::collections::BTreeMap<String, f64>,
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
    if args.batch_size <= 1 {
        if let Some(l) = obj.mixture.iter().find(|m| m.0.sorts_batch()) {
            eprintln!(
                "warning: {} sorts within the batch; with --batch-size 1 nothing is sorted",
                l.0
            );
        }
    }
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
    let (policy, tok) = io::load_with_adapter(&args.model, args.adapter.as_deref(), device, dtype)?;
    let reference = match obj.primary().is_reference_free() {
        true => None,
        false => load_reference(args, &policy, device, dtype)?,
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
    let obj = &Objective {
        eos: Some(tok.eos),
        ..obj.clone()
    };
    let scored = score(
        &policy,
        reference.as_ref(),
        &tok,
        &pairs,
        obj,
        args.batch_size,
        device,
    )?;
    Ok(report(obj, scored))
}

/// The reference: `--ref`, else the base with the adapter off when the policy has one (the
/// same weights, not a second copy), else none (the policy is its own reference).
fn load_reference(
    args: &EvalArgs,
    policy: &CausalLm,
    device: &Device,
    dtype: DType,
) -> Result<Option<CausalLm>> {
    let Some(dir) = &args.reference else {
        return match policy.adapters() {
            Some(_) => Ok(Some(policy.without_adapters()?)),
            None => Ok(None),
        };
    };
    let r = io::load_model(dir, device, dtype)?;
    if r.cfg.vocab_size != policy.cfg.vocab_size {
        bail!(
            "{}: vocab_size {} differs from the policy's {}",
            dir.display(),
            r.cfg.vocab_size,
            policy.cfg.vocab_size
        );
    }
    Ok(Some(r))
}

/// What scoring the pairs gave.
struct Scored {
    pairs: Vec<PairStats>,
    tokens: Vec<PairTokens>,
    /// Σ over batches of the batch's loss times its pairs.
    loss_sum: f64,
    /// The same for the mean chosen NLL, when the loss has an NLL term.
    nll_sum: Option<f64>,
}

/// Per-pair statistics, per-token log-probs under the policy and the reference, and the
/// batches' losses, scored in batches of `batch_pairs` pairs.
fn score(
    policy: &CausalLm,
    reference: Option<&CausalLm>,
    tok: &Tok,
    pairs: &[TokenizedPair],
    obj: &Objective,
    batch_pairs: usize,
    device: &Device,
) -> Result<Scored> {
    let mut out = Scored {
        pairs: Vec::with_capacity(pairs.len()),
        tokens: Vec::with_capacity(pairs.len()),
        loss_sum: 0.0,
        nll_sum: None,
    };
    for chunk in pairs.chunks(batch_pairs.max(1)) {
        let batch = SeqBatch::from_pairs(chunk, tok.pad_id(), device)?;
        let scores = policy.response_scores(&batch)?;
        let pol: Vec<f32> = scores.logps.to_dtype(DType::F32)?.to_vec1()?;
        let log_sum_sq = match obj.use_weighting {
            true => Some(log_sum_sq_probs(&scores.logits)?),
            false => None,
        };
        // Without --ref the policy is its own reference.
        let refp = match (obj.primary().is_reference_free(), reference) {
            (true, _) => None,
            (false, Some(r)) => Some(reference_logps(r, &batch)?),
            (false, None) => Some(pol.clone()),
        };
        let pol_t = candle_core::Tensor::new(pol.as_slice(), device)?;
        let extras = TokenExtras {
            log_sum_sq: log_sum_sq.as_deref(),
        };
        let res = objective::pair_loss(obj, &batch, &pol_t, refp.as_deref(), extras)?;
        let b = chunk.len();
        out.loss_sum += res.loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * b as f64;
        if let Some(nll) = res.nll_loss {
            *out.nll_sum.get_or_insert(0.0) += nll * b as f64;
        }
        out.pairs.extend(res.pairs);
        let rows = batch.split(&pol);
        let ref_rows = refp.as_ref().map(|r| batch.split(r));
        for i in 0..b {
            out.tokens.push(PairTokens {
                chosen: rows[i].to_vec(),
                rejected: rows[b + i].to_vec(),
                ref_chosen: ref_rows.as_ref().map(|r| r[i].to_vec()),
                ref_rejected: ref_rows.as_ref().map(|r| r[b + i].to_vec()),
            });
        }
    }
    Ok(out)
}

fn report(obj: &Objective, scored: Scored) -> EvalReport {
    let Scored {
        pairs,
        tokens,
        loss_sum,
        nll_sum,
    } = scored;
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
    let loss = loss_sum / n;
    let mut metrics: std::collections::BTreeMap<String, f64> =
        objective::pair_metrics(obj, &pairs, loss)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    if let Some(s) = nll_sum {
        metrics.insert("nll_loss".into(), s / n);
    }
    EvalReport {
        objective: LossList(obj.mixture.iter().map(|m| m.0).collect()),
        beta: obj.params.beta,
        gamma: obj.params.gamma,
        poet: obj.poet(),
        loss,
        metrics,
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
        if matches!(r.objective.0.first(), Some(Loss::Simpo | Loss::Alphapo)) {
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
