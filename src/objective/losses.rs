//! The loss formulas, per pair and per batch, as TRL 1.16 computes them (DPOTrainer's
//! `loss_type`s, CPOTrainer's and ORPOTrainer's), on host f64 with their derivatives with
//! respect to each pair's policy sequence scores (see `dual`). Sequence scores arrive already
//! weighted by the token scheme (POET, LD-DPO, SamPO, position decay).

use anyhow::{bail, Result};

use super::dual::Dual;
use super::{FDivergence, Loss};

/// The coefficients the formulas read (names as TRL's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    pub beta: f64,
    /// SimPO/AlphaPO's absolute target margin (TRL's simpo_gamma).
    pub gamma: f64,
    pub label_smoothing: f64,
    pub f_divergence: FDivergence,
    pub discopop_tau: f64,
    /// Weight of the chosen NLL term of `cpo` and `slic` (TRL's cpo_alpha).
    pub cpo_alpha: f64,
    /// AlphaPO's reward shaping exponent (TRL CPOConfig's alpha).
    pub alpha: f64,
    /// R-DPO's length regulariser: the margin loses rdpo_alpha·(n_w − n_l).
    pub rdpo_alpha: f64,
}

/// What one pair brings to the loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairScores {
    /// Policy log-probs summed over the counted (weighted) tokens: [chosen, rejected].
    pub logps: [f64; 2],
    /// The same under the reference, when there is one.
    pub ref_logps: Option<[f64; 2]>,
    /// Tokens counted: the normaliser of the length-normalised losses.
    pub counted: [usize; 2],
    /// WPO's weight of the pair (w_w·w_l, no gradient); 1 without weighting.
    pub weight: f64,
}

/// A batch's loss with what each pair measured and the derivatives.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchLoss {
    pub value: f64,
    /// The per-pair term of the mixture (for batch-sorting losses the i-th sorted term; the
    /// NLL terms, batch scalars, added to every pair as TRL expands them).
    pub per_pair: Vec<f64>,
    /// d value / d logps: [chosen, rejected] per pair.
    pub grad: Vec<[f64; 2]>,
    /// Coefficient of the mean chosen NLL in `value` (its gradient is linear in the tokens).
    pub nll_coef: f64,
    /// Implicit rewards [chosen, rejected] per pair, as the trainer that defines the loss logs.
    pub rewards: Vec<[f64; 2]>,
}

fn ref_of(p: &PairScores, loss: Loss) -> Result<[f64; 2]> {
    match p.ref_logps {
        Some(r) => Ok(r),
        None => bail!("{loss} needs reference log-probs"),
    }
}

/// TRL's f-divergence score of a log-ratio.
fn f_score(f: FDivergence, rho: Dual) -> Dual {
    match f {
        FDivergence::ReverseKl => rho,
        FDivergence::ForwardKl => -((-rho).exp()) + 1.0,
        FDivergence::JsDivergence => rho.log_sigmoid() + std::f64::consts::LN_2,
        FDivergence::AlphaDivergence(a) if (a - 1.0).abs() < 1e-6 => rho,
        // Clamped at 80 as TRL does in f32, so exp stays finite.
        FDivergence::AlphaDivergence(a) => ((rho * (a - 1.0)).min_c(80.0).exp() - 1.0) / (a - 1.0),
    }
}

/// −(1−ε) log σ(z) − ε log σ(−z): the label-smoothed logistic loss.
fn smoothed(z: Dual, eps: f64) -> Dual {
    -(z.log_sigmoid() * (1.0 - eps)) - (-z).log_sigmoid() * eps
}

/// AlphaPO's reward shaping (1 − e^(−α·v))/α of a score v; v itself at α = 0.
fn alpha_shaped(v: Dual, alpha: f64) -> Dual {
    if alpha != 0.0 {
        -((-(v * alpha)).exp() - 1.0) / alpha
    } else {
        v
    }
}

/// The loss that defines a mixture's rewards: the first that is not `sft` (`sft` when that is
/// all there is).
pub fn primary(mixture: &[(Loss, f64)]) -> Loss {
    mixture
        .iter()
        .map(|m| m.0)
        .find(|l| *l != Loss::Sft)
        .unwrap_or(Loss::Sft)
}

