//! Objectives: per-token log-probs -> token weights (POET and its neighbours, `tokens`) ->
//! sequence scores -> the loss terms TRL defines (`losses`) -> the TRL-named metrics. The
//! notation is research.md's: `chosen` = y_w, `rejected` = y_l, `logps` are sums of per-token
//! log-probs over the tokens counted.

mod dual;
pub mod losses;
pub mod prefix;
pub mod tokens;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::SeqBatch;
pub use dual::{log_sigmoid, sigmoid};
pub use losses::{PairScores, Params};
pub use tokens::{Poet, TokenScheme};

/// A loss term, named as TRL spells it (`dpo` is accepted for `sigmoid`). The first fifteen
/// are TRL DPOTrainer's `loss_type`s and mix with weights; the reference-free ones are TRL's
/// CPOTrainer (`cpo`, `slic` = its hinge, `simpo`, `alphapo` = simpo with `alpha`) and
/// ORPOTrainer (`orpo`), each alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loss {
    /// −log σ(βδ): DPO.
    Sigmoid,
    /// max(0, 1 − βδ): SLiC-HF against a reference.
    Hinge,
    /// (s_w/n_w − s_l/n_l − 1/(2β))², per-token normalised as TRL.
    Ipo,
    ExoPair,
    NcaPair,
    /// Label-noise-robust DPO.
    Robust,
    BcoPair,
    SppoHard,
    /// Distributional alignment via optimal transport: the batch's margins sorted.
    Aot,
    AotUnpaired,
    ApoZero,
    ApoDown,
    Discopop,
    /// −log σ(β(s_w/n_w − s_l/n_l)).
    SigmoidNorm,
    /// Mean NLL of the chosen response tokens.
    Sft,
    /// −log σ(β(logp_w/n_w − logp_l/n_l) − γ), no reference.
    Simpo,
    /// −log σ(β(logp_w − logp_l)) + cpo_alpha·NLL(y_w).
    Cpo,
    /// max(0, 1 − β(logp_w − logp_l)) + cpo_alpha·NLL(y_w): CPO's hinge, SLiC.
    Slic,
    /// NLL(y_w) − λ log σ(log odds(y_w) − log odds(y_l)), λ = beta.
    Orpo,
    /// SimPO on AlphaPO's shaped rewards (1 − e^(−α·ℓ))/α.
    Alphapo,
}

impl Loss {
    /// Every loss, in declaration order (serde's variant index) and the order messages list them.
    pub const ALL: [Loss; 20] = [
        Loss::Sigmoid,
        Loss::Hinge,
        Loss::Ipo,
        Loss::ExoPair,
        Loss::NcaPair,
        Loss::Robust,
        Loss::BcoPair,
        Loss::SppoHard,
        Loss::Aot,
        Loss::AotUnpaired,
        Loss::ApoZero,
        Loss::ApoDown,
        Loss::Discopop,
        Loss::SigmoidNorm,
        Loss::Sft,
        Loss::Simpo,
        Loss::Cpo,
        Loss::Slic,
        Loss::Orpo,
        Loss::Alphapo,
    ];

    /// [`Loss::name`] of each of [`Loss::ALL`], for serde's "expected one of" messages.
    const NAMES: [&'static str; 20] = {
        let mut names = [""; 20];
        let mut i = 0;
        while i < names.len() {
            names[i] = Loss::ALL[i].name();
            i += 1;
        }
        names
    };

