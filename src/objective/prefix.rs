//! Prefix diagnostics: where in the response the chosen/rejected margin is made.
//!
//! For a pair and a prefix length j (response tokens), m(j) is the margin the objective would
//! see if both responses stopped after j tokens: beta * (sum_{t<=j} [l - lref](y_w) -
//! sum_{t<=j} [l - lref](y_l)) with a reference; without one, the objective's own reward of the
//! two j-token prefixes ((beta / j) * (sum l(y_w) - sum l(y_l)) for SimPO). j runs over 1, 2,
//! 4, ... up to the pair's k = min(|y_w|, |y_l|). Prefixes are raw sums: the token weights of
//! LD-DPO, SamPO or a position decay do not apply here.

use super::Objective;
pub use crate::event::PrefixCurve;

/// Per-token log-probs of one pair under the policy and (optionally) the reference.
#[derive(Clone, Debug)]
pub struct PairTokenLogps<'a> {
    pub chosen: &'a [f32],
    pub rejected: &'a [f32],
    pub ref_chosen: Option<&'a [f32]>,
    pub ref_rejected: Option<&'a [f32]>,
}

impl PairTokenLogps<'_> {
    pub fn k(&self) -> usize {
        self.chosen.len().min(self.rejected.len())
    }

    fn uses_reference(&self, obj: &Objective) -> bool {
        obj.needs_reference() && self.ref_chosen.is_some() && self.ref_rejected.is_some()
    }
}

/// The implicit per-token reward term: l_t - lref_t with a reference, l_t without.
fn terms<'a>(policy: &'a [f32], reference: Option<&'a [f32]>) -> impl Iterator<Item = f64> + 'a {
    policy
        .iter()
        .enumerate()
        .map(move |(t, &l)| l as f64 - reference.map_or(0.0, |r| r[t] as f64))
}

/// m(j) for one pair; `j` must not exceed the pair's k.
pub fn prefix_margin(obj: &Objective, pair: &PairTokenLogps, j: usize) -> f64 {
    let sum = |v: &[f32]| v.iter().take(j).map(|&x| x as f64).sum::<f64>();
    let (rc, rr) = if pair.uses_reference(obj) {
        (pair.ref_chosen.map(sum), pair.ref_rejected.map(sum))
    } else {
        (None, None)
    };
    obj.reward(sum(pair.chosen), rc, j) - obj.reward(sum(pair.rejected), rr, j)
}

/// 1, 2, 4, ... up to `max` inclusive.
pub fn prefix_lengths(max: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |j| j.checked_mul(2))
        .take_while(|&j| j <= max)
        .collect()
}

pub fn prefix_curve(obj: &Objective, pairs: &[PairTokenLogps], js: &[usize]) -> PrefixCurve {
    let mut curve = PrefixCurve::default();
    for &j in js {
        let ms: Vec<f64> = pairs
            .iter()
            .filter(|p| p.k() >= j)
            .map(|p| prefix_margin(obj, p, j))
            .collect();
        if ms.is_empty() {
            continue;
        }
        let n = ms.len() as f64;
        curve.j.push(j);
        curve.margin.push(ms.iter().sum::<f64>() / n);
        curve
            .accuracy
            .push(ms.iter().filter(|&&m| m > 0.0).count() as f64 / n);
        curve.pairs.push(ms.len());
    }
    curve
}

/// [l_t - lref_t](y_w) - [l_t - lref_t](y_l) for t < k (policy log-probs alone without a
/// reference): the per-position view of where the margin is made.
pub fn token_reward_diff(obj: &Objective, pair: &PairTokenLogps) -> Vec<f64> {
    let (rc, rr) = if pair.uses_reference(obj) {
        (pair.ref_chosen, pair.ref_rejected)
    } else {
        (None, None)
    };
    terms(pair.chosen, rc)
        .zip(terms(pair.rejected, rr))
        .take(pair.k())
        .map(|(w, l)| w - l)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::objective::Loss;

    fn obj(loss: Loss) -> Objective {
        Objective::single(loss, 0.1, false)
    }

    #[test]
    fn lengths_are_powers_of_two() {
        assert_eq!(prefix_lengths(1), vec![1]);
        assert_eq!(prefix_lengths(9), vec![1, 2, 4, 8]);
        assert!(prefix_lengths(0).is_empty());
    }

    #[test]
    fn margin_by_hand() {
        let pair = PairTokenLogps {
            chosen: &[-1.0, -1.0, -5.0],
            rejected: &[-2.0, -1.0],
            ref_chosen: Some(&[-1.5, -1.0, -1.0]),
            ref_rejected: Some(&[-1.0, -1.0]),
        };
        // j=1: beta * ((-1 + 1.5) - (-2 + 1)) = 0.1 * 1.5
        assert!((prefix_margin(&obj(Loss::Sigmoid), &pair, 1) - 0.15).abs() < 1e-12);
        // SimPO, j=2: beta/2 * ((-2) - (-3)) = 0.05
        assert!((prefix_margin(&obj(Loss::Simpo), &pair, 2) - 0.05).abs() < 1e-12);
        assert_eq!(
            token_reward_diff(&obj(Loss::Sigmoid), &pair),
            vec![1.5, 0.0]
        );
        let c = prefix_curve(&obj(Loss::Sigmoid), &[pair], &prefix_lengths(4));
        assert_eq!(c.j, vec![1, 2], "j stops at k = 2");
        assert_eq!(c.accuracy, vec![1.0, 1.0]);
    }
}
