//! Objectives: per-token log-probs -> sequence scores (with POET's prefix mask) -> losses and
//! the TRL-named metrics. Formulas follow research.md; the notation is kept: `chosen` = y_w,
//! `rejected` = y_l, `logps` are sums of per-token log-probs over the tokens counted.

pub mod prefix;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::SeqBatch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Mean negative log-likelihood of the chosen response tokens.
    Sft,
    /// Sigmoid DPO: -log sigma(beta * (log-ratio(y_w) - log-ratio(y_l))).
    Dpo,
    /// SimPO: -log sigma(beta/|y_w| logp(y_w) - beta/|y_l| logp(y_l) - gamma), no reference.
    Simpo,
    /// IPO as TRL computes it: (mean log-ratio(y_w) - mean log-ratio(y_l) - 1/(2 beta))^2.
    Ipo,
}

impl Loss {
    /// Every loss, in declaration order (serde's variant index) and the order messages list them.
    pub const ALL: [Loss; 4] = [Loss::Sft, Loss::Dpo, Loss::Simpo, Loss::Ipo];

    /// The losses of preference pairs: the values a command line's `--objective` offers (SFT is
    /// a stage of a workspace, `[sft]`, never an objective to pick).
    pub const PREFERENCE: [Loss; 3] = [Loss::Dpo, Loss::Simpo, Loss::Ipo];

    /// [`Loss::name`] of each of [`Loss::ALL`], for serde's "expected one of" messages.
    const NAMES: [&'static str; 4] = {
        let mut names = [""; 4];
        let mut i = 0;
        while i < names.len() {
            names[i] = Loss::ALL[i].name();
            i += 1;
        }
        names
    };

    pub fn needs_reference(self) -> bool {
        matches!(self, Loss::Dpo | Loss::Ipo)
    }

    /// The one spelling of each loss: in gaplab.toml, on the command line, in run directories
    /// and in output.
    pub const fn name(self) -> &'static str {
        match self {
            Loss::Sft => "sft",
            Loss::Dpo => "dpo",
            Loss::Simpo => "simpo",
            Loss::Ipo => "ipo",
        }
    }

    pub fn from_name(name: &str) -> Option<Loss> {
        Loss::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// "a, b or c".
fn or_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Loss {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Loss::from_name(s).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown objective \"{s}\" (expected {})",
                or_list(&Loss::NAMES)
            )
        })
    }
}

// Serde as `#[derive]` with lowercase names would do it (a unit variant; the same messages for
// an unknown name), but spelled by `Loss::name`.
impl Serialize for Loss {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit_variant("Loss", *self as u32, self.name())
    }
}

impl<'de> Deserialize<'de> for Loss {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_enum("Loss", &Loss::NAMES, LossVisitor)
    }
}

struct LossVisitor;

impl<'de> serde::de::Visitor<'de> for LossVisitor {
    type Value = Loss;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("enum Loss")
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Loss, A::Error> {
        let (VariantName(loss), variant) = data.variant()?;
        serde::de::VariantAccess::unit_variant(variant)?;
        Ok(loss)
    }
}

/// A variant's name (or index), checked against the name table.
struct VariantName(Loss);

impl<'de> Deserialize<'de> for VariantName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Id;
        impl serde::de::Visitor<'_> for Id {
            type Value = VariantName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("variant identifier")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<VariantName, E> {
                Loss::from_name(s)
                    .map(VariantName)
                    .ok_or_else(|| E::unknown_variant(s, &Loss::NAMES))
            }
            fn visit_u64<E: serde::de::Error>(self, i: u64) -> Result<VariantName, E> {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| Loss::ALL.get(i).copied())
                    .map(VariantName)
                    .ok_or_else(|| {
                        E::invalid_value(
                            serde::de::Unexpected::Unsigned(i),
                            &"variant index 0 <= i < 4",
                        )
                    })
            }
        }
        d.deserialize_identifier(Id)
    }
}