    /// Other spellings accepted on input.
    const ALIASES: [(&'static str, Loss); 1] = [("dpo", Loss::Sigmoid)];

    /// The one spelling of each loss: in gaplab.toml, on the command line, in run directories
    /// and in output (TRL's).
    pub const fn name(self) -> &'static str {
        match self {
            Loss::Sigmoid => "sigmoid",
            Loss::Hinge => "hinge",
            Loss::Ipo => "ipo",
            Loss::ExoPair => "exo_pair",
            Loss::NcaPair => "nca_pair",
            Loss::Robust => "robust",
            Loss::BcoPair => "bco_pair",
            Loss::SppoHard => "sppo_hard",
            Loss::Aot => "aot",
            Loss::AotUnpaired => "aot_unpaired",
            Loss::ApoZero => "apo_zero",
            Loss::ApoDown => "apo_down",
            Loss::Discopop => "discopop",
            Loss::SigmoidNorm => "sigmoid_norm",
            Loss::Sft => "sft",
            Loss::Simpo => "simpo",
            Loss::Cpo => "cpo",
            Loss::Slic => "slic",
            Loss::Orpo => "orpo",
            Loss::Alphapo => "alphapo",
        }
    }

    pub fn from_name(name: &str) -> Option<Loss> {
        Loss::ALL
            .into_iter()
            .find(|l| l.name() == name)
            .or_else(|| Loss::ALIASES.iter().find(|a| a.0 == name).map(|a| a.1))
    }

    /// Reads reference log-probs: every DPOTrainer loss but `sft`.
    pub fn needs_reference(self) -> bool {
        !self.is_reference_free() && self != Loss::Sft
    }

    /// CPOTrainer's and ORPOTrainer's losses, which stand alone (no mixtures).
    pub fn is_reference_free(self) -> bool {
        matches!(
            self,
            Loss::Simpo | Loss::Cpo | Loss::Slic | Loss::Orpo | Loss::Alphapo
        )
    }

    /// The losses TRL lets an f-divergence other than reverse KL change.
    pub fn takes_f_divergence(self) -> bool {
        matches!(
            self,
            Loss::Sigmoid
                | Loss::SigmoidNorm
                | Loss::Hinge
                | Loss::Ipo
                | Loss::ExoPair
                | Loss::Robust
                | Loss::Discopop
                | Loss::Sft
        )
    }

    /// The losses of the margin logits βδ, which R-DPO's length term shifts.
    pub fn takes_length_regulariser(self) -> bool {
        matches!(
            self,
            Loss::Sigmoid | Loss::Hinge | Loss::ExoPair | Loss::Robust | Loss::Discopop
        )
    }

    /// The losses that read label_smoothing.
    pub fn takes_label_smoothing(self) -> bool {
        matches!(
            self,
            Loss::ExoPair
                | Loss::Robust
                | Loss::Aot
                | Loss::AotUnpaired
                | Loss::Simpo
                | Loss::Cpo
                | Loss::Alphapo
        )
    }

    /// The losses whose value depends on which pairs share the batch.
    pub fn sorts_batch(self) -> bool {
        matches!(self, Loss::Aot | Loss::AotUnpaired)
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
            anyhow::anyhow!("unknown loss \"{s}\" (expected {})", or_list(&Loss::NAMES))
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
                            &"variant index 0 <= i < 20",
                        )
                    })
            }
        }
        d.deserialize_identifier(Id)
    }
}

/// The command line's `--objective` values: every loss, by [`Loss::name`] (and its aliases).
impl clap::ValueEnum for Loss {
    fn value_variants<'a>() -> &'a [Self] {
        &Loss::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let v = clap::builder::PossibleValue::new(self.name());
        Some(
            Loss::ALIASES
                .iter()
                .filter(|a| a.1 == *self)
                .fold(v, |v, a| v.alias(a.0)),
        )
    }
}

/// How a batch is laid out for an objective: pairs of chosen and rejected rows, or chosen rows
/// alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    Preference,
    Sft,
}

/// The `objective` setting: one loss name or a list of them (TRL's `loss_type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LossList(pub Vec<Loss>);

impl Default for LossList {
    fn default() -> Self {
        LossList(vec![Loss::Sigmoid])
    }
}

impl fmt::Display for LossList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|l| l.name()).collect();
        f.write_str(&names.join("+"))
    }
}

