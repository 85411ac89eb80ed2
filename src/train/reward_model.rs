//! Reward-model training (`gaplab train-rm`): a sequence-classification head on a decoder, both
//! trained on preference pairs with the Bradley-Terry loss
//!
//!   L = mean over pairs of -log σ(r_w - r_l),
//!
//! where r is the reward of prompt + response read where transformers reads it (the last
//! non-pad token, [`reward_position`](crate::model::reward::reward_position)). Full
//! fine-tuning with [`AdamW`]. The loss's derivative per pair is closed-form,
//! dL/dr_w = -σ(-(r_w - r_l)) / B = -dL/dr_l, so the backward pass runs from the surrogate
//! `(rewards * dL/dr).sum()`, whose gradient is exactly the loss's.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use crate::data::TokenizedPair;
use crate::model::reward::RewardModel;
use crate::objective::{log_sigmoid, sigmoid};
use crate::rng::Rng;

use super::optim::{AdamW, AdamWConfig};

/// Settings of one reward-model training run.
#[derive(Clone, Debug, PartialEq)]
pub struct RmTrainConfig {
    pub steps: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
    /// Longest prompt + response in tokens; longer sequences lose their end.
    pub max_len: usize,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
}

impl Default for RmTrainConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            lr: 1e-3,
            batch_size: 32,
            seed: 0,
            max_len: 512,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

/// -log σ(m), without overflow for large |m|.
pub fn bt_loss(margin: f64) -> f64 {
    -log_sigmoid(margin)
}

/// d/dm of -log σ(m) = -σ(-m).
pub fn bt_dloss(margin: f64) -> f64 {
    -sigmoid(-margin)
}

/// prompt + response, cut to `max_len` tokens.
fn sequence(prompt: &[u32], response: &[u32], max_len: usize) -> Vec<u32> {
    let mut s: Vec<u32> = prompt.iter().chain(response).copied().collect();
    s.truncate(max_len);
    s
}

/// The chosen sequences then the rejected ones of `pairs`, right-padded into one [2B, T]
/// tensor, and the position each row's reward is read at (as scoring reads it).
fn batch_tensor(
    rm: &RewardModel,
    pairs: &[&TokenizedPair],
    max_len: usize,
) -> Result<(Tensor, Vec<usize>)> {
    let seqs: Vec<Vec<u32>> = pairs
        .iter()
        .map(|p| sequence(&p.prompt, &p.chosen, max_len))
        .chain(
            pairs
                .iter()
                .map(|p| sequence(&p.prompt, &p.rejected, max_len)),
        )
        .collect();
    let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    rm.padded(&rows)
}

/// The mean loss, the per-pair margins r_w - r_l and the surrogate whose gradient is the
/// loss's, for one batch.
pub fn batch_loss(
    rm: &RewardModel,
    pairs: &[&TokenizedPair],
    max_len: usize,
) -> Result<(f64, Vec<f64>, Tensor)> {
    let b = pairs.len();
    let (ids, last) = batch_tensor(rm, pairs, max_len)?;
    let r = rm.rewards(&ids, &last)?;
    let rf: Vec<f32> = r.to_dtype(DType::F32)?.to_vec1()?;
    let margins: Vec<f64> = (0..b).map(|i| rf[i] as f64 - rf[b + i] as f64).collect();
    let loss = margins.iter().map(|&m| bt_loss(m)).sum::<f64>() / b as f64;
    let coef: Vec<f32> = margins
        .iter()
        .map(|&m| (bt_dloss(m) / b as f64) as f32)
        .chain(margins.iter().map(|&m| (-bt_dloss(m) / b as f64) as f32))
        .collect();
    let coef = Tensor::from_vec(coef, 2 * b, rm.device())?.to_dtype(r.dtype())?;
    let surrogate = (r * coef)?.sum_all()?;
    Ok((loss, margins, surrogate))
}