/// The term of one pair for a loss that reads only that pair.
fn pair_term(loss: Loss, p: &Params, s: &PairScores) -> Result<Dual> {
    let (x, y) = (Dual::x(s.logps[0]), Dual::y(s.logps[1]));
    let (n_w, n_l) = (s.counted[0].max(1) as f64, s.counted[1].max(1) as f64);
    let b = p.beta;
    let eps = p.label_smoothing;
    // Log-ratios against the reference and their f-divergence scores.
    let ratios = || -> Result<(Dual, Dual)> {
        let r = ref_of(s, loss)?;
        Ok((x - r[0], y - r[1]))
    };
    let scores = || -> Result<(Dual, Dual)> {
        let (rw, rl) = ratios()?;
        Ok((f_score(p.f_divergence, rw), f_score(p.f_divergence, rl)))
    };
    // β·δ, less R-DPO's length term.
    let margin_logits = || -> Result<Dual> {
        let (sw, sl) = scores()?;
        Ok((sw - sl) * b - p.rdpo_alpha * (s.counted[0] as f64 - s.counted[1] as f64))
    };
    // SimPO/AlphaPO's length-averaged score, AlphaPO's shaping applied.
    let shaped = |v: Dual, n: f64| alpha_shaped(v / n, p.alpha);
    Ok(match loss {
        Loss::Sigmoid => -margin_logits()?.log_sigmoid(),
        Loss::Hinge => (-margin_logits()? + 1.0).relu(),
        Loss::Ipo => {
            let (sw, sl) = scores()?;
            (sw / n_w - sl / n_l - 1.0 / (2.0 * b)).sqr()
        }
        Loss::ExoPair => {
            let z = margin_logits()?;
            z.sigmoid() * (z.log_sigmoid() - (-eps).ln_1p())
                + (-z).sigmoid() * ((-z).log_sigmoid() - eps.ln())
        }
        Loss::NcaPair => {
            let (rw, rl) = ratios()?;
            let (cw, cl) = (rw * b, rl * b);
            -cw.log_sigmoid() - (-cw).log_sigmoid() * 0.5 - (-cl).log_sigmoid() * 0.5
        }
        Loss::Robust => {
            let z = margin_logits()?;
            (-(z.log_sigmoid() * (1.0 - eps)) + (-z).log_sigmoid() * eps) / (1.0 - 2.0 * eps)
        }
        Loss::BcoPair => {
            let (rw, rl) = ratios()?;
            -(rw * b).log_sigmoid() - (-(rl * b)).log_sigmoid()
        }
        Loss::SppoHard => {
            let (rw, rl) = ratios()?;
            (rw - 0.5 / b).sqr() + (rl + 0.5 / b).sqr()
        }
        Loss::ApoZero => {
            let (rw, rl) = ratios()?;
            -(rw * b).sigmoid() + 1.0 + (rl * b).sigmoid()
        }
        Loss::ApoDown => {
            let (rw, rl) = ratios()?;
            (rw * b).sigmoid() + 1.0 - ((rw - rl) * b).sigmoid()
        }
        Loss::Discopop => {
            let z = margin_logits()?;
            let m = (z / p.discopop_tau).sigmoid();
            -z.log_sigmoid() * (-m + 1.0) + (-z).exp() * m
        }
        Loss::SigmoidNorm => {
            let (sw, sl) = scores()?;
            -((sw / n_w - sl / n_l) * b).log_sigmoid()
        }
        Loss::Simpo | Loss::Alphapo => {
            let logits = shaped(x, n_w) - shaped(y, n_l) - p.gamma / b;
            smoothed(logits * b, eps)
        }
        Loss::Cpo => {
            let logits = if p.alpha != 0.0 {
                shaped(x, 1.0) - shaped(y, 1.0)
            } else {
                x - y
            };
            smoothed(logits * b, eps)
        }
        Loss::Slic => (-((x - y) * b) + 1.0).relu(),
        Loss::Orpo => {
            let (lw, ll) = (x / n_w, y / n_l);
            let log_odds = (lw - ll) - (lw.log1mexp() - ll.log1mexp());
            // ORPOTrainer's beta is the paper's λ.
            -(log_odds.log_sigmoid() * b)
        }
        Loss::Aot | Loss::AotUnpaired | Loss::Sft => {
            bail!("{loss} is not a per-pair loss")
        }
    })
}

