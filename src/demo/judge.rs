//! The demo task's judge: scores a generated response against the sorted prompt, and reports the
//! spurious tail separately so that quality and verbosity can be told apart.
//!
//! Quality is the list alone: `correct` and `score` ignore whatever follows it, because the tail
//! carries no quality by design. Partial credit counts the leading positions that match, and
//! stays below any correct answer, so a model that gets the first numbers right moves the score
//! before it sorts whole lists.

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use super::{number_word, sorted, EOS, INSTRUCTION, PROMPT_END, TAILS};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// 1.0 when correct, else prefix_correct / n * 0.5.
    pub score: f64,
    /// The list equals the sorted prompt numbers exactly (what follows it does not matter).
    pub correct: bool,
    /// Leading list positions equal to the sorted prompt numbers.
    pub prefix_correct: usize,
    /// Words in the response, up to its first `<eos>`.
    pub length: usize,
    /// Something follows the list.
    pub tail: bool,
    /// The list is non-empty and is followed by nothing or by exactly one tail phrase.
    pub well_formed: bool,
    /// The list has more numbers than the prompt: the model did not stop.
    pub overrun: bool,
}

/// The numbers of a prompt `sort : 7 3 12 1 =`, in prompt order. The closing `=` may be left
/// out, so that a prompt typed by hand is judged too.
pub fn parse_prompt(prompt: &str) -> Result<Vec<u32>> {
    let words: Vec<&str> = prompt.split_whitespace().collect();
    let Some(body) = words.strip_prefix(&INSTRUCTION[..]) else {
        bail!(
            "prompt {prompt:?} does not start with `{}`",
            INSTRUCTION.join(" ")
        );
    };
    let body = body.strip_suffix(&[PROMPT_END]).unwrap_or(body);
    if body.is_empty() {
        bail!("prompt {prompt:?} has no numbers to sort");
    }
    body.iter()
        .map(|w| number_word(w).ok_or_else(|| anyhow!("prompt {prompt:?}: `{w}` is not a number")))
        .collect()
}

/// Scores a generated `response` to `prompt`.
///
/// `length` counts the whitespace-separated words of the generation as decoded. Generation ends
/// at `<eos>`, so the response is cut at its first `<eos>` (a decode that kept special tokens
/// may show it, and padding after it): anything from there on was never generated. The list is
/// the leading run of number words; `correct`, `prefix_correct` and `score` compare it with the
/// sorted prompt numbers; `tail` says whether anything follows it; `well_formed` whether that is
/// nothing or exactly one of the task's tail phrases. A prompt that does not parse is an error.
pub fn judge(prompt: &str, response: &str) -> Result<Verdict> {
    let target = sorted(&parse_prompt(prompt)?);
    let generation = response.split(EOS).next().unwrap_or_default();
    let words: Vec<&str> = generation.split_whitespace().collect();
    let list: Vec<u32> = words.iter().map_while(|w| number_word(w)).collect();
    let rest = &words[list.len()..];
    let prefix_correct = list
        .iter()
        .zip(&target)
        .take_while(|(got, want)| got == want)
        .count();
    let correct = list == target;
    Ok(Verdict {
        score: if correct {
            1.0
        } else {
            0.5 * prefix_correct as f64 / target.len() as f64
        },
        correct,
        prefix_correct,
        length: words.len(),
        tail: !rest.is_empty(),
        well_formed: !list.is_empty() && (rest.is_empty() || is_tail_phrase(rest)),
        overrun: list.len() > target.len(),
    })
}

fn is_tail_phrase(words: &[&str]) -> bool {
    TAILS
        .iter()
        .any(|t| t.split_whitespace().eq(words.iter().copied()))
}

/// Means over many verdicts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JudgeSummary {
    pub score: f64,
    /// Share of correct lists.
    pub correct: f64,
    /// Mean length in words.
    pub length: f64,
    /// Share of responses with a tail.
    pub tail: f64,
    /// Share of well-formed responses.
    pub well_formed: f64,
    /// Share of lists longer than the prompt's.
    pub overrun: f64,
    pub n: usize,
}