impl Serialize for LossList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for LossList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LossList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a loss name or a list of loss names")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<LossList, E> {
                Loss::from_name(s)
                    .map(|l| LossList(vec![l]))
                    .ok_or_else(|| E::unknown_variant(s, &Loss::NAMES))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<LossList, A::Error> {
                let mut out = Vec::new();
                while let Some(l) = seq.next_element::<Loss>()? {
                    out.push(l);
                }
                if out.is_empty() {
                    return Err(serde::de::Error::invalid_length(0, &"at least one loss"));
                }
                Ok(LossList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// TRL's `f_divergence_type`: the function of the log-ratio the margin compares.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum FDivergence {
    #[default]
    ReverseKl,
    ForwardKl,
    JsDivergence,
    /// With TRL's f_alpha_divergence_coef.
    AlphaDivergence(f64),
}

/// The `f_divergence_type` setting (its coefficient is a setting of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FDivergenceType {
    #[default]
    ReverseKl,
    ForwardKl,
    JsDivergence,
    AlphaDivergence,
}

impl FDivergenceType {
    const ALL: [FDivergenceType; 4] = [
        FDivergenceType::ReverseKl,
        FDivergenceType::ForwardKl,
        FDivergenceType::JsDivergence,
        FDivergenceType::AlphaDivergence,
    ];

    /// TRL's spelling, as in gaplab.toml.
    pub const fn name(self) -> &'static str {
        match self {
            FDivergenceType::ReverseKl => "reverse_kl",
            FDivergenceType::ForwardKl => "forward_kl",
            FDivergenceType::JsDivergence => "js_divergence",
            FDivergenceType::AlphaDivergence => "alpha_divergence",
        }
    }

    pub fn from_name(name: &str) -> Result<FDivergenceType> {
        FDivergenceType::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let names = FDivergenceType::ALL.map(FDivergenceType::name);
                anyhow::anyhow!(
                    "unknown f-divergence \"{name}\" (expected {})",
                    or_list(&names)
                )
            })
    }

    pub fn with_coef(self, alpha_coef: f64) -> FDivergence {
        match self {
            FDivergenceType::ReverseKl => FDivergence::ReverseKl,
            FDivergenceType::ForwardKl => FDivergence::ForwardKl,
            FDivergenceType::JsDivergence => FDivergence::JsDivergence,
            FDivergenceType::AlphaDivergence => FDivergence::AlphaDivergence(alpha_coef),
        }
    }
}

/// An objective: the loss terms with their weights, their coefficients and which tokens count.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// TRL's loss_type list with loss_weights (one entry for a single loss).
    pub mixture: Vec<(Loss, f64)>,
    pub params: Params,
    pub tokens: TokenScheme,
    /// WPO: each pair's loss weighted by how likely the policy finds both responses.
    pub use_weighting: bool,
    /// The tokenizer's EOS id, where keep_eos finds a response's end.
    pub eos: Option<u32>,
}

impl Objective {
    /// One loss with TRL's default coefficients, every token counted (or POET's k).
    pub fn single(loss: Loss, beta: f64, poet: bool) -> Objective {
        Objective {
            mixture: vec![(loss, 1.0)],
            params: Params {
                beta,
                gamma: 1.0,
                label_smoothing: 0.0,
                f_divergence: FDivergence::ReverseKl,
                discopop_tau: 0.05,
                cpo_alpha: 1.0,
                alpha: 0.0,
                rdpo_alpha: 0.0,
            },
            tokens: TokenScheme {
                poet: if poet { Poet::Min } else { Poet::Off },
                ..TokenScheme::PLAIN
            },
            use_weighting: false,
            eos: None,
        }
    }

    /// The loss that defines the rewards and the prefix diagnostics: the first that is not
    /// `sft` (`sft` when that is all there is).
    pub fn primary(&self) -> Loss {
        losses::primary(&self.mixture)
    }

    pub fn needs_reference(&self) -> bool {
        self.mixture.iter().any(|m| m.0.needs_reference())
    }

    /// Nothing but the chosen NLL: chosen rows alone are enough.
    pub fn is_sft_only(&self) -> bool {
        self.mixture.iter().all(|m| m.0 == Loss::Sft)
    }

    /// How a batch is laid out for this objective.
    pub fn kind(&self) -> LossKind {
        if self.is_sft_only() {
            LossKind::Sft
        } else {
            LossKind::Preference
        }
    }