/// One batch-sorting term: position i of the sorted batch, with the pairs its chosen and
/// rejected scores come from.
struct SortedTerm {
    value: Dual,
    chosen_of: usize,
    rejected_of: usize,
}

/// `aot` and `aot_unpaired`: the batch's (log-)ratios sorted before they are compared.
fn sorted_terms(loss: Loss, p: &Params, pairs: &[PairScores]) -> Result<Vec<SortedTerm>> {
    let refs: Vec<[f64; 2]> = pairs
        .iter()
        .map(|s| ref_of(s, loss))
        .collect::<Result<_>>()?;
    let order = |key: &dyn Fn(usize) -> f64| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..pairs.len()).collect();
        idx.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
        idx
    };
    let eps = p.label_smoothing;
    let b = p.beta;
    let terms = match loss {
        Loss::Aot => {
            let pol = order(&|i| pairs[i].logps[0] - pairs[i].logps[1]);
            let rf = order(&|i| refs[i][0] - refs[i][1]);
            pol.iter()
                .zip(&rf)
                .map(|(&i, &j)| {
                    let d = Dual::x(pairs[i].logps[0])
                        - Dual::y(pairs[i].logps[1])
                        - (refs[j][0] - refs[j][1]);
                    SortedTerm {
                        value: smoothed(d * b, eps),
                        chosen_of: i,
                        rejected_of: i,
                    }
                })
                .collect()
        }
        Loss::AotUnpaired => {
            let cw = order(&|i| pairs[i].logps[0] - refs[i][0]);
            let cl = order(&|i| pairs[i].logps[1] - refs[i][1]);
            cw.iter()
                .zip(&cl)
                .map(|(&i, &j)| {
                    let d = (Dual::x(pairs[i].logps[0]) - refs[i][0])
                        - (Dual::y(pairs[j].logps[1]) - refs[j][1]);
                    SortedTerm {
                        value: smoothed(d * b, eps),
                        chosen_of: i,
                        rejected_of: j,
                    }
                })
                .collect()
        }
        _ => bail!("{loss} does not sort the batch"),
    };
    Ok(terms)
}

/// The rewards the trainer that defines `loss` logs for a pair: β times the (weighted)
/// log-ratio for DPOTrainer's losses; the policy's own score for the reference-free ones.
pub fn rewards(loss: Loss, p: &Params, s: &PairScores) -> [f64; 2] {
    let n = [s.counted[0].max(1) as f64, s.counted[1].max(1) as f64];
    let shaped = |v: f64| alpha_shaped(Dual::c(v), p.alpha).v;
    let side = |i: usize| -> f64 {
        let l = s.logps[i];
        match loss {
            Loss::Orpo => p.beta * l / n[i],
            Loss::Simpo | Loss::Alphapo => p.beta * shaped(l / n[i]),
            Loss::Cpo => p.beta * shaped(l),
            Loss::Slic => p.beta * l,
            _ => p.beta * (l - s.ref_logps.map_or(0.0, |r| r[i])),
        }
    };
    [side(0), side(1)]
}