/// Loss and pair accuracy (share with r_w > r_l) over `pairs`, without gradients.
pub fn evaluate(
    rm: &RewardModel,
    pairs: &[TokenizedPair],
    batch_size: usize,
    max_len: usize,
) -> Result<(f64, f64)> {
    if pairs.is_empty() {
        return Ok((0.0, 0.0));
    }
    // Without the optimizer's variables: no graph is recorded for a pass nobody backprops.
    let rm = rm.detached()?;
    let refs: Vec<&TokenizedPair> = pairs.iter().collect();
    let (mut loss, mut right) = (0.0, 0usize);
    for chunk in refs.chunks(batch_size.max(1)) {
        let (l, margins, _) = batch_loss(&rm, chunk, max_len)?;
        loss += l * chunk.len() as f64;
        right += margins.iter().filter(|&&m| m > 0.0).count();
    }
    let n = pairs.len() as f64;
    Ok((loss / n, right as f64 / n))
}

/// One progress line's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct RmProgress {
    pub step: usize,
    /// Mean loss and accuracy of the training batches since the last report.
    pub loss: f64,
    pub accuracy: f64,
    /// Loss and accuracy over the eval pairs, when there are any.
    pub eval: Option<(f64, f64)>,
}

/// Trains `rm` (decoder and head) on `train` for `cfg.steps` steps of `cfg.batch_size` pairs
/// drawn in a seeded shuffled order, reporting every `report_every` steps and at the end.
pub fn train(
    rm: RewardModel,
    train: &[TokenizedPair],
    eval: &[TokenizedPair],
    cfg: &RmTrainConfig,
    report_every: usize,
    mut report: impl FnMut(&RmProgress),
) -> Result<RewardModel> {
    if train.is_empty() {
        bail!("no training pairs");
    }
    if cfg.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let (rm, vars) = rm.into_trainable()?;
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let mut rng = Rng::new(cfg.seed);
    let mut order: Vec<usize> = Vec::new();
    let (mut loss_sum, mut right, mut seen) = (0.0, 0usize, 0usize);
    for step in 1..=cfg.steps {
        let mut batch = Vec::with_capacity(cfg.batch_size);
        while batch.len() < cfg.batch_size.min(train.len()) {
            if order.is_empty() {
                order = (0..train.len()).collect();
                rng.shuffle(&mut order);
            }
            batch.push(&train[order.pop().unwrap_or(0)]);
        }
        let (loss, margins, surrogate) = batch_loss(&rm, &batch, cfg.max_len)?;
        let grads = surrogate.backward()?;
        opt.step(&grads, Some(cfg.max_grad_norm))?;
        loss_sum += loss * batch.len() as f64;
        right += margins.iter().filter(|&&m| m > 0.0).count();
        seen += batch.len();
        if step % report_every.max(1) == 0 || step == cfg.steps {
            let eval = if eval.is_empty() {
                None
            } else {
                Some(evaluate(&rm, eval, cfg.batch_size, cfg.max_len)?)
            };
            report(&RmProgress {
                step,
                loss: loss_sum / seen as f64,
                accuracy: right as f64 / seen as f64,
                eval,
            });
            (loss_sum, right, seen) = (0.0, 0, 0);
        }
    }
    Ok(rm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CausalLm, ModelConfig, ScratchSpec};
    use candle_core::Device;

    fn tiny_rm(seed: u64) -> RewardModel {
        let spec = ScratchSpec {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            max_position_embeddings: 32,
            ..Default::default()
        };
        let cfg = ModelConfig::from_scratch(&spec, 20).unwrap();
        let dec = CausalLm::random(cfg, seed, &Device::Cpu).unwrap();
        RewardModel::from_decoder(dec, Some(0), seed).unwrap()
    }

    fn pair(prompt: &[u32], chosen: &[u32], rejected: &[u32]) -> TokenizedPair {
        TokenizedPair {
            prompt: prompt.to_vec(),
            chosen: chosen.to_vec(),
            rejected: rejected.to_vec(),
        }
    }

    #[test]
    fn the_loss_and_its_derivative_in_closed_form() {
        for m in [-30.0, -2.0, -0.1, 0.0, 0.3, 5.0, 40.0] {
            let direct = -(1.0 / (1.0 + f64::exp(-m))).ln();
            assert!((bt_loss(m) - direct).abs() < 1e-9, "{m}");
            let h = 1e-6;
            let fd = (bt_loss(m + h) - bt_loss(m - h)) / (2.0 * h);
            assert!(
                (bt_dloss(m) - fd).abs() < 1e-6,
                "{m}: {} vs {fd}",
                bt_dloss(m)
            );
        }
        assert!((bt_loss(0.0) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(bt_loss(-1000.0).is_finite() && bt_loss(1000.0) >= 0.0);
    }

    /// The surrogate's gradient for the head equals a finite difference of the mean loss.
    #[test]
    fn gradients_match_finite_differences() {
        let pairs = [
            pair(&[3, 4], &[5, 6, 1], &[7, 1]),
            pair(&[3, 8, 9], &[10, 1], &[11, 12, 13, 1]),
        ];
        let refs: Vec<&TokenizedPair> = pairs.iter().collect();
        let (rm, vars) = tiny_rm(2).into_trainable().unwrap();
        let (_, _, surrogate) = batch_loss(&rm, &refs, 32).unwrap();
        let grads = surrogate.backward().unwrap();
        for (name, var) in vars.iter().filter(|(n, _)| {
            n == "score.weight"
                || n == "model.norm.weight"
                || n.ends_with("layers.0.mlp.up_proj.weight")
        }) {
            let g: Vec<f32> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w0: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let shape = var.as_tensor().shape().clone();
            for &i in &[0usize, 3, 7] {
                let h = 1e-2f32;
                let at = |d: f32| {
                    let mut w = w0.clone();
                    w[i] += d;
                    var.set(&Tensor::from_vec(w, shape.clone(), &Device::Cpu).unwrap())
                        .unwrap();
                    batch_loss(&rm, &refs, 32).unwrap().0
                };
                let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                at(0.0);
                let tol = 2e-3 + 2e-2 * fd.abs();
                assert!(
                    (g[i] as f64 - fd).abs() < tol,
                    "{name}[{i}]: autograd {} vs finite difference {fd}",
                    g[i]
                );
            }
        }
    }

    /// A separable toy task: the chosen response starts with token 5, the rejected with 6, and
    /// the rejected ends in a tail. Training must reach full accuracy on held-out pairs.
    #[test]
    fn training_learns_a_separable_preference() {
        let mut rng = Rng::new(1);
        let make = |rng: &mut Rng| {
            let p = [3, 4 + rng.below(10) as u32];
            let rest = 7 + rng.below(5) as u32;
            pair(&p, &[5, rest, 1], &[6, rest, 15, 16, 1])
        };
        let train_pairs: Vec<TokenizedPair> = (0..64).map(|_| make(&mut rng)).collect();
        let eval_pairs: Vec<TokenizedPair> = (0..16).map(|_| make(&mut rng)).collect();
        let rm = tiny_rm(5);
        let (l0, _) = evaluate(&rm, &eval_pairs, 8, 32).unwrap();
        let cfg = RmTrainConfig {
            steps: 60,
            lr: 1e-2,
            batch_size: 16,
            ..Default::default()
        };
        let mut reports = Vec::new();
        let rm = train(rm, &train_pairs, &eval_pairs, &cfg, 20, |p| {
            reports.push(p.clone())
        })
        .unwrap();
        assert_eq!(
            reports.iter().map(|r| r.step).collect::<Vec<_>>(),
            [20, 40, 60]
        );
        let (l1, acc) = evaluate(&rm, &eval_pairs, 8, 32).unwrap();
        assert!(l1 < l0 * 0.5, "loss {l0} -> {l1}");
        assert_eq!(acc, 1.0);
        assert_eq!(reports.last().unwrap().eval, Some((l1, acc)));
        assert!(train(tiny_rm(1), &[], &[], &cfg, 1, |_| {}).is_err());
    }

    #[test]
    fn long_sequences_are_cut_and_rows_read_at_their_last_token() {
        let rm = tiny_rm(3);
        let p = pair(&[3, 4, 5], &[6, 7, 8, 9], &[10]);
        let (ids, last) = batch_tensor(&rm, &[&p], 5).unwrap();
        assert_eq!(ids.dims2().unwrap(), (2, 5));
        assert_eq!(last, [4, 3]);
        let rows: Vec<Vec<u32>> = ids.to_vec2().unwrap();
        assert_eq!(rows[1], [3, 4, 5, 10, 0]);
    }
}