    pub fn poet(&self) -> bool {
        self.tokens.poet.is_on()
    }

    /// The implicit reward of one response from its summed (prefix) log-probs.
    pub fn reward(&self, logps: f64, ref_logps: Option<f64>, counted: usize) -> f64 {
        let s = PairScores {
            logps: [logps, 0.0],
            ref_logps: ref_logps.map(|r| [r, 0.0]),
            counted: [counted, 1],
            weight: 1.0,
        };
        losses::rewards(self.primary(), &self.params, &s)[0]
    }
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
    /// The batch's loss, differentiable in the policy.
    pub loss: Tensor,
    pub pairs: Vec<PairStats>,
    /// The mean NLL of the chosen responses, when the objective has an NLL term.
    pub nll_loss: Option<f64>,
}

/// The dtype of the loss tensor that carries the (f64, host) loss into the graph: f32, or f64
/// when the model runs in f64, as gradient checks do.
fn loss_dtype(t: &Tensor) -> DType {
    if t.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// What a loss made of a batch.
pub enum LossOutput {
    /// A preference loss, with what it measured of each pair.
    Pairs(PairOutputs),
    /// The SFT loss: mean negative log-likelihood of the chosen responses.
    Sft(Tensor),
}

/// Per-token extras some objectives read, packed as the batch's response tokens.
#[derive(Clone, Copy, Default)]
pub struct TokenExtras<'a> {
    /// log Σ_v π(v)² at each position (WPO's weights).
    pub log_sum_sq: Option<&'a [f32]>,
}

/// The loss of `obj` on a batch laid out for its kind: `SeqBatch::from_pairs` for a preference
/// objective, `SeqBatch::chosen_only` for SFT alone (which counts every response token and
/// reads no reference). `policy` holds per-token log-probs [tokens] (with gradient);
/// `reference` the same under the reference model.
pub fn loss(
    obj: &Objective,
    batch: &SeqBatch,
    policy: &Tensor,
    reference: Option<&[f32]>,
    extras: TokenExtras,
) -> Result<LossOutput> {
    Ok(match obj.kind() {
        LossKind::Preference => {
            LossOutput::Pairs(pair_loss(obj, batch, policy, reference, extras)?)
        }
        LossKind::Sft => LossOutput::Sft(sft_loss(batch, policy, &batch.response_lens)?),
    })
}

/// Preference loss of a batch laid out as `SeqBatch::from_pairs` (chosen rows, then rejected
/// rows).
pub fn preference_loss(
    obj: &Objective,
    batch: &SeqBatch,
    policy: &Tensor,
    reference: Option<&[f32]>,
) -> Result<PairOutputs> {
    if obj.is_sft_only() {
        bail!("sft alone is not a preference loss");
    }
    pair_loss(obj, batch, policy, reference, TokenExtras::default())
}

/// WPO's weight of one response: exp(mean_t (log π(y_t) − log Σ_v π(v)²)) over all its tokens.
pub fn wpo_weight(logps: &[f64], log_sum_sq: &[f32]) -> f64 {
    let n = logps.len().max(1) as f64;
    let s: f64 = logps
        .iter()
        .zip(log_sum_sq)
        .map(|(&l, &q)| l - q as f64)
        .sum();
    (s / n).exp()
}

