//! The paper's prefix analyses as pure functions of rewards.
//!
//! - prefix gap of preference data: ΔQ(k) = mean over pairs of R(x, y_w[:k]) − R(x, y_l[:k]),
//!   with its standard error and the share of pairs where it is positive, next to the same for
//!   the full responses: whether the data's quality difference lives in the first tokens
//!   (where POET looks) or later;
//! - prefix quality of generations: the mean reward of a model's generated k-prefixes and full
//!   generations, for the policy, the reference, and their difference.

use serde::Serialize;

use super::inputs::PairRewards;
use super::GenerationScores;

/// Mean, standard error (sample standard deviation / √n; None below two values) and count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mean {
    pub mean: f64,
    pub stderr: Option<f64>,
    pub n: usize,
}

pub fn mean_stderr(xs: &[f64]) -> Mean {
    let n = xs.len();
    if n == 0 {
        return Mean {
            mean: f64::NAN,
            stderr: None,
            n,
        };
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let stderr = (n >= 2).then(|| {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    });
    Mean { mean, stderr, n }
}

/// One row of the prefix-gap table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GapRow {
    /// None: the full responses.
    pub k: Option<usize>,
    pub pairs: usize,
    /// ΔQ: mean of R(chosen prefix) − R(rejected prefix).
    pub delta: f64,
    pub stderr: Option<f64>,
    /// Share of pairs with a positive difference.
    pub share_positive: f64,
    /// Pairs with a response shorter than k: that response was used whole (EOS included).
    pub shorter: usize,
    /// Mean reward of the chosen and of the rejected prefixes.
    pub chosen_mean: f64,
    pub rejected_mean: f64,
}

fn gap_row(k: Option<usize>, chosen: &[f64], rejected: &[f64], shorter: usize) -> GapRow {
    let deltas: Vec<f64> = chosen.iter().zip(rejected).map(|(w, l)| w - l).collect();
    let m = mean_stderr(&deltas);
    let positive = deltas.iter().filter(|d| **d > 0.0).count();
    GapRow {
        k,
        pairs: deltas.len(),
        delta: m.mean,
        stderr: m.stderr,
        share_positive: if deltas.is_empty() {
            f64::NAN
        } else {
            positive as f64 / deltas.len() as f64
        },
        shorter,
        chosen_mean: mean_stderr(chosen).mean,
        rejected_mean: mean_stderr(rejected).mean,
    }
}

/// ΔQ(k) for each k of `ks` (the order [`super::inputs::score_pairs`] scored them in), then the
/// full-response row.
pub fn prefix_gap(rewards: &[PairRewards], ks: &[usize]) -> Vec<GapRow> {
    let mut rows: Vec<GapRow> = ks
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let w: Vec<f64> = rewards.iter().map(|r| r.chosen_prefix[i]).collect();
            let l: Vec<f64> = rewards.iter().map(|r| r.rejected_prefix[i]).collect();
            let shorter = rewards
                .iter()
                .filter(|r| r.chosen_len.min(r.rejected_len) < k)
                .count();
            gap_row(Some(k), &w, &l, shorter)
        })
        .collect();
    let w: Vec<f64> = rewards.iter().map(|r| r.chosen).collect();
    let l: Vec<f64> = rewards.iter().map(|r| r.rejected).collect();
    rows.push(gap_row(None, &w, &l, 0));
    rows
}

/// One row of the prefix-quality table: mean reward of the policy's (and the reference's)
/// k-prefixes or full generations, and the policy − reference difference, paired by prompt and
/// sample.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QualityRow {
    pub k: Option<usize>,
    pub policy: Mean,
    pub reference: Option<Mean>,
    pub difference: Option<Mean>,
}

