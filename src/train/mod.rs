//! Training: the optimizer and the step functions (one optimizer update on one batch).

pub mod optim;

use anyhow::Result;
use candle_core::{DType, Tensor};

use crate::data::SeqBatch;
use crate::model::CausalLm;
use crate::objective::{self, Objective, PairStats};
use optim::AdamW;

/// What one preference step measured.
pub struct StepOutput {
    pub loss: f64,
    pub pairs: Vec<PairStats>,
    pub grad_norm: f64,
    /// False when the loss or a gradient was not finite: the weights were left unchanged.
    pub applied: bool,
    /// Tokens run through the policy (padding excluded).
    pub tokens: usize,
    /// Mean logit over the vocabulary at chosen / rejected response positions.
    pub logits_chosen: f64,
    pub logits_rejected: f64,
}

/// Reference log-probs of a batch's response tokens (no graph), packed as in `SeqBatch`.
pub fn reference_logps(reference: &CausalLm, batch: &SeqBatch) -> Result<Vec<f32>> {
    let s = reference.response_scores(batch)?;
    Ok(s.logps.detach().to_dtype(DType::F32)?.to_vec1()?)
}

/// Mean logit of the chosen rows and of the rejected rows (TRL's logits/chosen, logits/rejected).
fn mean_logits(batch: &SeqBatch, logits: &Tensor) -> Result<(f64, f64)> {
    let per_token: Vec<f32> = logits.detach().to_dtype(DType::F32)?.mean(1)?.to_vec1()?;
    let rows = batch.split(&per_token);
    let half = rows.len() / 2;
    let mean = |rs: &[&[f32]]| {
        let n: usize = rs.iter().map(|r| r.len()).sum();
        rs.iter()
            .flat_map(|r| r.iter())
            .map(|&x| x as f64)
            .sum::<f64>()
            / n.max(1) as f64
    };
    Ok((mean(&rows[..half]), mean(&rows[half..])))
}

/// One optimizer update of `policy` on a preference batch (chosen rows, then rejected rows).
/// `reference` supplies reference log-probs for DPO/IPO: a frozen model or cached values.
pub fn preference_step(
    policy: &CausalLm,
    reference: Option<&[f32]>,
    batch: &SeqBatch,
    obj: &Objective,
    opt: &mut AdamW,
    max_grad_norm: Option<f64>,
) -> Result<StepOutput> {
    let scores = policy.response_scores(batch)?;
    let out = objective::preference_loss(obj, batch, &scores.logps, reference)?;
    let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let (logits_chosen, logits_rejected) = mean_logits(batch, &scores.logits)?;
    let (grad_norm, applied) = if loss.is_finite() {
        let grads = out.loss.backward()?;
        let r = opt.step(&grads, max_grad_norm)?;
        (r.grad_norm, r.applied)
    } else {
        (f64::NAN, false)
    };
    Ok(StepOutput {
        loss,
        pairs: out.pairs,
        grad_norm,
        applied,
        tokens: batch.num_tokens(),
        logits_chosen,
        logits_rejected,
    })
}

/// One optimizer update with the supervised objective on `batch` (chosen rows only), counting
/// `counted[r]` response tokens of row r.
pub fn sft_step(
    policy: &CausalLm,
    batch: &SeqBatch,
    counted: &[usize],
    opt: &mut AdamW,
    max_grad_norm: Option<f64>,
) -> Result<(f64, f64, bool)> {
    let scores = policy.response_scores(batch)?;
    let loss_t = objective::sft_loss(batch, &scores.logps, counted)?;
    let loss = loss_t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !loss.is_finite() {
        return Ok((loss, f64::NAN, false));
    }
    let grads = loss_t.backward()?;
    let r = opt.step(&grads, max_grad_norm)?;
    Ok((loss, r.grad_norm, r.applied))
}
