//! Which response tokens count, and how much: POET and its ablations (the prefix each response
//! keeps), keep_eos, LD-DPO's down-weighted tail, SamPO's down-sampling and a position decay.
//! The same weights apply to policy and reference alike.

use serde::{Deserialize, Serialize};

use crate::hash::Fnv;

/// POET's prefix rule: how many leading tokens of each response count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Poet {
    /// Every token counts.
    Off,
    /// The first k = min(|y_w|, |y_l|) tokens of both (the paper's POET).
    Min,
    /// The first ⌈r·k⌉ tokens of both.
    RatioK { ratio: f64 },
    /// The first ⌈r·|y|⌉ tokens of each response.
    RatioOwn { ratio: f64 },
    /// The first N tokens of each (all of a shorter response).
    Fixed { tokens: usize },
}

impl Poet {
    pub fn is_on(self) -> bool {
        self != Poet::Off
    }

    /// The prefix lengths kept of a chosen and a rejected response of `lens` tokens.
    pub fn kept(self, lens: [usize; 2]) -> [usize; 2] {
        let k = lens[0].min(lens[1]);
        let ceil = |r: f64, n: usize| ((r * n as f64).ceil() as usize).min(n);
        match self {
            Poet::Off => lens,
            Poet::Min => [k, k],
            Poet::RatioK { ratio } => [ceil(ratio, k), ceil(ratio, k)],
            Poet::RatioOwn { ratio } => [ceil(ratio, lens[0]), ceil(ratio, lens[1])],
            Poet::Fixed { tokens } => [tokens.min(lens[0]), tokens.min(lens[1])],
        }
    }

    /// Short label for names and tables: "poet", "poet-ratio_k0.5", ...
    pub fn label(self) -> Option<String> {
        match self {
            Poet::Off => None,
            Poet::Min => Some("poet".into()),
            Poet::RatioK { ratio } => Some(format!("poet-ratio_k{ratio}")),
            Poet::RatioOwn { ratio } => Some(format!("poet-ratio_own{ratio}")),
            Poet::Fixed { tokens } => Some(format!("poet-fixed{tokens}")),
        }
    }
}

/// The `poet` setting: `true`/`false` (the paper's POET or none) or the rule's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PoetMode {
    #[default]
    Off,
    Min,
    RatioK,
    RatioOwn,
    Fixed,
}

impl PoetMode {
    const ALL: [PoetMode; 5] = [
        PoetMode::Off,
        PoetMode::Min,
        PoetMode::RatioK,
        PoetMode::RatioOwn,
        PoetMode::Fixed,
    ];

    /// [`PoetMode::name`] of each of [`PoetMode::ALL`], for serde's "expected one of".
    const NAMES: [&'static str; 5] = {
        let mut names = [""; 5];
        let mut i = 0;
        while i < names.len() {
            names[i] = PoetMode::ALL[i].name();
            i += 1;
        }
        names
    };

    pub const fn name(self) -> &'static str {
        match self {
            PoetMode::Off => "off",
            PoetMode::Min => "min",
            PoetMode::RatioK => "ratio_k",
            PoetMode::RatioOwn => "ratio_own",
            PoetMode::Fixed => "fixed",
        }
    }

    /// The rule, with the ratio `ratio_*` reads and the length `fixed` reads.
    pub fn rule(self, ratio: f64, tokens: usize) -> Poet {
        match self {
            PoetMode::Off => Poet::Off,
            PoetMode::Min => Poet::Min,
            PoetMode::RatioK => Poet::RatioK { ratio },
            PoetMode::RatioOwn => Poet::RatioOwn { ratio },
            PoetMode::Fixed => Poet::Fixed { tokens },
        }
    }
}

impl Serialize for PoetMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The two the boolean spelled keep it, so older records read the same.
        match self {
            PoetMode::Off => s.serialize_bool(false),
            PoetMode::Min => s.serialize_bool(true),
            other => s.serialize_str(other.name()),
        }
    }
}

