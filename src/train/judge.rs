//! Judges of the policy's generations. At every evaluation the trainer generates responses to
//! the first eval prompts (greedy, and sampled) and a judge scores each of them; the means of
//! its verdicts are the `eval_judge/*` metrics, next to what the implicit reward prefers.
//!
//! `judge.task` picks the programmatic judge ([`for_task`]); the demo's sort task is the first.
//! `judge.reward_model` adds a reward model ([`RewardJudge`]) that scores the same generations,
//! full and at the k-token prefixes of `judge.prefix_lengths`. Its metrics:
//!
//! - `eval_judge/score` (greedy) and `eval_judge/score_sampled`: the mean reward of the full
//!   generations, when the reward model is the only judge. With `judge.task` set too, the task
//!   judge keeps `score` and the reward model's are `eval_judge/rm_score` and
//!   `eval_judge/rm_score_sampled`.
//! - `eval_judge/prefix_score@k` and `eval_judge/prefix_score@k_sampled`: the mean reward of the
//!   first k generated tokens (the whole generation when it is shorter).
//! - `eval_judge/rm_seconds`: the reward model's scoring time at this eval (both kinds).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::config::JudgeTask;
use crate::demo;
use crate::model::reward::RewardModel;
use crate::model::Tok;
use crate::reward::{self, Generation, GenerationScores};

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

/// The reward model of `judge.reward_model`, loaded once per run.
pub struct RewardJudge {
    pub rm: RewardModel,
    pub tok: Tok,
    pub dir: PathBuf,
}

impl RewardJudge {
    /// Loads DIR in f32 on the CPU (where half precision is slow and buys nothing) and in the
    /// run's dtype elsewhere. Errors name the setting.
    pub fn load(dir: &Path, device: &Device, run_dtype: DType) -> Result<Self> {
        let dtype = if device.is_cpu() {
            DType::F32
        } else {
            run_dtype
        };
        let (rm, tok) = RewardModel::load(dir, device, dtype)
            .with_context(|| format!("judge.reward_model = \"{}\"", dir.display()))?;
        Ok(Self {
            rm,
            tok,
            dir: dir.to_path_buf(),
        })
    }

    /// Scores `gens` (the policy's generations, decoded with `policy_tok`) full and at each k
    /// of `ks`.
    pub fn score(
        &self,
        policy_tok: &Tok,
        gens: &[Generation],
        ks: &[usize],
        batch_size: usize,
    ) -> Result<Vec<GenerationScores>> {
        if gens.is_empty() {
            return Ok(vec![]);
        }
        reward::score_generations(&self.rm, &self.tok, policy_tok, gens, ks, batch_size.max(1))
    }
}

/// The reward model's metrics of one kind of generation (`suffix` "" for greedy, "_sampled"):
/// the mean full reward as `eval_judge/<full_name><suffix>` and the mean k-prefix reward as
/// `eval_judge/prefix_score@<k><suffix>`. Nothing without scores.
pub fn reward_metrics(
    scores: &[GenerationScores],
    ks: &[usize],
    full_name: &str,
    suffix: &str,
) -> Vec<(String, f64)> {
    if scores.is_empty() {
        return vec![];
    }
    let n = scores.len() as f64;
    let mut out = vec![(
        format!("eval_judge/{full_name}{suffix}"),
        scores.iter().map(|s| s.full).sum::<f64>() / n,
    )];
    for (i, k) in ks.iter().enumerate() {
        out.push((
            format!("eval_judge/prefix_score@{k}{suffix}"),
            scores.iter().map(|s| s.prefix[i]).sum::<f64>() / n,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_metrics_are_means_under_their_names() {
        let scores = [
            GenerationScores {
                prefix: vec![1.0, 2.0],
                full: 3.0,
            },
            GenerationScores {
                prefix: vec![-1.0, 0.0],
                full: 4.0,
            },
        ];
        assert_eq!(
            reward_metrics(&scores, &[1, 4], "rm_score", "_sampled"),
            [
                ("eval_judge/rm_score_sampled".to_string(), 3.5),
                ("eval_judge/prefix_score@1_sampled".to_string(), 0.0),
                ("eval_judge/prefix_score@4_sampled".to_string(), 1.0),
            ]
        );
        assert_eq!(
            reward_metrics(&scores[..1], &[2], "score", "")[1],
            ("eval_judge/prefix_score@2".to_string(), 1.0)
        );
        assert!(reward_metrics(&[], &[1], "score", "").is_empty());
    }

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