/// The prefix-quality rows (each k of `ks`, then the full generations) of the policy's scores
/// and, when given, the reference's for the same prompts and samples in the same order.
pub fn prefix_quality(
    policy: &[GenerationScores],
    reference: Option<&[GenerationScores]>,
    ks: &[usize],
) -> anyhow::Result<Vec<QualityRow>> {
    if let Some(r) = reference {
        anyhow::ensure!(
            r.len() == policy.len(),
            "prefix quality: {} reference generations for {} policy generations",
            r.len(),
            policy.len()
        );
    }
    let column = |s: &[GenerationScores], i: Option<usize>| -> Vec<f64> {
        s.iter()
            .map(|g| match i {
                Some(i) => g.prefix[i],
                None => g.full,
            })
            .collect()
    };
    let at: Vec<(Option<usize>, Option<usize>)> = ks
        .iter()
        .enumerate()
        .map(|(i, &k)| (Some(k), Some(i)))
        .chain(std::iter::once((None, None)))
        .collect();
    Ok(at
        .into_iter()
        .map(|(k, i)| {
            let p = column(policy, i);
            let (reference, difference) = match reference {
                Some(r) => {
                    let r = column(r, i);
                    let d: Vec<f64> = p.iter().zip(&r).map(|(a, b)| a - b).collect();
                    (Some(mean_stderr(&r)), Some(mean_stderr(&d)))
                }
                None => (None, None),
            };
            QualityRow {
                k,
                policy: mean_stderr(&p),
                reference,
                difference,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(w: &[f64], l: &[f64], lens: (usize, usize)) -> PairRewards {
        let n = w.len() - 1;
        PairRewards {
            chosen_prefix: w[..n].to_vec(),
            chosen: w[n],
            rejected_prefix: l[..n].to_vec(),
            rejected: l[n],
            chosen_len: lens.0,
            rejected_len: lens.1,
        }
    }

    #[test]
    fn mean_and_standard_error() {
        let m = mean_stderr(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m.mean, 2.5);
        // sample sd = sqrt(5/3); / sqrt(4)
        assert!((m.stderr.unwrap() - (5.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
        assert_eq!(mean_stderr(&[7.0]).stderr, None);
        assert!(mean_stderr(&[]).mean.is_nan());
    }

    #[test]
    fn prefix_gap_by_hand() {
        // ks = [1, 4]; rewards per pair: [k=1, k=4, full]
        let rewards = [
            pair(&[1.0, 2.0, 3.0], &[0.0, 0.0, 0.0], (5, 6)),
            pair(&[0.0, 1.0, 1.0], &[1.0, 1.0, 2.0], (3, 8)),
            pair(&[2.0, 2.0, 2.0], &[2.0, 1.0, 0.0], (4, 4)),
        ];
        let rows = prefix_gap(&rewards, &[1, 4]);
        assert_eq!(rows.len(), 3);
        // k = 1: deltas 1, -1, 0
        assert_eq!(rows[0].k, Some(1));
        assert!((rows[0].delta - 0.0).abs() < 1e-12);
        assert!((rows[0].share_positive - 1.0 / 3.0).abs() < 1e-12);
        assert!((rows[0].stderr.unwrap() - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(rows[0].shorter, 0);
        // k = 4: deltas 2, 0, 1; pair 2 has a 3-token response
        assert!((rows[1].delta - 1.0).abs() < 1e-12);
        assert_eq!(rows[1].shorter, 1);
        assert!((rows[1].chosen_mean - 5.0 / 3.0).abs() < 1e-12);
        // full: deltas 3, -1, 2
        assert_eq!(rows[2].k, None);
        assert!((rows[2].delta - 4.0 / 3.0).abs() < 1e-12);
        assert!((rows[2].share_positive - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(rows[2].pairs, 3);
    }

    #[test]
    fn prefix_quality_by_hand() {
        let g = |prefix: &[f64], full| GenerationScores {
            prefix: prefix.to_vec(),
            full,
        };
        let policy = [g(&[1.0, 2.0], 3.0), g(&[3.0, 2.0], 5.0)];
        let reference = [g(&[0.0, 1.0], 1.0), g(&[1.0, 1.0], 1.0)];
        let rows = prefix_quality(&policy, Some(&reference), &[2, 8]).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].k, Some(2));
        assert_eq!(rows[0].policy.mean, 2.0);
        assert_eq!(rows[0].reference.as_ref().unwrap().mean, 0.5);
        // paired differences 1 and 2
        let d = rows[0].difference.as_ref().unwrap();
        assert_eq!(d.mean, 1.5);
        assert!((d.stderr.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(rows[2].k, None);
        assert_eq!(rows[2].policy.mean, 4.0);
        assert_eq!(rows[2].difference.as_ref().unwrap().mean, 3.0);
        let alone = prefix_quality(&policy, None, &[2, 8]).unwrap();
        assert!(alone[1].reference.is_none() && alone[1].difference.is_none());
        assert!(prefix_quality(&policy, Some(&reference[..1]), &[2, 8]).is_err());
    }
}