impl<'de> Deserialize<'de> for PoetMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PoetMode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, \"min\", \"ratio_k\", \"ratio_own\" or \"fixed\"")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<PoetMode, E> {
                Ok(if b { PoetMode::Min } else { PoetMode::Off })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PoetMode, E> {
                PoetMode::ALL
                    .into_iter()
                    .find(|m| m.name() == s)
                    .ok_or_else(|| E::unknown_variant(s, &PoetMode::NAMES))
            }
        }
        d.deserialize_any(V)
    }
}

/// Every rule that weighs response tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenScheme {
    pub poet: Poet,
    /// A response cut by POET still counts its end (its last EOS and what follows it).
    pub keep_eos: bool,
    /// LD-DPO: tokens past k = min(|y_w|, |y_l|) weigh this much (TRL's ld_alpha).
    pub ld_alpha: Option<f64>,
    /// SamPO: count the same number of tokens of each response, sampled with this seed.
    pub sampo_seed: Option<u64>,
    /// D2PO-style: token t weighs decay^t.
    pub position_decay: Option<f64>,
}

impl TokenScheme {
    pub const PLAIN: TokenScheme = TokenScheme {
        poet: Poet::Off,
        keep_eos: false,
        ld_alpha: None,
        sampo_seed: None,
        position_decay: None,
    };
}

/// One response's token weights and the number of tokens it counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub w: Vec<f64>,
    /// Tokens counted (weight from the masks, before LD-DPO and decay scale them): the
    /// normaliser of the length-normalised losses.
    pub counted: usize,
}

/// Weights of a pair's chosen and rejected responses. `lens` are the response lengths,
/// `ends` how many tokens each response's end takes (from its last EOS on; 0 when it has none),
/// `ids` the responses' tokens (they seed SamPO's sample, so a pair samples the same positions
/// whenever it is seen).
pub fn pair_weights(s: &TokenScheme, ids: [&[u32]; 2], ends: [usize; 2]) -> [Weights; 2] {
    let lens = [ids[0].len(), ids[1].len()];
    let kept = s.poet.kept(lens);
    let mut masks: [Vec<bool>; 2] = [0, 1].map(|i| {
        let mut m: Vec<bool> = (0..lens[i]).map(|t| t < kept[i]).collect();
        if s.keep_eos && kept[i] < lens[i] {
            let end = ends[i].min(lens[i]);
            m[lens[i] - end..].fill(true);
        }
        m
    });
    if let Some(seed) = s.sampo_seed {
        let counts = masks.clone().map(|m| m.iter().filter(|&&b| b).count());
        let m = counts[0].min(counts[1]);
        let mut h = Fnv::default();
        h.bytes(&seed.to_le_bytes()).u32s(ids[0]).u32s(ids[1]);
        let mut rng = crate::rng::Rng::new(h.0);
        for mask in masks.iter_mut() {
            let mut on: Vec<usize> = (0..mask.len()).filter(|&t| mask[t]).collect();
            // Partial Fisher-Yates: the first m of a seeded shuffle are the sample.
            for i in 0..m {
                let j = i + rng.below(on.len() - i);
                on.swap(i, j);
            }
            mask.fill(false);
            on[..m].iter().for_each(|&t| mask[t] = true);
        }
    }
    let k = lens[0].min(lens[1]);
    [0, 1].map(|i| {
        let w = masks[i]
            .iter()
            .enumerate()
            .map(|(t, &on)| {
                let mut w = if on { 1.0 } else { 0.0 };
                if let Some(a) = s.ld_alpha {
                    if t >= k {
                        w *= a;
                    }
                }
                if let Some(d) = s.position_decay {
                    w *= d.powi(t as i32);
                }
                w
            })
            .collect();
        Weights {
            w,
            counted: masks[i].iter().filter(|&&b| b).count(),
        }
    })
}

