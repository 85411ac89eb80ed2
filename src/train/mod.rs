//! Training: the optimizer, schedules, the step functions (gradients of one batch, one
//! optimizer update) and the trainer that runs the SFT stage or a variant end to end.

pub mod alerts;
pub mod dataset;
pub mod health;
pub mod initial;
pub mod judge;
pub mod memory;
pub mod oom;
pub mod optim;
pub mod refcache;
pub mod reward_model;
pub mod schedule;
pub mod token_view;
pub mod trainer;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::data::TokenizedPair;
use crate::model::SeqBatch;
use crate::model::{CausalLm, Recompute, ResponseScores};
use crate::objective::{self, LossKind, LossOutput, Objective, PairStats, TokenExtras};
use optim::AdamW;

/// What the forward and backward pass of one micro-batch measured.
pub struct MicroOutput {
    pub loss: f64,
    /// Per-pair statistics of a preference loss (none for SFT).
    pub pairs: Vec<PairStats>,
    /// None when the loss was not finite (no backward pass was run).
    pub grads: Option<GradStore>,
    /// Tokens run through the policy (padding excluded).
    pub tokens: usize,
    /// Sum of the mean logit (over the vocabulary) at chosen / rejected response positions,
    /// and the number of positions summed (nothing summed for SFT).
    pub logits_chosen: (f64, usize),
    pub logits_rejected: (f64, usize),
}

/// Reference log-probs of a batch's response tokens (no graph), packed as in `SeqBatch`.
pub fn reference_logps(reference: &CausalLm, batch: &SeqBatch) -> Result<Vec<f32>> {
    let s = reference.response_scores(batch)?;
    Ok(s.logps.detach().to_dtype(DType::F32)?.to_vec1()?)
}

/// Writes the folder `dir` through a temporary sibling and a rename: a crash leaves no
/// half-written folder under the final name.
pub fn save_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    fill(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))
}

/// The trained tensors a checkpoint of `policy` stores (its adapters in a LoRA run, else every
/// weight): half-precision training saves the optimizer's f32 master copies (rounded once, to
/// the checkpoint's own dtype, when written).
pub fn checkpoint_weights(policy: &CausalLm, opt: &AdamW) -> Vec<(String, Tensor)> {
    let master: std::collections::HashMap<String, Tensor> =
        opt.master_weights().into_iter().collect();
    let trained = match policy.adapters() {
        Some(a) => a.tensors.as_slice(),
        None => policy.weights(),
    };
    trained
        .iter()
        .map(|(n, t)| (n.clone(), master.get(n).unwrap_or(t).clone()))
        .collect()
}

/// Sums of per-position mean logits over chosen rows and over rejected rows (TRL's
/// logits/chosen and logits/rejected are their means).
pub(crate) fn logit_sums(
    batch: &SeqBatch,
    logits: &Tensor,
) -> Result<((f64, usize), (f64, usize))> {
    let per_token: Vec<f32> = logits.detach().to_dtype(DType::F32)?.mean(1)?.to_vec1()?;
    let rows = batch.split(&per_token);
    let half = rows.len() / 2;
    let sum = |rs: &[&[f32]]| {
        let n: usize = rs.iter().map(|r| r.len()).sum();
        (
            rs.iter()
                .flat_map(|r| r.iter())
                .map(|&x| x as f64)
                .sum::<f64>(),
            n,
        )
    };
    Ok((sum(&rows[..half]), sum(&rows[half..])))
}

/// The micro-batch `obj` reads of `pairs`: chosen and rejected rows for a preference loss,
/// chosen rows alone for SFT.
pub fn batch_for(
    obj: &Objective,
    pairs: &[TokenizedPair],
    pad: u32,
    device: &Device,
) -> Result<SeqBatch> {
    match obj.kind() {
        LossKind::Preference => SeqBatch::from_pairs(pairs, pad, device),
        LossKind::Sft => SeqBatch::chosen_only(pairs, pad, device),
    }
}

