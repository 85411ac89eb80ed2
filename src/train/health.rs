//! Generation health: what the policy's own generations look like at each evaluation, with no
//! judge needed. Length and its spread, the share that stop on their own, lexical diversity
//! (distinct-n), repetition loops, and the per-token KL(policy || reference) estimated on the
//! policy's samples. Pure functions over token ids and log-probs; the trainer generates and
//! scores, these summarise (as the `eval_gen/*` metrics).

use std::collections::{HashMap, HashSet};

/// An n-gram repeated this often in one generation counts as a loop.
pub const LOOP_NGRAM: usize = 3;
pub const LOOP_REPEATS: usize = 3;

/// One generation of an evaluation, made once and read by the judge (if any) and by the
/// health metrics: the policy's response to eval prompt `prompt_index`, greedy or sampled.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Index of the prompt in the eval prompts.
    pub prompt_index: usize,
    pub prompt_text: String,
    /// The prompt as generation saw it (cut to `data.max_prompt_len`).
    pub prompt_ids: Vec<u32>,
    /// The new token ids (a stop id that ended it included).
    pub ids: Vec<u32>,
    /// Ended on a stop id rather than at `judge.max_new_tokens` (or the model's length).
    pub stopped: bool,
    /// Drawn at `judge.temperature`; false for the greedy generation.
    pub sampled: bool,
}

impl Generation {
    pub fn view(&self) -> GenView<'_> {
        GenView {
            ids: &self.ids,
            stopped: self.stopped,
        }
    }
}

/// One generated response as health metrics see it: its new token ids and whether it ended on
/// a stop id (EOS or one of the tokenizer's stop ids) rather than at the length limit.
#[derive(Clone, Copy, Debug)]
pub struct GenView<'a> {
    pub ids: &'a [u32],
    pub stopped: bool,
}

/// Mean and (population) standard deviation of `xs`; NaN for none.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Unique n-grams over total n-grams, pooled over all generations of the set (the usual
/// corpus-level distinct-n); NaN when no generation is n tokens long.
pub fn distinct_n(gens: &[&[u32]], n: usize) -> f64 {
    let mut unique = HashSet::new();
    let mut total = 0usize;
    for g in gens {
        for w in g.windows(n) {
            unique.insert(w);
            total += 1;
        }
    }
    if total == 0 {
        f64::NAN
    } else {
        unique.len() as f64 / total as f64
    }
}

/// Whether some n-gram occurs at least `repeats` times in `ids` (overlapping occurrences
/// count: "a a a a a" holds the 3-gram "a a a" three times, which is a loop).
pub fn has_loop(ids: &[u32], n: usize, repeats: usize) -> bool {
    let mut counts: HashMap<&[u32], usize> = HashMap::new();
    for w in ids.windows(n) {
        let c = counts.entry(w).or_default();
        *c += 1;
        if *c >= repeats {
            return true;
        }
    }
    false
}

/// The health metrics of one set of generations (greedy, or sampled), by the suffix-free
/// names `length`, `length_std`, `stop_share`, `distinct_1`, `distinct_2`, `repetition`.
/// Empty for an empty set.
pub fn summary(gens: &[GenView]) -> Vec<(&'static str, f64)> {
    if gens.is_empty() {
        return vec![];
    }
    let lengths: Vec<f64> = gens.iter().map(|g| g.ids.len() as f64).collect();
    let (length, length_std) = mean_std(&lengths);
    let n = gens.len() as f64;
    let share = |f: &dyn Fn(&GenView) -> bool| gens.iter().filter(|g| f(g)).count() as f64 / n;
    let ids: Vec<&[u32]> = gens.iter().map(|g| g.ids).collect();
    vec![
        ("length", length),
        ("length_std", length_std),
        ("stop_share", share(&|g| g.stopped)),
        ("distinct_1", distinct_n(&ids, 1)),
        ("distinct_2", distinct_n(&ids, 2)),
        (
            "repetition",
            share(&|g| has_loop(g.ids, LOOP_NGRAM, LOOP_REPEATS)),
        ),
    ]
}