/// How many tokens at the end of `response` belong to its end marker: from the last `eos` on
/// (the EOS gaplab appends to standard data; for conversational data the template's
/// end-of-turn and what the template writes after it). 0 when there is none.
pub fn end_len(response: &[u32], eos: u32) -> usize {
    response
        .iter()
        .rposition(|&t| t == eos)
        .map_or(0, |p| response.len() - p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(poet: Poet) -> TokenScheme {
        TokenScheme {
            poet,
            ..TokenScheme::PLAIN
        }
    }

    const W: [u32; 6] = [5, 6, 7, 8, 9, 2];
    const L: [u32; 3] = [5, 4, 2];

    fn weights(s: &TokenScheme) -> [Vec<f64>; 2] {
        let [a, b] = pair_weights(s, [&W, &L], [1, 1]);
        [a.w, b.w]
    }

    #[test]
    fn poet_variants_keep_their_prefixes() {
        assert_eq!(Poet::Off.kept([6, 3]), [6, 3]);
        assert_eq!(Poet::Min.kept([6, 3]), [3, 3]);
        assert_eq!(Poet::RatioK { ratio: 0.5 }.kept([6, 3]), [2, 2]);
        assert_eq!(Poet::RatioOwn { ratio: 0.5 }.kept([6, 3]), [3, 2]);
        assert_eq!(Poet::Fixed { tokens: 4 }.kept([6, 3]), [4, 3]);
        assert_eq!(Poet::RatioK { ratio: 1.0 }.kept([6, 3]), [3, 3]);
        let [c, r] = weights(&scheme(Poet::Min));
        assert_eq!(c, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(r, [1.0, 1.0, 1.0], "the shorter side keeps its EOS");
    }

    #[test]
    fn keep_eos_counts_the_cut_response_end() {
        let s = TokenScheme {
            keep_eos: true,
            ..scheme(Poet::Min)
        };
        let [c, r] = pair_weights(&s, [&W, &L], [1, 1]);
        assert_eq!(c.w, [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!((c.counted, r.counted), (4, 3));
        // A ChatML end: `<|im_end|>` then "\n" are both the end.
        let [c, _] = pair_weights(&s, [&W, &L], [2, 1]);
        assert_eq!(c.w, [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]);
        assert_eq!(end_len(&[4, 2, 9], 2), 2);
        assert_eq!(end_len(&[4, 5], 2), 0);
    }

    #[test]
    fn ld_alpha_weighs_the_tail_and_keeps_the_count() {
        let s = TokenScheme {
            ld_alpha: Some(0.5),
            ..TokenScheme::PLAIN
        };
        let [c, r] = pair_weights(&s, [&W, &L], [1, 1]);
        assert_eq!(c.w, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]);
        assert_eq!(r.w, [1.0; 3]);
        assert_eq!(c.counted, 6, "TRL normalises by the full length");
    }

    #[test]
    fn sampo_samples_the_same_number_from_both() {
        let s = TokenScheme {
            sampo_seed: Some(7),
            ..TokenScheme::PLAIN
        };
        let [c, r] = pair_weights(&s, [&W, &L], [1, 1]);
        assert_eq!((c.counted, r.counted), (3, 3));
        assert_eq!(c.w.iter().sum::<f64>(), 3.0);
        assert_eq!(r.w, [1.0; 3]);
        assert_eq!(pair_weights(&s, [&W, &L], [1, 1])[0], c, "seeded");
        let other = TokenScheme {
            sampo_seed: Some(8),
            ..s
        };
        let samples: Vec<Vec<f64>> = (0..20)
            .map(|seed| {
                let s = TokenScheme {
                    sampo_seed: Some(seed),
                    ..other
                };
                pair_weights(&s, [&W, &L], [1, 1])[0].w.clone()
            })
            .collect();
        assert!(samples.iter().any(|w| w != &c.w), "the seed matters");
    }

    #[test]
    fn position_decay_is_geometric() {
        let s = TokenScheme {
            position_decay: Some(0.5),
            ..TokenScheme::PLAIN
        };
        assert_eq!(weights(&s)[1], [1.0, 0.5, 0.25]);
    }
}
