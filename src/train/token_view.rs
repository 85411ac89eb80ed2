//! The token view's records: the first fixed eval pairs token by token (the paper's picture of
//! a chosen and a rejected response coloured by each token's share of the reward margin), with
//! what the policy and the reference would have said instead at each position. Recorded at
//! eval time into the `Eval` event, so an attached dashboard and `gaplab report` show them too.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use crate::data::TokenizedPair;
use crate::event::{Alternative, PairTokens, TokenTrack};
use crate::model::{ops, CausalLm, SeqBatch, Tok};
use crate::objective::prefix::{self, PairTokenLogps};
use crate::objective::Objective;

/// Next-token alternatives recorded per position, for the policy and for the reference.
pub const TOP_K: usize = 5;

/// `x` to `digits` significant digits: the records keep what the view shows, not the float
/// noise that would triple their size.
pub fn round_sig(x: f64, digits: i32) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// Index of the first token where two token sequences differ (None when identical; the shorter
/// one's length when one continues the other).
pub fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (common < a.len().max(b.len())).then_some(common)
}

/// Each token's share of its response's implicit reward: the reward is linear in the summed
/// log-probs (beta * (log pi - log pi_ref), or SimPO's beta * log pi / |y|), so a token's share is
/// the reward of its own term less the reward of nothing. `counted` is the length the objective
/// normalises by (k under POET).
pub fn contributions(
    obj: &Objective,
    logps: &[f32],
    ref_logps: Option<&[f32]>,
    counted: usize,
) -> Vec<f64> {
    let reference = ref_logps.filter(|_| obj.needs_reference());
    let base = obj.reward(0.0, reference.map(|_| 0.0), counted);
    logps
        .iter()
        .enumerate()
        .map(|(t, &l)| obj.reward(l as f64, reference.map(|r| r[t] as f64), counted) - base)
        .collect()
}

/// One response as scored: its ids, per-token log-probs and the logits rows of its positions.
struct Scored<'a> {
    ids: &'a [u32],
    logps: &'a [f32],
    ref_logps: Option<&'a [f32]>,
    logits: Tensor,
    ref_logits: Option<Tensor>,
}