/// Loss, statistics and gradients of `policy` on one micro-batch laid out by [`batch_for`].
/// The gradients are of `loss * scale` (1 / gradient-accumulation steps). `poison` replaces
/// the loss by NaN (fault injection for robustness tests). `recompute` keeps only each layer's
/// input through the forward pass and recomputes the layers in backward (same gradients).
pub fn grads(
    policy: &CausalLm,
    reference: Option<&[f32]>,
    batch: &SeqBatch,
    obj: &Objective,
    scale: f64,
    poison: bool,
    recompute: bool,
) -> Result<MicroOutput> {
    let (scores, recomputed) = scores_for_backward(policy, batch, recompute)?;
    let log_sum_sq = match obj.use_weighting {
        true => Some(log_sum_sq_probs(&scores.logits)?),
        false => None,
    };
    let extras = TokenExtras {
        log_sum_sq: log_sum_sq.as_deref(),
    };
    let (loss_t, pairs, (logits_chosen, logits_rejected)) =
        match objective::loss(obj, batch, &scores.logps, reference, extras)? {
            LossOutput::Pairs(out) => (out.loss, out.pairs, logit_sums(batch, &scores.logits)?),
            LossOutput::Sft(loss) => (loss, vec![], ((0.0, 0), (0.0, 0))),
        };
    let loss_t = if poison { (loss_t * f64::NAN)? } else { loss_t };
    let loss = loss_t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let grads = if loss.is_finite() {
        Some(backward(policy, &(loss_t * scale)?, recomputed)?)
    } else {
        None
    };
    Ok(MicroOutput {
        loss,
        pairs,
        grads,
        tokens: batch.num_tokens(),
        logits_chosen,
        logits_rejected,
    })
}

/// The policy's response scores, recording a graph through every layer or (recomputation)
/// through the head alone.
fn scores_for_backward(
    policy: &CausalLm,
    batch: &SeqBatch,
    recompute: bool,
) -> Result<(ResponseScores, Option<Recompute>)> {
    if recompute {
        let (s, rc) = policy.response_scores_recomputed(batch)?;
        Ok((s, Some(rc)))
    } else {
        Ok((policy.response_scores(batch)?, None))
    }
}

/// Gradients of `loss`, completed through the recomputed layers when there are some.
fn backward(policy: &CausalLm, loss: &Tensor, recomputed: Option<Recompute>) -> Result<GradStore> {
    let grads = loss.backward()?;
    match recomputed {
        Some(rc) => policy.backward_layers(grads, rc),
        None => Ok(policy.detach_grads(grads)),
    }
}

/// log Σ_v π(v)² at each position of `logits` [tokens, vocab], on the host (WPO's weights).
pub fn log_sum_sq_probs(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(crate::model::ops::log_sum_sq_probs(logits)?.to_vec1()?)
}

/// Adds `more` into `total`, variable by variable.
pub fn accumulate(total: &mut GradStore, more: &GradStore, vars: &[Var]) -> Result<()> {
    for v in vars {
        if let Some(g) = more.get(v.as_tensor()) {
            let sum = match total.get(v.as_tensor()) {
                Some(t) => (t + g)?,
                None => g.clone(),
            };
            total.insert(v.as_tensor(), sum);
        }
    }
    Ok(())
}

/// What one optimizer step on a single batch measured (used by `gaplab bench`).
pub struct StepOutput {
    pub loss: f64,
    pub grad_norm: f64,
    pub applied: bool,
}

/// One optimizer update of `policy` on a preference batch (chosen rows, then rejected rows).
pub fn preference_step(
    policy: &CausalLm,
    reference: Option<&[f32]>,
    batch: &SeqBatch,
    obj: &Objective,
    opt: &mut AdamW,
    max_grad_norm: Option<f64>,
    recompute: bool,
) -> Result<StepOutput> {
    let m = grads(policy, reference, batch, obj, 1.0, false, recompute)?;
    let (grad_norm, applied) = match &m.grads {
        Some(g) => {
            let r = opt.step(g, max_grad_norm)?;
            (r.grad_norm, r.applied)
        }
        None => (f64::NAN, false),
    };
    Ok(StepOutput {
        loss: m.loss,
        grad_norm,
        applied,
    })
}

/// Loss and gradients of the supervised objective on `batch` (chosen rows only), counting
/// `counted[r]` response tokens of row r; gradients of `loss * scale`.
pub fn sft_grads(
    policy: &CausalLm,
    batch: &SeqBatch,
    counted: &[usize],
    scale: f64,
    recompute: bool,
) -> Result<(f64, Option<GradStore>)> {
    let (scores, recomputed) = scores_for_backward(policy, batch, recompute)?;
    let loss_t = objective::sft_loss(batch, &scores.logps, counted)?;
    let loss = loss_t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !loss.is_finite() {
        return Ok((loss, None));
    }
    Ok((
        loss,
        Some(backward(policy, &(loss_t * scale)?, recomputed)?),
    ))
}

/// One optimizer update with the supervised objective.
pub fn sft_step(
    policy: &CausalLm,
    batch: &SeqBatch,
    counted: &[usize],
    opt: &mut AdamW,
    max_grad_norm: Option<f64>,
    recompute: bool,
) -> Result<StepOutput> {
    let (loss, grads) = sft_grads(policy, batch, counted, 1.0, recompute)?;
    let (grad_norm, applied) = match &grads {
        Some(g) => {
            let r = opt.step(g, max_grad_norm)?;
            (r.grad_norm, r.applied)
        }
        None => (f64::NAN, false),
    };
    Ok(StepOutput {
        loss,
        grad_norm,
        applied,
    })
}