/// Means over `v`; all zero when `v` is empty.
pub fn summarize(v: &[Verdict]) -> JudgeSummary {
    let mean = |f: fn(&Verdict) -> f64| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().map(f).sum::<f64>() / v.len() as f64
        }
    };
    JudgeSummary {
        score: mean(|x| x.score),
        correct: mean(|x| f64::from(u8::from(x.correct))),
        length: mean(|x| x.length as f64),
        tail: mean(|x| f64::from(u8::from(x.tail))),
        well_formed: mean(|x| f64::from(u8::from(x.well_formed))),
        overrun: mean(|x| f64::from(u8::from(x.overrun))),
        n: v.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "sort : 7 3 12 1 =";

    fn verdict(
        score: f64,
        correct: bool,
        prefix_correct: usize,
        length: usize,
        tail: bool,
        well_formed: bool,
    ) -> Verdict {
        Verdict {
            score,
            correct,
            prefix_correct,
            length,
            tail,
            well_formed,
            overrun: false,
        }
    }

    #[test]
    fn judges_known_responses() {
        // Sorted: 1 3 7 12, n = 4, so each matching leading position is worth 0.125.
        let table = [
            ("1 3 7 12", verdict(1.0, true, 4, 4, false, true)),
            (
                "1 3 7 12 . hope this helps !",
                verdict(1.0, true, 4, 9, true, true),
            ),
            (
                "1 3 7 12 . all done !",
                verdict(1.0, true, 4, 8, true, true),
            ),
            ("3 1 7 12", verdict(0.0, false, 0, 4, false, true)),
            ("1 5 7 12", verdict(0.125, false, 1, 4, false, true)),
            ("15 3 7 12", verdict(0.0, false, 0, 4, false, true)),
            ("3 7 12", verdict(0.0, false, 0, 3, false, true)),
            (
                "3 7 12 . happy to help !",
                verdict(0.0, false, 0, 8, true, true),
            ),
            ("1 3 7", verdict(0.375, false, 3, 3, false, true)),
            ("", verdict(0.0, false, 0, 0, false, false)),
            ("   ", verdict(0.0, false, 0, 0, false, false)),
            ("hope this helps", verdict(0.0, false, 0, 3, true, false)),
            (
                ". hope this helps !",
                verdict(0.0, false, 0, 5, true, false),
            ),
            ("1 3 banana 7", verdict(0.25, false, 2, 4, true, false)),
            (
                "1 3 7 12 12",
                Verdict {
                    overrun: true,
                    ..verdict(0.5, false, 4, 5, false, true)
                },
            ),
            (
                "1 3 7 12 4",
                Verdict {
                    overrun: true,
                    ..verdict(0.5, false, 4, 5, false, true)
                },
            ),
            ("1 3 7 12 <eos>", verdict(1.0, true, 4, 4, false, true)),
            ("1 3 7 12<eos>", verdict(1.0, true, 4, 4, false, true)),
            (
                "1 3 7 12 . hope this helps ! <eos> <pad> <pad>",
                verdict(1.0, true, 4, 9, true, true),
            ),
            ("1 3 <eos> 7 12", verdict(0.25, false, 2, 2, false, true)),
            (
                "1 3 7 12 . hope this",
                verdict(1.0, true, 4, 7, true, false),
            ),
            (
                "1 3 7 12 . all done ! . all done !",
                verdict(1.0, true, 4, 12, true, false),
            ),
            ("1 3 7 12 hope", verdict(1.0, true, 4, 5, true, false)),
            ("+1 3 7 12", verdict(0.0, false, 0, 4, true, false)),
            ("01 3 7 12", verdict(0.0, false, 0, 4, true, false)),
        ];
        for (response, expected) in table {
            assert_eq!(judge(PROMPT, response).unwrap(), expected, "{response:?}");
        }
    }

    #[test]
    fn prompt_without_end_marker_and_with_odd_spacing() {
        let want = judge(PROMPT, "1 3 7 12").unwrap();
        assert_eq!(judge("sort : 7 3 12 1", "1 3 7 12").unwrap(), want);
        assert_eq!(
            judge("  sort  :\t7 3 12 1 = ", " 1  3 7 12\n").unwrap(),
            want
        );
        let dup = judge("sort : 5 5 0 =", "0 5 5").unwrap();
        assert!(dup.correct);
        assert!(!judge("sort : 5 5 0 =", "0 5").unwrap().correct);
    }

    #[test]
    fn bad_prompts_are_errors_naming_the_problem() {
        for (prompt, expected) in [
            ("7 3 12 1", "does not start with `sort :`"),
            ("sort 7 3 12 1", "does not start with `sort :`"),
            ("", "does not start"),
            ("sort : =", "no numbers"),
            ("sort :", "no numbers"),
            ("sort : 7 x 12 =", "`x` is not a number"),
            ("sort : 7 -3 =", "`-3` is not a number"),
            ("sort : 7 = 3", "`=` is not a number"),
            ("sort : 07 3 =", "`07` is not a number"),
        ] {
            let e = judge(prompt, "1 2").unwrap_err().to_string();
            assert!(e.contains(expected), "{prompt:?}: {e}");
        }
    }

    #[test]
    fn summary_means() {
        let v = [
            judge(PROMPT, "1 3 7 12 . all done !").unwrap(),
            judge(PROMPT, "1 5 7 12").unwrap(),
            judge(PROMPT, "").unwrap(),
            judge(PROMPT, "1 3 7 12").unwrap(),
        ];
        let s = summarize(&v);
        assert_eq!(s.n, 4);
        assert!((s.score - (1.0 + 0.125 + 0.0 + 1.0) / 4.0).abs() < 1e-12);
        assert_eq!(s.correct, 0.5);
        assert_eq!(s.length, (8 + 4 + 4) as f64 / 4.0);
        assert_eq!(s.tail, 0.25);
        assert_eq!(s.well_formed, 0.75);
        let empty = summarize(&[]);
        assert_eq!((empty.n, empty.score, empty.length), (0, 0.0, 0.0));
    }
}