/// The preference loss of a batch laid out as `SeqBatch::from_pairs`, whatever the objective
/// (`sft` alone too, as TRL's DPOTrainer computes it on pairs).
pub fn pair_loss(
    obj: &Objective,
    batch: &SeqBatch,
    policy: &Tensor,
    reference: Option<&[f32]>,
    extras: TokenExtras,
) -> Result<PairOutputs> {
    let b = batch.rows() / 2;
    if b == 0 || batch.rows() != 2 * b {
        bail!("a preference batch needs chosen and rejected rows for every pair");
    }
    let dt = loss_dtype(policy);
    let pol_all: Vec<f64> = policy.detach().to_dtype(DType::F64)?.to_vec1()?;
    let pol = batch.split(&pol_all);
    // `sft` alone reads no reference but logs DPOTrainer's rewards when there is one.
    let refs = match (obj.needs_reference(), reference) {
        (true, None) => bail!("{} needs reference log-probs", obj.primary()),
        (_, Some(r)) if !obj.primary().is_reference_free() => Some(batch.split(r)),
        _ => None,
    };
    let ids = batch.split(&batch.target_ids);
    let lss = extras.log_sum_sq.map(|q| batch.split(q));
    if obj.use_weighting && lss.is_none() {
        bail!("WPO weighting needs log Σ π² of every response token");
    }
    let lens = &batch.response_lens;
    let mut weights = Vec::with_capacity(b);
    let mut scores = Vec::with_capacity(b);
    let sum = |vals: &[f64], w: &[f64]| -> f64 { vals.iter().zip(w).map(|(v, w)| v * w).sum() };
    let sum32 =
        |vals: &[f32], w: &[f64]| -> f64 { vals.iter().zip(w).map(|(&v, w)| v as f64 * w).sum() };
    for i in 0..b {
        let rows = [i, b + i];
        let ends = rows.map(|r| obj.eos.map_or(0, |e| tokens::end_len(ids[r], e)));
        let w = tokens::pair_weights(&obj.tokens, rows.map(|r| ids[r]), ends);
        let weight = match &lss {
            Some(q) if obj.use_weighting => {
                rows.iter().map(|&r| wpo_weight(pol[r], q[r])).product()
            }
            _ => 1.0,
        };
        scores.push(PairScores {
            logps: [sum(pol[i], &w[0].w), sum(pol[b + i], &w[1].w)],
            ref_logps: refs
                .as_ref()
                .map(|r| [sum32(r[i], &w[0].w), sum32(r[b + i], &w[1].w)]),
            counted: [w[0].counted, w[1].counted],
            weight,
        });
        weights.push(w);
    }
    // TRL's NLL terms: the mean over every chosen response token.
    let chosen_tokens: usize = lens[..b].iter().sum();
    let nll = -pol[..b].iter().flat_map(|r| r.iter()).sum::<f64>() / chosen_tokens.max(1) as f64;
    let out = losses::batch_loss(&obj.mixture, &obj.params, &scores, nll)?;
    // d loss / d per-token log-prob, then the loss as a linear function of the tokens with
    // exactly these derivatives and the loss's value.
    let mut grad = vec![0f64; pol_all.len()];
    for (i, (pair_w, pair_g)) in weights.iter().zip(&out.grad).enumerate() {
        for (side, r) in [i, b + i].into_iter().enumerate() {
            let off = batch.offsets[r];
            for (t, w) in pair_w[side].w.iter().enumerate() {
                grad[off + t] += pair_g[side] * w;
            }
        }
    }
    if out.nll_coef != 0.0 {
        for (&off, &len) in batch.offsets[..b].iter().zip(&lens[..b]) {
            for g in &mut grad[off..off + len] {
                *g -= out.nll_coef / chosen_tokens.max(1) as f64;
            }
        }
    }
    let linear: f64 = grad.iter().zip(&pol_all).map(|(g, l)| g * l).sum();
    let g = Tensor::from_vec(grad, pol_all.len(), policy.device())?.to_dtype(dt)?;
    let loss = ((policy.to_dtype(dt)? * g)?.sum_all()? + (out.value - linear))?;
    let pairs = (0..b)
        .map(|i| PairStats {
            chosen_logps: scores[i].logps[0],
            rejected_logps: scores[i].logps[1],
            ref_chosen_logps: scores[i].ref_logps.map(|r| r[0]),
            ref_rejected_logps: scores[i].ref_logps.map(|r| r[1]),
            chosen_tokens: scores[i].counted[0],
            rejected_tokens: scores[i].counted[1],
            reward_chosen: out.rewards[i][0],
            reward_rejected: out.rewards[i][1],
            margin: out.rewards[i][0] - out.rewards[i][1],
            loss: out.per_pair[i],
            chosen_len: lens[i],
            rejected_len: lens[b + i],
        })
        .collect();
    Ok(PairOutputs {
        loss,
        pairs,
        nll_loss: (out.nll_coef != 0.0).then_some(nll),
    })
}