/// The records of the first `pairs` eval pairs, each scored alone (one pair's logits at a
/// time, less than an eval batch holds), at most `max_tokens` tokens per response.
#[allow(clippy::too_many_arguments)]
pub fn record(
    obj: &Objective,
    tok: &Tok,
    device: &Device,
    policy: &CausalLm,
    reference: Option<&CausalLm>,
    cached_ref: Option<&dyn Fn(usize) -> Vec<f32>>,
    pairs: &[TokenizedPair],
    prompts: &[String],
    max_tokens: usize,
) -> Result<Vec<PairTokens>> {
    let mut out = Vec::with_capacity(pairs.len());
    for (i, pair) in pairs.iter().enumerate() {
        let batch = SeqBatch::from_pairs(std::slice::from_ref(pair), tok.pad_id(), device)?;
        let scores = policy.response_scores(&batch)?;
        let pol: Vec<f32> = scores.logps.to_dtype(DType::F32)?.to_vec1()?;
        let (ref_packed, ref_logits) = match (reference, cached_ref) {
            (Some(m), _) => {
                let s = m.response_scores(&batch)?;
                (
                    Some(s.logps.to_dtype(DType::F32)?.to_vec1()?),
                    Some(s.logits),
                )
            }
            (None, Some(cached)) => (Some(cached(i)), None),
            (None, None) => (None, None),
        };
        let rows = batch.split(&pol);
        let ref_rows = ref_packed.as_ref().map(|r| batch.split(r));
        let rows_of = |logits: &Tensor, r: usize| -> Result<Tensor> {
            let n = batch.response_lens[r].min(max_tokens);
            Ok(logits.narrow(0, batch.offsets[r], n)?)
        };
        let scored = |r: usize, ids| -> Result<Scored> {
            Ok(Scored {
                ids,
                logps: rows[r],
                ref_logps: ref_rows.as_ref().map(|x| x[r]),
                logits: rows_of(&scores.logits, r)?,
                ref_logits: ref_logits.as_ref().map(|l| rows_of(l, r)).transpose()?,
            })
        };
        let chosen = scored(0, &pair.chosen)?;
        let rejected = scored(1, &pair.rejected)?;
        out.push(pair_tokens(
            obj,
            tok,
            i,
            prompts.get(i).cloned().unwrap_or_default(),
            pair.prompt.last().copied(),
            &chosen,
            &rejected,
            max_tokens,
        )?);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn pair_tokens(
    obj: &Objective,
    tok: &Tok,
    pair: usize,
    prompt: String,
    prompt_last: Option<u32>,
    chosen: &Scored,
    rejected: &Scored,
    max_tokens: usize,
) -> Result<PairTokens> {
    let view = PairTokenLogps {
        chosen: chosen.logps,
        rejected: rejected.logps,
        ref_chosen: chosen.ref_logps,
        ref_rejected: rejected.ref_logps,
    };
    let k = view.k();
    let prefix_margin = (1..=k.min(max_tokens))
        .map(|j| round_sig(prefix::prefix_margin(obj, &view, j), 6))
        .collect();
    let track = |s: &Scored| -> Result<TokenTrack> {
        let counted = if obj.poet() { k } else { s.ids.len() };
        track(obj, tok, prompt_last, s, counted, max_tokens)
    };
    Ok(PairTokens {
        pair,
        prompt,
        k,
        poet: obj.poet(),
        first_diff: first_difference(chosen.ids, rejected.ids),
        prefix_margin,
        chosen_len: chosen.ids.len(),
        rejected_len: rejected.ids.len(),
        chosen: track(chosen)?,
        rejected: track(rejected)?,
    })
}

fn track(
    obj: &Objective,
    tok: &Tok,
    prompt_last: Option<u32>,
    s: &Scored,
    counted: usize,
    max_tokens: usize,
) -> Result<TokenTrack> {
    let n = s.ids.len().min(max_tokens);
    let ids = &s.ids[..n];
    // The token before each position: a piece is decoded after it, so a leading space shows.
    let prev = |t: usize| {
        if t == 0 {
            prompt_last
        } else {
            Some(ids[t - 1])
        }
    };
    let pieces = (0..n)
        .map(|t| tok.token_text(prev(t), ids[t]))
        .collect::<Result<Vec<_>>>()?;
    let alternatives = |logits: &Tensor| -> Result<Vec<Vec<Alternative>>> {
        ops::top_k_probs(logits, TOP_K)?
            .into_iter()
            .enumerate()
            .map(|(t, row)| {
                row.into_iter()
                    .map(|(id, p)| {
                        Ok(Alternative {
                            id,
                            piece: tok.token_text(prev(t), id)?,
                            p: round_sig(p as f64, 4),
                        })
                    })
                    .collect()
            })
            .collect()
    };
    let mut contributions = contributions(obj, s.logps, s.ref_logps, counted);
    contributions.truncate(n);
    let rounded = |v: &[f32]| v[..n].iter().map(|&x| round_sig(x as f64, 6)).collect();
    Ok(TokenTrack {
        ids: ids.to_vec(),
        pieces,
        logps: rounded(s.logps),
        ref_logps: s.ref_logps.map_or_else(Vec::new, rounded),
        contributions: contributions.iter().map(|&c| round_sig(c, 6)).collect(),
        policy_top: alternatives(&s.logits)?,
        ref_top: s
            .ref_logits
            .as_ref()
            .map(alternatives)
            .transpose()?
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::Loss;

    #[test]
    fn rounding_keeps_significant_digits() {
        assert_eq!(round_sig(-1.234_567_89, 6), -1.23457);
        assert_eq!(round_sig(0.000_123_456_7, 4), 0.000_123_5);
        assert_eq!(round_sig(0.0, 4), 0.0);
        assert!(round_sig(f64::NAN, 4).is_nan());
    }

    #[test]
    fn first_difference_cases() {
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_difference(&[1, 2, 3], &[1, 5, 3]), Some(1));
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
        assert_eq!(first_difference(&[], &[4]), Some(0));
    }

    /// The shares add up to the response's reward, and their prefix sums to the prefix margin.
    #[test]
    fn contributions_sum_to_the_reward() {
        let (c, r) = ([-1.0f32, -2.0, -0.5], [-1.5f32, -1.0, -0.5]);
        let dpo = Objective::single(Loss::Sigmoid, 0.1, false);
        let shares = contributions(&dpo, &c, Some(&r), 3);
        assert!((shares[0] - 0.05).abs() < 1e-9 && (shares[1] + 0.1).abs() < 1e-9);
        let total: f64 = shares.iter().sum();
        let want = dpo.reward(-3.5, Some(-3.0), 3);
        assert!((total - want).abs() < 1e-9);

        // SimPO ignores the reference and divides by the counted length.
        let simpo = Objective::single(Loss::Simpo, 2.0, false);
        let shares = contributions(&simpo, &c, Some(&r), 2);
        assert!((shares[0] + 1.0).abs() < 1e-9, "{shares:?}");

        // Prefix sums of chosen minus rejected shares are the prefix margins (DPO).
        let pair = PairTokenLogps {
            chosen: &c,
            rejected: &r,
            ref_chosen: Some(&r),
            ref_rejected: Some(&c),
        };
        let sc = contributions(&dpo, &c, Some(&r), 3);
        let sr = contributions(&dpo, &r, Some(&c), 3);
        for j in 1..=3 {
            let m: f64 = sc[..j].iter().sum::<f64>() - sr[..j].iter().sum::<f64>();
            assert!((m - prefix::prefix_margin(&dpo, &pair, j)).abs() < 1e-9);
        }
    }
}