/// The command line's `--objective` values: [`Loss::PREFERENCE`], by [`Loss::name`].
impl clap::ValueEnum for Loss {
    fn value_variants<'a>() -> &'a [Self] {
        &Loss::PREFERENCE
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Loss::PREFERENCE
            .contains(self)
            .then(|| clap::builder::PossibleValue::new(self.name()))
    }
}

/// The losses that compare a chosen with a rejected response: every [`Loss`] but SFT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreferenceLoss {
    Dpo,
    Simpo,
    Ipo,
}

/// How a loss reads a batch: pairs of chosen and rejected rows, or chosen rows alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    Preference(PreferenceLoss),
    Sft,
}

impl Loss {
    pub fn kind(self) -> LossKind {
        match self {
            Loss::Sft => LossKind::Sft,
            Loss::Dpo => LossKind::Preference(PreferenceLoss::Dpo),
            Loss::Simpo => LossKind::Preference(PreferenceLoss::Simpo),
            Loss::Ipo => LossKind::Preference(PreferenceLoss::Ipo),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub loss: Loss,
    pub beta: f64,
    /// SimPO's absolute target margin (not gamma/beta).
    pub gamma: f64,
    /// Count only the first k = min(|y_w|, |y_l|) response tokens of each pair.
    pub poet: bool,
}

/// How many response tokens of each side count: all, or the first k with POET.
pub fn counted_lengths(chosen_len: usize, rejected_len: usize, poet: bool) -> (usize, usize) {
    if poet {
        let k = chosen_len.min(rejected_len);
        (k, k)
    } else {
        (chosen_len, rejected_len)
    }
}

/// Per-token weights of a response of `len` tokens of which the first `counted` count.
/// Positions are completion-relative, so the prompt is never counted.
pub fn prefix_mask(len: usize, counted: usize) -> Vec<f32> {
    (0..len)
        .map(|t| if t < counted { 1.0 } else { 0.0 })
        .collect()
}

/// Per-pair results, in the units of the JSON output of `gaplab eval`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PairStats {
    pub chosen_logps: f64,
    pub rejected_logps: f64,
    pub ref_chosen_logps: Option<f64>,
    pub ref_rejected_logps: Option<f64>,
    pub chosen_tokens: usize,
    pub rejected_tokens: usize,
    pub reward_chosen: f64,
    pub reward_rejected: f64,
    /// r(y_w) - r(y_l), before SimPO's gamma.
    pub margin: f64,
    pub loss: f64,
    /// Full response lengths (before POET).
    pub chosen_len: usize,
    pub rejected_len: usize,
}

pub struct PairOutputs {
    /// Mean loss over pairs, differentiable in the policy.
    pub loss: Tensor,
    pub pairs: Vec<PairStats>,
}

/// Sums of per-token log-probs over the counted tokens of each row, as the product of a
/// [rows, tokens] weight matrix with the packed per-token vector (one differentiable op).
fn weighted_sums(batch: &SeqBatch, counted: &[usize], logps: &Tensor) -> Result<Tensor> {
    let n = batch.num_response_tokens();
    let mut w = vec![0f32; batch.rows() * n];
    for (r, (&off, &c)) in batch.offsets.iter().zip(counted).enumerate() {
        w[r * n + off..r * n + off + c].fill(1.0);
    }
    let w = Tensor::from_vec(w, (batch.rows(), n), logps.device())?.to_dtype(logps.dtype())?;
    Ok(w.matmul(&logps.unsqueeze(1)?)?.squeeze(1)?)
}

/// Loss math runs in f32 (f64 when the model runs in f64, as gradient checks do).
fn loss_dtype(t: &Tensor) -> DType {
    if t.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// ln(1 + e^x), stable for large |x|.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.relu()? + tail)?)
}

/// What a loss made of a batch.
pub enum LossOutput {
    /// A preference loss, with what it measured of each pair.
    Pairs(PairOutputs),
    /// The SFT loss: mean negative log-likelihood of the chosen responses.
    Sft(Tensor),
}

/// The loss of `obj` on a batch laid out for its kind: `SeqBatch::from_pairs` for a preference
/// loss, `SeqBatch::chosen_only` for SFT (which counts every response token and reads no
/// reference). `policy` and `reference` as in [`preference_loss`].
pub fn loss(
    obj: &Objective,
    batch: &SeqBatch,
    policy: &Tensor,
    reference: Option<&[f32]>,
) -> Result<LossOutput> {
    Ok(match obj.loss.kind() {
        LossKind::Preference(kind) => {
            LossOutput::Pairs(pair_loss(kind, obj, batch, policy, reference)?)
        }
        LossKind::Sft => LossOutput::Sft(sft_loss(batch, policy, &batch.response_lens)?),
    })
}

/// Preference loss of a batch laid out as `SeqBatch::from_pairs` (chosen rows, then rejected
/// rows). `policy` holds per-token log-probs [tokens] (with gradient); `reference` the same
/// under the reference model, required by DPO and IPO.
pub fn preference_loss(
    obj: &Objective,
    batch: &SeqBatch,
    policy: &Tensor,
    reference: Option<&[f32]>,
) -> Result<PairOutputs> {
    match obj.loss.kind() {
        LossKind::Preference(kind) => pair_loss(kind, obj, batch, policy, reference),
        LossKind::Sft => bail!("sft is not a preference loss"),
    }
}

fn pair_loss(
    kind: PreferenceLoss,
    obj: &Objective,
    batch: &SeqBatch,
    policy: &Tensor,
    reference: Option<&[f32]>,
) -> Result<PairOutputs> {
    let b = batch.rows() / 2;
    if b == 0 || batch.rows() != 2 * b {
        bail!("a preference batch needs chosen and rejected rows for every pair");
    }
    let lens = &batch.response_lens;
    let counted: Vec<(usize, usize)> = (0..b)
        .map(|i| counted_lengths(lens[i], lens[b + i], obj.poet))
        .collect();
    let row_counts: Vec<usize> = counted
        .iter()
        .map(|c| c.0)
        .chain(counted.iter().map(|c| c.1))
        .collect();
    let dt = loss_dtype(policy);
    let seq = weighted_sums(batch, &row_counts, &policy.to_dtype(dt)?)?;
    let device = seq.device().clone();
    let (pol_w, pol_l) = (seq.narrow(0, 0, b)?, seq.narrow(0, b, b)?);
    // SimPO has no reference: any reference log-probs passed in are ignored.
    let ref_sums: Option<Vec<f64>> = reference.filter(|_| obj.loss.needs_reference()).map(|r| {
        batch
            .split(r)
            .iter()
            .zip(&row_counts)
            .map(|(row, &c)| row[..c].iter().map(|&x| x as f64).sum())
            .collect()
    });
    let vec_t =
        |v: Vec<f64>| -> Result<Tensor> { Ok(Tensor::from_vec(v, b, &device)?.to_dtype(dt)?) };
    let n_w = vec_t(counted.iter().map(|c| c.0 as f64).collect())?;
    let n_l = vec_t(counted.iter().map(|c| c.1 as f64).collect())?;
    let beta = obj.beta;
    // log pi(y|x) - log pi_ref(y|x) of the chosen and the rejected responses.
    let ratios = |rs: &[f64]| -> Result<(Tensor, Tensor)> {
        let ref_w = vec_t(rs[..b].to_vec())?;
        let ref_l = vec_t(rs[b..].to_vec())?;
        Ok(((&pol_w - ref_w)?, (&pol_l - ref_l)?))
    };
    let (loss, reward_w, reward_l) = match (kind, ref_sums.as_deref()) {
        (PreferenceLoss::Dpo, Some(rs)) => {
            let (ratio_w, ratio_l) = ratios(rs)?;
            let logits = ((&ratio_w - &ratio_l)? * beta)?;
            (
                softplus(&logits.neg()?)?,
                (ratio_w * beta)?,
                (ratio_l * beta)?,
            )
        }
        (PreferenceLoss::Ipo, Some(rs)) => {
            let (ratio_w, ratio_l) = ratios(rs)?;
            let mean_w = ratio_w.div(&n_w)?;
            let mean_l = ratio_l.div(&n_l)?;
            let h = (&mean_w - &mean_l)?;
            (
                (h - 1.0 / (2.0 * beta))?.sqr()?,
                (mean_w * beta)?,
                (mean_l * beta)?,
            )
        }
        (PreferenceLoss::Dpo | PreferenceLoss::Ipo, None) => {
            bail!("{} needs reference log-probs", obj.loss)
        }
        (PreferenceLoss::Simpo, _) => {
            let r_w = (pol_w.div(&n_w)? * beta)?;
            let r_l = (pol_l.div(&n_l)? * beta)?;
            let z = ((&r_w - &r_l)? - obj.gamma)?;
            (softplus(&z.neg()?)?, r_w, r_l)
        }
    };
    let host = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.detach().to_dtype(DType::F64)?.to_vec1()?) };
    let (seq_h, loss_h) = (host(&seq)?, host(&loss)?);
    let (rw_h, rl_h) = (host(&reward_w)?, host(&reward_l)?);
    let pairs = (0..b)
        .map(|i| PairStats {
            chosen_logps: seq_h[i],
            rejected_logps: seq_h[b + i],
            ref_chosen_logps: ref_sums.as_ref().map(|r| r[i]),
            ref_rejected_logps: ref_sums.as_ref().map(|r| r[b + i]),
            chosen_tokens: counted[i].0,
            rejected_tokens: counted[i].1,
            reward_chosen: rw_h[i],
            reward_rejected: rl_h[i],
            margin: rw_h[i] - rl_h[i],
            loss: loss_h[i],
            chosen_len: lens[i],
            rejected_len: lens[b + i],
        })
        .collect();
    Ok(PairOutputs {
        loss: loss.mean_all()?,
        pairs,
    })
}

