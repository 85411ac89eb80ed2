//! Judges of the policy's generations. At every evaluation the trainer generates responses to
//! the first eval prompts (greedy, and sampled) and a judge scores each of them; the means of
//! its verdicts are the `eval_judge/*` metrics, next to what the implicit reward prefers.
//!
//! `judge.task` picks the judge ([`for_task`]). The demo's sort task is the first; a judge
//! backed by a reward model is another implementation of [`Judge`].

use anyhow::Result;

use crate::config::JudgeTask;
use crate::demo;

/// A judge's verdict on one response: named numbers (a score, shares as 0 or 1, lengths). Each
/// name becomes the metric `eval_judge/<name>`, the mean over the responses judged.
pub type Verdict = Vec<(&'static str, f64)>;

/// Scores generated responses to eval prompts.
pub trait Judge {
    /// The verdict on `response`, generated for `prompt`. An error when this judge cannot
    /// judge the prompt (it is not one of its task's).
    fn judge(&self, prompt: &str, response: &str) -> Result<Verdict>;
}

/// The judge `judge.task` names; None for "" (no judge).
pub fn for_task(task: JudgeTask) -> Option<Box<dyn Judge>> {
    match task {
        JudgeTask::None => None,
        JudgeTask::Sort => Some(Box::new(SortJudge)),
    }
}

/// The demo task of `gaplab demo-data`: sort the prompt's numbers (see [`demo::judge`]).
pub struct SortJudge;

impl Judge for SortJudge {
    fn judge(&self, prompt: &str, response: &str) -> Result<Verdict> {
        let v = demo::judge::judge(prompt, response)?;
        let share = |b: bool| f64::from(u8::from(b));
        Ok(vec![
            ("score", v.score),
            ("correct", share(v.correct)),
            ("length", v.length as f64),
            ("tail", share(v.tail)),
            ("overrun", share(v.overrun)),
        ])
    }
}

/// The mean of every named number over `verdicts`, in the order the first verdict names them;
/// empty without verdicts.
pub fn means(verdicts: &[Verdict]) -> Vec<(&'static str, f64)> {
    let Some(first) = verdicts.first() else {
        return vec![];
    };
    first
        .iter()
        .map(|&(name, _)| {
            let sum = verdicts
                .iter()
                .flat_map(|v| v.iter().filter(|x| x.0 == name).map(|x| x.1))
                .sum::<f64>();
            (name, sum / verdicts.len() as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "sort : 7 3 12 1 =";

    #[test]
    fn the_sort_judge_reports_what_the_demo_summary_means() {
        let responses = ["1 3 7 12 . all done !", "1 5 7 12", "", "1 3 7 12 12"];
        let judge = for_task(JudgeTask::Sort).unwrap();
        let verdicts: Vec<Verdict> = responses
            .iter()
            .map(|r| judge.judge(PROMPT, r).unwrap())
            .collect();
        let summary = demo::judge::summarize(
            &responses
                .iter()
                .map(|r| demo::judge::judge(PROMPT, r).unwrap())
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            means(&verdicts),
            [
                ("score", summary.score),
                ("correct", summary.correct),
                ("length", summary.length),
                ("tail", summary.tail),
                ("overrun", summary.overrun),
            ]
        );
    }

    #[test]
    fn tasks_select_judges() {
        assert!(for_task(JudgeTask::None).is_none());
        let e = SortJudge.judge("not a sort prompt", "1 2").unwrap_err();
        assert!(e.to_string().contains("does not start"), "{e}");
    }

    #[test]
    fn means_of_no_verdicts_are_empty() {
        assert!(means(&[]).is_empty());
        let v = vec![vec![("score", 1.0)], vec![("score", 0.5)]];
        assert_eq!(means(&v), [("score", 0.75)]);
    }
}