/// The loss of a batch: Σ weight × mean over pairs of each loss's term (TRL's mixture), plus
/// the NLL terms as coefficients of the mean chosen NLL (`nll`, computed by the caller).
pub fn batch_loss(
    mixture: &[(Loss, f64)],
    p: &Params,
    pairs: &[PairScores],
    nll: f64,
) -> Result<BatchLoss> {
    let n = pairs.len();
    if n == 0 {
        bail!("a preference batch needs at least one pair");
    }
    let mut per_pair = vec![0.0; n];
    let mut grad = vec![[0.0; 2]; n];
    let mut value = 0.0;
    let mut nll_coef = 0.0;
    let mean_weight = pairs.iter().map(|s| s.weight).sum::<f64>() / n as f64;
    for &(loss, w) in mixture {
        let scale = w / n as f64;
        match loss {
            // TRL expands the batch's NLL to every pair, then WPO weights each copy.
            Loss::Sft => {
                nll_coef += w * mean_weight;
                for (i, s) in pairs.iter().enumerate() {
                    per_pair[i] += w * nll * s.weight;
                }
            }
            Loss::Aot | Loss::AotUnpaired => {
                for (i, t) in sorted_terms(loss, p, pairs)?.into_iter().enumerate() {
                    value += scale * t.value.v;
                    per_pair[i] += w * t.value.v;
                    grad[t.chosen_of][0] += scale * t.value.dx;
                    grad[t.rejected_of][1] += scale * t.value.dy;
                }
            }
            _ => {
                for (i, s) in pairs.iter().enumerate() {
                    let t = pair_term(loss, p, s)? * s.weight;
                    value += scale * t.v;
                    per_pair[i] += w * t.v;
                    grad[i][0] += scale * t.dx;
                    grad[i][1] += scale * t.dy;
                }
                // TRL's CPO and ORPO add the chosen NLL to the batch mean.
                let c = match loss {
                    Loss::Cpo | Loss::Slic => p.cpo_alpha,
                    Loss::Orpo => 1.0,
                    _ => 0.0,
                };
                if c != 0.0 {
                    nll_coef += w * c;
                    per_pair.iter_mut().for_each(|v| *v += w * c * nll);
                }
            }
        }
    }
    value += nll_coef * nll;
    let reward_loss = primary(mixture);
    let rewards = pairs.iter().map(|s| rewards(reward_loss, p, s)).collect();
    Ok(BatchLoss {
        value,
        per_pair,
        grad,
        nll_coef,
        rewards,
    })
}

#[cfg(test)]
mod tests {
    use super::super::dual::log_sigmoid;
    use super::*;

    fn params() -> Params {
        Params {
            beta: 0.3,
            gamma: 0.4,
            label_smoothing: 0.1,
            f_divergence: FDivergence::ReverseKl,
            discopop_tau: 0.05,
            cpo_alpha: 1.0,
            alpha: 0.0,
            rdpo_alpha: 0.0,
        }
    }

    fn batch() -> Vec<PairScores> {
        vec![
            PairScores {
                logps: [-6.0, -4.5],
                ref_logps: Some([-5.0, -5.5]),
                counted: [3, 2],
                weight: 1.0,
            },
            PairScores {
                logps: [-2.0, -7.0],
                ref_logps: Some([-2.5, -6.0]),
                counted: [2, 4],
                weight: 1.0,
            },
            PairScores {
                logps: [-9.0, -3.0],
                ref_logps: Some([-8.2, -3.5]),
                counted: [5, 3],
                weight: 1.0,
            },
        ]
    }

