//! Length statistics of a preference set, as `gaplab check` prints them.

use serde::Serialize;

use super::TokenizedPair;

/// Minimum, 5th/50th/95th percentiles, maximum and mean of a list of lengths.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    pub min: f64,
    pub p5: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

pub fn spread(values: impl IntoIterator<Item = f64>) -> Spread {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return Spread::default();
    }
    v.sort_by(f64::total_cmp);
    Spread {
        min: v[0],
        p5: percentile(&v, 5.0),
        p50: percentile(&v, 50.0),
        p95: percentile(&v, 95.0),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DataStats {
    pub pairs: usize,
    pub prompt: Spread,
    pub chosen: Spread,
    pub rejected: Spread,
    /// k = min(|y_w|, |y_l|), the prefix POET keeps.
    pub k: Spread,
    /// |y_w| - |y_l|.
    pub length_diff: Spread,
    pub chosen_longer: f64,
    pub equal_length: f64,
    /// Share of response tokens POET keeps.
    pub poet_kept: f64,
    /// Histogram of k over log2 buckets: (upper bound, pairs).
    pub k_histogram: Vec<(usize, usize)>,
}

pub fn stats(pairs: &[TokenizedPair]) -> DataStats {
    let n = pairs.len().max(1) as f64;
    let f = |g: &dyn Fn(&TokenizedPair) -> f64| spread(pairs.iter().map(g));
    let kept: usize = pairs.iter().map(|p| 2 * p.k()).sum();
    let total: usize = pairs
        .iter()
        .map(|p| p.chosen.len() + p.rejected.len())
        .sum();
    let mut hist: Vec<(usize, usize)> = Vec::new();
    for p in pairs {
        let bound = p.k().next_power_of_two();
        match hist.iter_mut().find(|h| h.0 == bound) {
            Some(h) => h.1 += 1,
            None => hist.push((bound, 1)),
        }
    }
    hist.sort();
    DataStats {
        pairs: pairs.len(),
        prompt: f(&|p| p.prompt.len() as f64),
        chosen: f(&|p| p.chosen.len() as f64),
        rejected: f(&|p| p.rejected.len() as f64),
        k: f(&|p| p.k() as f64),
        length_diff: f(&|p| p.chosen.len() as f64 - p.rejected.len() as f64),
        chosen_longer: pairs
            .iter()
            .filter(|p| p.chosen.len() > p.rejected.len())
            .count() as f64
            / n,
        equal_length: pairs
            .iter()
            .filter(|p| p.chosen.len() == p.rejected.len())
            .count() as f64
            / n,
        poet_kept: kept as f64 / total.max(1) as f64,
        k_histogram: hist,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s = spread((1..=100).map(|x| x as f64));
        assert_eq!(
            (s.min, s.p5, s.p50, s.p95, s.max),
            (1.0, 5.0, 50.0, 95.0, 100.0)
        );
        assert_eq!(s.mean, 50.5);
        assert_eq!(spread(std::iter::empty()), Spread::default());
    }

    #[test]
    fn pair_statistics() {
        let pair = |c: usize, r: usize| TokenizedPair {
            prompt: vec![0; 3],
            chosen: vec![1; c],
            rejected: vec![1; r],
        };
        let s = stats(&[pair(4, 2), pair(3, 3), pair(1, 5)]);
        assert_eq!(s.pairs, 3);
        assert!((s.chosen_longer - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.equal_length - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.k.max, 3.0);
        assert!((s.poet_kept - 12.0 / 18.0).abs() < 1e-12);
        assert_eq!(s.k_histogram, vec![(1, 1), (2, 1), (4, 1)]);
    }
}
