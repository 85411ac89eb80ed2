//! The reward-model judge through the real binary: `[judge] reward_model` scores every eval's
//! generations (eval_judge/score, eval_judge/prefix_score@k, ...), a missing or causal-LM
//! folder is refused before a run directory exists, `gaplab train-rm` writes a reward model
//! the judge loads, and `gaplab demo-data --task long-tail` writes the committed demo-tail data.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, gaplab, jsonl, runs, stderr, stdout, tiny_workspace};
use serde_json::Value;

/// The tiny workspace judged by the reward model in `rm`, one variant, evals at 0, 3 and 6.
fn judged_workspace(dir: &Path, rm: &Path, extra: &str) -> PathBuf {
    let rm = format!("{rm:?}");
    let extra = extra.to_string();
    tiny_workspace(dir, move |t| {
        let t = t.replace("\n[[variant]]\nname = \"dpo-poet\"\npoet = true\n", "\n");
        format!(
            "{t}\n[judge]\nreward_model = {rm}\nprompts = 2\nsamples = 1\nmax_new_tokens = 4\nprefix_lengths = [1, 2]\n{extra}"
        )
    })
}

fn evals(run: &Path) -> Vec<Value> {
    jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|r| r["split"] == "eval")
        .collect()
}

#[test]
fn the_reward_model_scores_every_evals_generations() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = judged_workspace(tmp.path(), &fixture("tiny-llama-rm"), "");
    let o = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("reward model (judge)"),
        "the memory estimate counts the judge: {}",
        stdout(&o)
    );
    let o = gaplab(&["train", ws.to_str().unwrap(), "--headless"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        all.contains("rm score") && all.contains("rm prefix k1"),
        "{all}"
    );
    let run = runs(&ws.join("runs")).pop().unwrap();
    let evals = evals(&run);
    assert_eq!(evals.len(), 3, "evals at steps 0, 3 and 6");
    for r in &evals {
        for key in [
            "eval_judge/score",
            "eval_judge/score_sampled",
            "eval_judge/prefix_score@1",
            "eval_judge/prefix_score@2",
            "eval_judge/prefix_score@1_sampled",
            "eval_judge/prefix_score@2_sampled",
            "eval_judge/rm_seconds",
        ] {
            let v = r[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite(), "{key} = {}", r[key]);
        }
        // No task judge: the reward model's score is `score`, and nothing is named rm_score.
        assert!(r.get("eval_judge/rm_score").is_none());
        assert!(r.get("eval_judge/correct").is_none());
        assert!(r["eval_judge/rm_seconds"].as_f64().unwrap() >= 0.0);
    }
    // A random tiny policy and reward model: the rewards differ between prefixes.
    let r = &evals[0];
    assert_ne!(r["eval_judge/prefix_score@1"], r["eval_judge/score"], "{r}");
}

#[test]
fn a_missing_or_causal_reward_model_is_refused_before_a_run_directory() {
    for (rm, says) in [
        (PathBuf::from("/nonexistent/rm"), "judge.reward_model"),
        (fixture("tiny-llama"), "score"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let ws = judged_workspace(tmp.path(), &rm, "");
        let o = gaplab(&["train", ws.to_str().unwrap(), "--headless"]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains("judge.reward_model") && e.contains(says), "{e}");
        let root = ws.join("runs");
        assert!(
            !root.exists() || runs(&root).is_empty(),
            "a run directory was made for {}",
            rm.display()
        );
    }
}

#[test]
fn bad_prefix_lengths_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        format!("{t}\n[judge]\nprefix_lengths = [4, 2]\n")
    });
    let o = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("judge.prefix_lengths") && e.contains("2 follows 4"),
        "{e}"
    );
}

#[test]
fn train_rm_writes_a_reward_model_the_judge_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rm");
    let pairs = fixture("pairs.jsonl");
    let o = gaplab(&[
        "train-rm",
        "--init",
        fixture("tiny-llama").to_str().unwrap(),
        "--data",
        pairs.to_str().unwrap(),
        "--eval",
        pairs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "30",
        "--batch-size",
        "3",
        "--lr",
        "3e-3",
        "--report-every",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(text.matches("eval accuracy").count(), 4, "{text}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_rm.json")).unwrap()).unwrap();
    // Six pairs, thirty steps of full fine-tuning: the pairs are learned, all but the fourth,
    // whose chosen and rejected responses are the same text (margin 0, loss ln 2 / 6 = 0.116).
    assert_eq!(summary["train_accuracy"], 5.0 / 6.0, "{summary}");
    let loss = summary["train_loss"].as_f64().unwrap();
    assert!(
        loss < 0.12 && loss > std::f64::consts::LN_2 / 6.0 - 1e-3,
        "{summary}"
    );
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["architectures"],
        serde_json::json!(["LlamaForSequenceClassification"])
    );
    let ws = judged_workspace(tmp.path(), &out, "task = \"\"\n");
    let o = gaplab(&["train", ws.to_str().unwrap(), "--headless"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = runs(&ws.join("runs")).pop().unwrap();
    assert!(evals(&run)[0]["eval_judge/prefix_score@2"].is_number());

    // Bad flags name themselves.
    let o = gaplab(&[
        "train-rm",
        "--scratch",
        "--data",
        pairs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--tokenizer"), "{}", stderr(&o));
}

#[test]
fn committed_demo_tail_data_is_what_the_generator_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data");
    let o = gaplab(&["demo-data", out.to_str().unwrap(), "--task", "long-tail"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("workspaces/demo-tail/data");
    for f in [
        "train.jsonl",
        "eval.jsonl",
        "task.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    ] {
        assert!(
            std::fs::read(committed.join(f)).unwrap() == std::fs::read(out.join(f)).unwrap(),
            "{f} differs from a fresh `gaplab demo-data --task long-tail`"
        );
    }
    let o = gaplab(&["demo-data", out.to_str().unwrap(), "--task", "reverse"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--task"), "{}", stderr(&o));
}