    /// The batch loss's gradient against central differences in every pair's scores.
    fn check_grad(mixture: &[(Loss, f64)], p: &Params, pairs: &[PairScores]) {
        let out = batch_loss(mixture, p, pairs, 1.7).unwrap();
        let h = 1e-6;
        for i in 0..pairs.len() {
            for side in 0..2 {
                let at = |d: f64| {
                    let mut q = pairs.to_vec();
                    q[i].logps[side] += d;
                    batch_loss(mixture, p, &q, 1.7).unwrap().value
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                let g = out.grad[i][side];
                assert!(
                    (g - fd).abs() <= 1e-5 * (1.0 + fd.abs()),
                    "{mixture:?} pair {i} side {side}: {g} vs {fd}"
                );
            }
        }
    }

    #[test]
    fn every_loss_has_its_finite_difference_gradient() {
        for loss in Loss::ALL {
            let mut p = params();
            if loss == Loss::Alphapo {
                p.alpha = 0.25;
            }
            // ORPO needs per-token means below 0, as log-probs are.
            check_grad(&[(loss, 1.0)], &p, &batch());
        }
        for f in [
            FDivergence::ForwardKl,
            FDivergence::JsDivergence,
            FDivergence::AlphaDivergence(0.5),
        ] {
            for loss in [Loss::Sigmoid, Loss::Ipo, Loss::Hinge, Loss::Robust] {
                let p = Params {
                    f_divergence: f,
                    ..params()
                };
                check_grad(&[(loss, 1.0)], &p, &batch());
            }
        }
        let p = Params {
            rdpo_alpha: 0.05,
            alpha: 0.2,
            ..params()
        };
        check_grad(&[(Loss::Sigmoid, 1.0)], &p, &batch());
        check_grad(&[(Loss::Cpo, 1.0)], &p, &batch());
        let mut weighted = batch();
        weighted[1].weight = 0.3;
        check_grad(
            &[(Loss::Sigmoid, 0.8), (Loss::BcoPair, 0.2), (Loss::Sft, 1.0)],
            &params(),
            &weighted,
        );
    }

    #[test]
    fn sigmoid_by_hand() {
        let p = Params {
            label_smoothing: 0.0,
            ..params()
        };
        let s = batch()[0];
        // ρ_w = -1, ρ_l = 1: z = 0.3·(-2) = -0.6
        let out = batch_loss(&[(Loss::Sigmoid, 1.0)], &p, &[s], 0.0).unwrap();
        assert!((out.value - (1.0 + 0.6f64.exp()).ln()).abs() < 1e-12);
        assert_eq!(out.rewards[0], [-0.3, 0.3]);
    }

    #[test]
    fn ipo_normalises_by_counted_tokens() {
        let p = params();
        let s = batch()[0];
        // (-1/3 - 1/2 - 1/0.6)^2
        let expect = (-1.0 / 3.0 - 0.5 - 1.0 / 0.6f64).powi(2);
        let out = batch_loss(&[(Loss::Ipo, 1.0)], &p, &[s], 0.0).unwrap();
        assert!((out.value - expect).abs() < 1e-12);
    }

    #[test]
    fn sft_in_a_mixture_is_the_weighted_nll() {
        let out = batch_loss(&[(Loss::Sft, 0.5)], &params(), &batch(), 2.0).unwrap();
        assert_eq!((out.value, out.nll_coef), (1.0, 0.5));
        assert!(out.grad.iter().all(|g| *g == [0.0, 0.0]));
    }

    #[test]
    fn aot_sorts_within_the_batch() {
        let p = Params {
            label_smoothing: 0.0,
            ..params()
        };
        let pairs = batch();
        // policy margins: -1.5, 5, -6 -> sorted -6, -1.5, 5; reference: 0.5, 3.5, -4.7 ->
        // -4.7, 0.5, 3.5; d = -1.3, -2, 1.5.
        let expect: f64 = [-1.3f64, -2.0, 1.5]
            .iter()
            .map(|d| -log_sigmoid(0.3 * d))
            .sum::<f64>()
            / 3.0;
        let out = batch_loss(&[(Loss::Aot, 1.0)], &p, &pairs, 0.0).unwrap();
        assert!((out.value - expect).abs() < 1e-12);
    }

    #[test]
    fn reference_based_losses_need_a_reference() {
        let mut s = batch()[0];
        s.ref_logps = None;
        let e = batch_loss(&[(Loss::Hinge, 1.0)], &params(), &[s], 0.0).unwrap_err();
        assert_eq!(e.to_string(), "hinge needs reference log-probs");
        assert!(batch_loss(&[(Loss::Simpo, 1.0)], &params(), &[s], 0.0).is_ok());
    }

    #[test]
    fn simpo_matches_the_old_formula() {
        // r = β·logp/n; loss = softplus(-(r_w - r_l - γ)) without label smoothing.
        let p = Params {
            label_smoothing: 0.0,
            ..params()
        };
        let s = batch()[0];
        let (rw, rl) = (0.3 * -6.0 / 3.0, 0.3 * -4.5 / 2.0);
        let expect = (1.0 + (-(rw - rl - 0.4f64)).exp()).ln();
        let out = batch_loss(&[(Loss::Simpo, 1.0)], &p, &[s], 0.0).unwrap();
        assert!((out.value - expect).abs() < 1e-12);
        assert!((out.rewards[0][0] - rw).abs() < 1e-12);
    }
}