/// Supervised loss: mean negative log-likelihood over the counted response tokens of all rows
/// (`counted[r]` tokens of row r; pass the full lengths to count everything).
pub fn sft_loss(batch: &SeqBatch, policy: &Tensor, counted: &[usize]) -> Result<Tensor> {
    let total: usize = counted.iter().sum();
    if total == 0 {
        bail!("sft: no response tokens to train on");
    }
    let sums = weighted_sums(batch, counted, &policy.to_dtype(loss_dtype(policy))?)?;
    Ok((sums.sum_all()?.neg()? / total as f64)?)
}

/// Batch means with TRL's metric names.
pub fn pair_metrics(pairs: &[PairStats], loss: f64) -> Vec<(&'static str, f64)> {
    let n = pairs.len().max(1) as f64;
    let mean = |f: &dyn Fn(&PairStats) -> f64| pairs.iter().map(f).sum::<f64>() / n;
    let kept: usize = pairs
        .iter()
        .map(|p| p.chosen_tokens + p.rejected_tokens)
        .sum();
    let total: usize = pairs.iter().map(|p| p.chosen_len + p.rejected_len).sum();
    vec![
        ("loss", loss),
        ("rewards/chosen", mean(&|p| p.reward_chosen)),
        ("rewards/rejected", mean(&|p| p.reward_rejected)),
        ("rewards/margins", mean(&|p| p.margin)),
        (
            "rewards/accuracies",
            mean(&|p| (p.reward_chosen > p.reward_rejected) as u8 as f64),
        ),
        ("logps/chosen", mean(&|p| p.chosen_logps)),
        ("logps/rejected", mean(&|p| p.rejected_logps)),
        ("poet/k", mean(&|p| p.chosen_len.min(p.rejected_len) as f64)),
        ("poet/kept_frac", kept as f64 / total.max(1) as f64),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A batch of `pairs` with given chosen/rejected response lengths and per-token log-probs.
    fn batch(lens: &[(usize, usize)]) -> SeqBatch {
        let prompt = [1u32];
        let chosen: Vec<Vec<u32>> = lens.iter().map(|l| vec![2; l.0]).collect();
        let rejected: Vec<Vec<u32>> = lens.iter().map(|l| vec![3; l.1]).collect();
        let rows: Vec<(&[u32], &[u32])> = chosen
            .iter()
            .chain(&rejected)
            .map(|r| (&prompt[..], r.as_slice()))
            .collect();
        SeqBatch::new(&rows, 0, &Device::Cpu).unwrap()
    }

    fn obj(loss: Loss, poet: bool) -> Objective {
        Objective {
            loss,
            beta: 0.5,
            gamma: 0.25,
            poet,
        }
    }

    fn softplus64(x: f64) -> f64 {
        (1.0 + x.exp()).ln()
    }

    // One pair: chosen [-1, -2, -3] (3 tokens), rejected [-2, -2] (2 tokens);
    // reference chosen [-1.5, -1.5, -1.5], rejected [-1, -1].
    const POL: [f32; 5] = [-1.0, -2.0, -3.0, -2.0, -2.0];
    const REF: [f32; 5] = [-1.5, -1.5, -1.5, -1.0, -1.0];

    fn run(o: Objective) -> PairStats {
        let b = batch(&[(3, 2)]);
        let pol = Tensor::new(&POL, &Device::Cpu).unwrap();
        let out = preference_loss(&o, &b, &pol, Some(&REF)).unwrap();
        let mut p = out.pairs[0].clone();
        assert!((out.loss.to_scalar::<f32>().unwrap() as f64 - p.loss).abs() < 1e-6);
        p.loss = (p.loss * 1e5).round() / 1e5;
        p
    }

    #[test]
    fn dpo_by_hand() {
        // ratio_w = -6 - (-4.5) = -1.5, ratio_l = -4 - (-2) = -2; margin = 0.5 * 0.5 = 0.25
        let p = run(obj(Loss::Dpo, false));
        assert!((p.margin - 0.25).abs() < 1e-6);
        assert!((p.loss - softplus64(-0.25)).abs() < 1e-5);
        assert_eq!((p.chosen_tokens, p.rejected_tokens), (3, 2));
        // POET: k = 2. ratio_w = -3 - (-3) = 0, ratio_l = -2; margin = 0.5 * 2 = 1
        let p = run(obj(Loss::Dpo, true));
        assert!((p.margin - 1.0).abs() < 1e-6);
        assert!((p.loss - softplus64(-1.0)).abs() < 1e-5);
        assert_eq!((p.chosen_logps, p.ref_chosen_logps), (-3.0, Some(-3.0)));
        assert_eq!((p.chosen_tokens, p.rejected_tokens), (2, 2));
    }

    #[test]
    fn simpo_by_hand() {
        // r_w = 0.5 * -6/3 = -1, r_l = 0.5 * -4/2 = -1; loss = softplus(-(0 - 0.25))
        let p = run(obj(Loss::Simpo, false));
        assert!(p.margin.abs() < 1e-6);
        assert!((p.loss - softplus64(0.25)).abs() < 1e-5);
        assert_eq!(p.ref_chosen_logps, None);
        // POET: both divided by k = 2: r_w = 0.5 * -3/2 = -0.75, r_l = -1; margin 0.25
        let p = run(obj(Loss::Simpo, true));
        assert!((p.margin - 0.25).abs() < 1e-6);
        assert!((p.loss - softplus64(0.0)).abs() < 1e-5);
    }

    #[test]
    fn ipo_by_hand() {
        // h = -1.5/3 - (-2/2) = 0.5; loss = (0.5 - 1)^2 = 0.25; margin = 0.5 * 0.5
        let p = run(obj(Loss::Ipo, false));
        assert!((p.loss - 0.25).abs() < 1e-5);
        assert!((p.margin - 0.25).abs() < 1e-6);
        // POET: h = 0/2 - (-2/2) = 1; loss = 0
        let p = run(obj(Loss::Ipo, true));
        assert!(p.loss.abs() < 1e-5);
    }

    #[test]
    fn equal_lengths_are_unchanged_by_poet() {
        let b = batch(&[(2, 2)]);
        let pol = Tensor::new(&[-1.0f32, -2.0, -0.5, -4.0], &Device::Cpu).unwrap();
        let r = [-1.0f32, -1.0, -1.0, -1.0];
        for loss in [Loss::Dpo, Loss::Simpo, Loss::Ipo] {
            let a = preference_loss(&obj(loss, false), &b, &pol, Some(&r)).unwrap();
            let p = preference_loss(&obj(loss, true), &b, &pol, Some(&r)).unwrap();
            assert_eq!(a.pairs, p.pairs, "{loss}");
        }
    }

    #[test]
    fn identical_responses_give_zero_margin() {
        let b = batch(&[(3, 3)]);
        let pol = Tensor::new(&[-1.0f32, -2.0, -3.0, -1.0, -2.0, -3.0], &Device::Cpu).unwrap();
        let r = [-2.0f32; 6];
        for (loss, expect) in [
            (Loss::Dpo, std::f64::consts::LN_2),
            (Loss::Simpo, softplus64(0.25)),
            (Loss::Ipo, 1.0),
        ] {
            let p = preference_loss(&obj(loss, false), &b, &pol, Some(&r))
                .unwrap()
                .pairs[0]
                .clone();
            assert!(p.margin.abs() < 1e-7, "{loss}");
            assert!((p.loss - expect).abs() < 1e-5, "{loss}: {}", p.loss);
        }
    }

    #[test]
    fn poet_mask_keeps_shorter_eos_and_cuts_longer_tail() {
        // chosen 5 tokens (EOS at index 4), rejected 3 tokens (EOS at index 2): k = 3.
        let (nw, nl) = counted_lengths(5, 3, true);
        assert_eq!((nw, nl), (3, 3));
        let rejected = prefix_mask(3, nl);
        assert_eq!(
            rejected,
            vec![1.0, 1.0, 1.0],
            "the shorter side keeps its EOS"
        );
        let chosen = prefix_mask(5, nw);
        assert_eq!(
            chosen,
            vec![1.0, 1.0, 1.0, 0.0, 0.0],
            "the longer side loses its tail"
        );
        assert_eq!(counted_lengths(5, 3, false), (5, 3));
        assert_eq!(counted_lengths(4, 4, true), (4, 4));
    }

    #[test]
    fn prompt_tokens_never_count() {
        // Long prompt, one-token responses: only the response token's log-prob is summed.
        let prompt = [1u32, 1, 1, 1];
        let rows: Vec<(&[u32], &[u32])> = vec![(&prompt, &[2]), (&prompt, &[3])];
        let b = SeqBatch::new(&rows, 0, &Device::Cpu).unwrap();
        assert_eq!(b.num_response_tokens(), 2);
        let pol = Tensor::new(&[-0.5f32, -0.25], &Device::Cpu).unwrap();
        let out = preference_loss(&obj(Loss::Simpo, true), &b, &pol, None).unwrap();
        assert_eq!(out.pairs[0].chosen_logps, -0.5);
        assert_eq!(out.pairs[0].rejected_logps, -0.25);
    }

    #[test]
    fn sft_is_token_mean_nll() {
        let b = batch(&[(3, 2)]);
        let chosen_rows = [b.response_lens[0]];
        let pol = Tensor::new(&POL[..3], &Device::Cpu).unwrap();
        let rows: Vec<(&[u32], &[u32])> = vec![(&[1], &[2, 2, 2])];
        let sb = SeqBatch::new(&rows, 0, &Device::Cpu).unwrap();
        let l = sft_loss(&sb, &pol, &chosen_rows).unwrap();
        assert!((l.to_scalar::<f32>().unwrap() - 2.0).abs() < 1e-6);
        let l = sft_loss(&sb, &pol, &[2]).unwrap();
        assert!((l.to_scalar::<f32>().unwrap() - 1.5).abs() < 1e-6);
    }

    #[test]
    fn loss_dispatches_on_the_kind_of_loss() {
        // SFT reads chosen rows alone and counts every response token: -(-1 - 2 - 3) / 3.
        let rows: Vec<(&[u32], &[u32])> = vec![(&[1], &[2, 2, 2])];
        let sb = SeqBatch::new(&rows, 0, &Device::Cpu).unwrap();
        let pol = Tensor::new(&POL[..3], &Device::Cpu).unwrap();
        match loss(&obj(Loss::Sft, true), &sb, &pol, None).unwrap() {
            LossOutput::Sft(l) => assert!((l.to_scalar::<f32>().unwrap() - 2.0).abs() < 1e-6),
            LossOutput::Pairs(_) => panic!("sft scored pairs"),
        }
        let b = batch(&[(3, 2)]);
        let pol = Tensor::new(&POL, &Device::Cpu).unwrap();
        match loss(&obj(Loss::Dpo, false), &b, &pol, Some(&REF)).unwrap() {
            LossOutput::Pairs(out) => assert!((out.pairs[0].margin - 0.25).abs() < 1e-6),
            LossOutput::Sft(_) => panic!("dpo scored chosen rows alone"),
        }
        let e = preference_loss(&obj(Loss::Sft, false), &b, &pol, Some(&REF));
        assert!(e
            .err()
            .unwrap()
            .to_string()
            .contains("not a preference loss"));
        let e = preference_loss(&obj(Loss::Ipo, false), &b, &pol, None);
        assert!(e.err().unwrap().to_string().contains("ipo needs reference"));
    }

    #[test]
    fn metrics_use_trl_names() {
        let p = run(obj(Loss::Dpo, true));
        let m = pair_metrics(&[p], 0.3);
        let names: Vec<&str> = m.iter().map(|x| x.0).collect();
        for n in [
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        let get = |k: &str| m.iter().find(|x| x.0 == k).unwrap().1;
        assert_eq!(get("rewards/accuracies"), 1.0);
        assert!((get("poet/kept_frac") - 4.0 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn one_name_table_spells_every_loss() {
        for l in Loss::ALL {
            assert_eq!(l.to_string(), l.name());
            assert_eq!(l.name().parse::<Loss>().unwrap(), l);
            assert_eq!(
                serde_json::to_string(&l).unwrap(),
                format!("\"{}\"", l.name())
            );
            assert_eq!(
                serde_json::from_str::<Loss>(&format!("\"{}\"", l.name())).unwrap(),
                l
            );
        }
        assert_eq!(
            "kto".parse::<Loss>().unwrap_err().to_string(),
            "unknown objective \"kto\" (expected sft, dpo, simpo or ipo)"
        );
        // The message serde's derive gives, which gaplab.toml errors show.
        let err = serde_json::from_str::<Loss>("\"kto\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unknown variant `kto`, expected one of `sft`, `dpo`, `simpo`, `ipo`"),
            "{err}"
        );
    }

    #[test]
    fn the_command_line_offers_only_preference_losses() {
        use clap::ValueEnum;
        let offered: Vec<String> = Loss::value_variants()
            .iter()
            .filter_map(|l| l.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(offered, ["dpo", "simpo", "ipo"]);
        assert!(Loss::Sft.to_possible_value().is_none());
        assert_eq!(<Loss as ValueEnum>::from_str("ipo", false), Ok(Loss::Ipo));
        assert!(<Loss as ValueEnum>::from_str("sft", false).is_err());
    }

    #[test]
    fn or_list_joins_names() {
        assert_eq!(or_list(&[]), "");
        assert_eq!(or_list(&["a"]), "a");
        assert_eq!(or_list(&["a", "b"]), "a or b");
        assert_eq!(or_list(&["a", "b", "c"]), "a, b or c");
    }
}