/// Supervised loss: mean negative log-likelihood over the counted response tokens of all rows
/// (`counted[r]` tokens of row r; pass the full lengths to count everything).
pub fn sft_loss(batch: &SeqBatch, policy: &Tensor, counted: &[usize]) -> Result<Tensor> {
    let total: usize = counted.iter().sum();
    if total == 0 {
        bail!("sft: no response tokens to train on");
    }
    let n = batch.num_response_tokens();
    let mut w = vec![0f32; n];
    for (&off, &c) in batch.offsets.iter().zip(counted) {
        w[off..off + c].fill(1.0);
    }
    let dt = loss_dtype(policy);
    let w = Tensor::from_vec(w, n, policy.device())?.to_dtype(dt)?;
    let sum = (policy.to_dtype(dt)? * w)?.sum_all()?;
    Ok((sum.neg()? / total as f64)?)
}

/// Batch means with TRL's metric names. `logps/*` are what the trainer that defines the
/// objective's loss logs: per-token means for simpo, alphapo and orpo (TRL's CPOTrainer and
/// ORPOTrainer average them), sums otherwise.
pub fn pair_metrics(obj: &Objective, pairs: &[PairStats], loss: f64) -> Vec<(&'static str, f64)> {
    let n = pairs.len().max(1) as f64;
    let averaged = matches!(obj.primary(), Loss::Simpo | Loss::Alphapo | Loss::Orpo);
    let logps = |sum: f64, tokens: usize| {
        if averaged {
            sum / tokens.max(1) as f64
        } else {
            sum
        }
    };
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
        (
            "logps/chosen",
            mean(&|p| logps(p.chosen_logps, p.chosen_tokens)),
        ),
        (
            "logps/rejected",
            mean(&|p| logps(p.rejected_logps, p.rejected_tokens)),
        ),
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
        let mut o = Objective::single(loss, 0.5, poet);
        o.params.gamma = 0.25;
        o
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
        let p = run(obj(Loss::Sigmoid, false));
        assert!((p.margin - 0.25).abs() < 1e-6);
        assert!((p.loss - softplus64(-0.25)).abs() < 1e-5);
        assert_eq!((p.chosen_tokens, p.rejected_tokens), (3, 2));
        // POET: k = 2. ratio_w = -3 - (-3) = 0, ratio_l = -2; margin = 0.5 * 2 = 1
        let p = run(obj(Loss::Sigmoid, true));
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
        // h = -1.5/3 - (-2/2) = 0.5; loss = (0.5 - 1)^2 = 0.25; margin = 0.5 * (-1.5 + 2)
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
        for loss in Loss::ALL
            .into_iter()
            .filter(|l| !l.sorts_batch() && *l != Loss::Sft)
        {
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
            (Loss::Sigmoid, std::f64::consts::LN_2),
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
    fn loss_dispatches_on_the_kind_of_objective() {
        // SFT reads chosen rows alone and counts every response token: -(-1 - 2 - 3) / 3.
        let rows: Vec<(&[u32], &[u32])> = vec![(&[1], &[2, 2, 2])];
        let sb = SeqBatch::new(&rows, 0, &Device::Cpu).unwrap();
        let pol = Tensor::new(&POL[..3], &Device::Cpu).unwrap();
        let none = TokenExtras::default();
        match loss(&obj(Loss::Sft, true), &sb, &pol, None, none).unwrap() {
            LossOutput::Sft(l) => assert!((l.to_scalar::<f32>().unwrap() - 2.0).abs() < 1e-6),
            LossOutput::Pairs(_) => panic!("sft scored pairs"),
        }
        let b = batch(&[(3, 2)]);
        let pol = Tensor::new(&POL, &Device::Cpu).unwrap();
        match loss(&obj(Loss::Sigmoid, false), &b, &pol, Some(&REF), none).unwrap() {
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
    fn a_mixture_adds_the_weighted_chosen_nll() {
        let b = batch(&[(3, 2)]);
        let pol = Tensor::new(&POL, &Device::Cpu).unwrap();
        let mut o = obj(Loss::Sigmoid, false);
        let dpo = preference_loss(&o, &b, &pol, Some(&REF)).unwrap();
        o.mixture.push((Loss::Sft, 0.5));
        let out = preference_loss(&o, &b, &pol, Some(&REF)).unwrap();
        // NLL of the chosen response: (1 + 2 + 3) / 3 = 2.
        let l = out.loss.to_scalar::<f32>().unwrap() as f64;
        let l0 = dpo.loss.to_scalar::<f32>().unwrap() as f64;
        assert!((l - l0 - 1.0).abs() < 1e-6);
        assert_eq!(out.nll_loss, Some(2.0));
    }

    /// d loss / d var.
    fn grad_of<T: candle_core::WithDType>(loss: &Tensor, var: &candle_core::Var) -> Vec<T> {
        let grads = loss.backward().unwrap();
        grads.get(var.as_tensor()).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn gradients_reach_the_counted_tokens_only() {
        let b = batch(&[(3, 2)]);
        let var = candle_core::Var::new(&POL, &Device::Cpu).unwrap();
        let out =
            preference_loss(&obj(Loss::Sigmoid, true), &b, var.as_tensor(), Some(&REF)).unwrap();
        let g: Vec<f32> = grad_of(&out.loss, &var);
        assert_eq!(g[2], 0.0, "POET cut the chosen tail");
        // d/dlogp_w of softplus(-β(ρ_w - ρ_l)) = -β σ(-z), z = 1.
        let expect = -0.5 * dual::sigmoid(-1.0);
        assert!((g[0] as f64 - expect).abs() < 1e-6 && (g[1] as f64 - expect).abs() < 1e-6);
        assert!((g[3] as f64 + expect).abs() < 1e-6);
    }

    /// The loss's gradient with respect to every per-token log-prob, against central
    /// differences, for objectives whose tokens weigh differently.
    #[test]
    fn token_gradients_match_finite_differences() {
        // Two pairs: (chosen 4, rejected 2) and (chosen 2, rejected 3); EOS is 9.
        let rows: Vec<(&[u32], &[u32])> = vec![
            (&[1], &[2, 4, 5, 9]),
            (&[1], &[6, 9]),
            (&[1], &[3, 9]),
            (&[1], &[7, 8, 9]),
        ];
        let b = SeqBatch::new(&rows, 0, &Device::Cpu).unwrap();
        let pol: Vec<f64> = (0..11).map(|i| -0.3 - 0.17 * i as f64).collect();
        let reference: Vec<f32> = (0..11).map(|i| -0.5 - 0.11 * (i % 4) as f32).collect();
        let lss: Vec<f32> = (0..11).map(|i| -1.0 - 0.05 * i as f32).collect();
        let mut cases = Vec::new();
        let base = obj(Loss::Sigmoid, false);
        let mut o = base.clone();
        o.tokens.ld_alpha = Some(0.4);
        o.mixture.push((Loss::Sft, 0.7));
        cases.push(o);
        let mut o = base.clone();
        // (WPO's weights carry no gradient, so finite differences would see them move.)
        o.tokens.position_decay = Some(0.8);
        cases.push(o);
        let mut o = obj(Loss::Ipo, true);
        o.tokens.keep_eos = true;
        o.eos = Some(9);
        cases.push(o);
        let mut o = obj(Loss::Orpo, false);
        o.params.beta = 0.2;
        cases.push(o);
        let mut o = base.clone();
        o.tokens.sampo_seed = Some(3);
        o.mixture = vec![(Loss::AotUnpaired, 1.0)];
        cases.push(o);
        let extras = TokenExtras {
            log_sum_sq: Some(&lss),
        };
        let value = |o: &Objective, p: &[f64]| -> f64 {
            let t = Tensor::new(p, &Device::Cpu).unwrap();
            let LossOutput::Pairs(out) = loss(o, &b, &t, Some(&reference), extras).unwrap() else {
                panic!("pairs")
            };
            out.loss.to_scalar::<f64>().unwrap()
        };
        for o in &cases {
            let var = candle_core::Var::new(pol.as_slice(), &Device::Cpu).unwrap();
            let LossOutput::Pairs(out) =
                loss(o, &b, var.as_tensor(), Some(&reference), extras).unwrap()
            else {
                panic!("pairs")
            };
            assert!((out.loss.to_scalar::<f64>().unwrap() - value(o, &pol)).abs() < 1e-12);
            let g: Vec<f64> = grad_of(&out.loss, &var);
            let h = 1e-6;
            for t in 0..pol.len() {
                let (mut up, mut down) = (pol.clone(), pol.clone());
                up[t] += h;
                down[t] -= h;
                let fd = (value(o, &up) - value(o, &down)) / (2.0 * h);
                assert!(
                    (g[t] - fd).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{:?} token {t}: {} vs {fd}",
                    o.mixture,
                    g[t]
                );
            }
        }
    }

    #[test]
    fn keep_eos_counts_the_end_of_the_cut_response() {
        // chosen [2, 2, 9] ends with EOS 9, rejected [3, 9]: k = 2; keep_eos adds chosen's EOS.
        let rows: Vec<(&[u32], &[u32])> = vec![(&[1], &[2, 2, 9]), (&[1], &[3, 9])];
        let b = SeqBatch::new(&rows, 0, &Device::Cpu).unwrap();
        let pol = Tensor::new(&POL, &Device::Cpu).unwrap();
        let mut o = obj(Loss::Sigmoid, true);
        o.tokens.keep_eos = true;
        o.eos = Some(9);
        let p = preference_loss(&o, &b, &pol, Some(&REF)).unwrap().pairs[0].clone();
        assert_eq!((p.chosen_tokens, p.rejected_tokens), (3, 2));
        assert_eq!(p.chosen_logps, -6.0);
    }

    #[test]
    fn metrics_use_trl_names() {
        let p = run(obj(Loss::Sigmoid, true));
        let m = pair_metrics(&obj(Loss::Sigmoid, true), &[p], 0.3);
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
        assert_eq!("dpo".parse::<Loss>().unwrap(), Loss::Sigmoid);
        assert_eq!(
            serde_json::from_str::<Loss>("\"dpo\"").unwrap(),
            Loss::Sigmoid
        );
        let e = "kto".parse::<Loss>().unwrap_err().to_string();
        assert!(
            e.starts_with("unknown loss \"kto\" (expected sigmoid, hinge, ipo, "),
            "{e}"
        );
        assert!(e.ends_with("orpo or alphapo)"), "{e}");
        // The message serde's derive gives, which gaplab.toml errors show.
        let err = serde_json::from_str::<Loss>("\"kto\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unknown variant `kto`, expected one of `sigmoid`, `hinge`"),
            "{err}"
        );
    }

    #[test]
    fn the_command_line_offers_every_loss_and_the_dpo_alias() {
        use clap::ValueEnum;
        let offered: Vec<String> = Loss::value_variants()
            .iter()
            .filter_map(|l| l.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(offered.len(), Loss::ALL.len());
        assert_eq!(<Loss as ValueEnum>::from_str("ipo", false), Ok(Loss::Ipo));
        assert_eq!(
            <Loss as ValueEnum>::from_str("dpo", false),
            Ok(Loss::Sigmoid)
        );
    }

    #[test]
    fn f_divergences_are_spelled_alike_in_toml_and_on_the_command_line() {
        for f in FDivergenceType::ALL {
            assert_eq!(serde_json::to_value(f).unwrap(), f.name());
            assert_eq!(FDivergenceType::from_name(f.name()).unwrap(), f);
        }
    }

    #[test]
    fn or_list_joins_names() {
        assert_eq!(or_list(&[]), "");
        assert_eq!(or_list(&["a"]), "a");
        assert_eq!(or_list(&["a", "b"]), "a or b");
        assert_eq!(or_list(&["a", "b", "c"]), "a, b or c");
    }
}