/// The per-token KL(policy || reference) estimated on sequences sampled from the policy:
/// `policy[i][t]` and `reference[i][t]` are log pi(y_t) and log pi_ref(y_t) of token t of
/// sample i. Since y ~ pi, the mean of log pi - log pi_ref over tokens is an unbiased Monte
/// Carlo estimate of the KL per token. Returns that mean (NaN without tokens) and the mean per
/// position over the first `positions` positions (over the samples that reach each; positions
/// no sample reaches are left out, so the profile may be shorter).
pub fn kl_estimate(
    policy: &[Vec<f32>],
    reference: &[Vec<f32>],
    positions: usize,
) -> (f64, Vec<f64>) {
    let (mut sum, mut count) = (0.0, 0usize);
    let mut pos_sum: Vec<f64> = Vec::new();
    let mut pos_count: Vec<usize> = Vec::new();
    for (p, r) in policy.iter().zip(reference) {
        for (t, (&lp, &lr)) in p.iter().zip(r).enumerate() {
            let d = lp as f64 - lr as f64;
            sum += d;
            count += 1;
            if t < positions {
                if pos_sum.len() <= t {
                    pos_sum.push(0.0);
                    pos_count.push(0);
                }
                pos_sum[t] += d;
                pos_count[t] += 1;
            }
        }
    }
    let mean = if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    };
    let profile = pos_sum
        .iter()
        .zip(&pos_count)
        .map(|(s, &c)| s / c as f64)
        .collect();
    (mean, profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(m: &[(&str, f64)], name: &str) -> f64 {
        m.iter().find(|x| x.0 == name).unwrap().1
    }

    #[test]
    fn mean_and_spread_of_lengths() {
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!((m, s), (5.0, 2.0));
        assert!(mean_std(&[]).0.is_nan());
    }

    #[test]
    fn distinct_n_pools_ngrams_over_the_set() {
        let a: &[u32] = &[1, 2, 3, 1];
        let b: &[u32] = &[1, 2];
        // Unigrams: 1 2 3 1 1 2 -> {1, 2, 3} of 6.
        assert_eq!(distinct_n(&[a, b], 1), 0.5);
        // Bigrams: (1 2) (2 3) (3 1) (1 2) -> 3 of 4.
        assert_eq!(distinct_n(&[a, b], 2), 0.75);
        assert!(distinct_n(&[&[7u32][..]], 2).is_nan());
    }

    #[test]
    fn a_loop_is_a_trigram_three_times() {
        assert!(has_loop(&[5, 1, 2, 3, 1, 2, 3, 1, 2, 3], 3, 3));
        // Twice is not a loop.
        assert!(!has_loop(&[1, 2, 3, 1, 2, 3, 9], 3, 3));
        // Overlapping occurrences count.
        assert!(has_loop(&[4, 4, 4, 4, 4], 3, 3));
        assert!(!has_loop(&[4, 4, 4, 4], 3, 3));
        assert!(!has_loop(&[], 3, 3));
    }

    #[test]
    fn summary_of_a_set() {
        let looping = [1u32, 2, 3, 1, 2, 3, 1, 2, 3];
        let short = [4u32, 5];
        let gens = [
            GenView {
                ids: &looping,
                stopped: false,
            },
            GenView {
                ids: &short,
                stopped: true,
            },
        ];
        let m = summary(&gens);
        assert_eq!(get(&m, "length"), 5.5);
        assert_eq!(get(&m, "length_std"), 3.5);
        assert_eq!(get(&m, "stop_share"), 0.5);
        assert_eq!(get(&m, "repetition"), 0.5);
        // Unigrams: 11, unique {1..5}.
        assert_eq!(get(&m, "distinct_1"), 5.0 / 11.0);
        // Bigrams: 8 + 1, unique (1 2) (2 3) (3 1) (4 5).
        assert_eq!(get(&m, "distinct_2"), 4.0 / 9.0);
        assert!(summary(&[]).is_empty());
    }

    #[test]
    fn kl_is_the_mean_log_ratio_with_a_profile_by_position() {
        let policy = vec![vec![-1.0f32, -2.0, -0.5], vec![-1.0]];
        let reference = vec![vec![-2.0f32, -2.0, -1.0], vec![-1.5]];
        // Differences: [1, 0, 0.5] and [0.5]: mean 2 / 4.
        let (kl, profile) = kl_estimate(&policy, &reference, 2);
        assert_eq!(kl, 0.5);
        assert_eq!(profile, vec![0.75, 0.0]);
        let (kl, profile) = kl_estimate(&[], &[], 4);
        assert!(kl.is_nan() && profile.is_empty());
    }
}
