//! A Hugging Face Trainer output folder (TRL's DPOTrainer and the other trainers built on it)
//! read as a finished gaplab run, from its `trainer_state.json`: the top-level one (written by
//! `trainer.save_state()`, as TRL's scripts do at the end), else the latest
//! `checkpoint-N/trainer_state.json`.
//!
//! On the runlog floor, beside the reader of gaplab's own run directories ([`super::tail`]).
//!
//! `log_history` becomes events, in its order:
//! - an entry with `train_runtime` (the summary the Trainer logs at the end): a `Log` that says
//!   its numbers;
//! - an entry with any `eval_*` number: an `Eval` of its numbers (no prefix diagnostics);
//! - any other entry: a `Step` of its numbers. TRL's names (`loss`, `rewards/chosen`,
//!   `logps/chosen`, `learning_rate`, `grad_norm`, ...) are gaplab's, so charts find them.
//!
//! Before them a `Started` (the folder's name as the variant, `max_steps` as the total, a config
//! record of the state's own settings: a Trainer folder has no gaplab config), a `Checkpoint`
//! for each `checkpoint-N` folder after the records of its step, and last a `State`: finished
//! when the Trainer logged its summary or reached `max_steps`, else stopped at its last step.
//!
//! The state records no times. Each record's time is estimated: the state file's modification
//! time is taken as the end of training, `train_runtime` before it as the start, and a record
//! at step s of S as s/S of the way (all at the end when there is no summary).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{CONFIG, TRAINER_STATE};
use crate::event::{EvalReport, Event, Level, RunState, StepMetrics};

/// The trainer_state.json of a Trainer output folder: the top-level one, else that of its
/// latest `checkpoint-N`.
pub fn state_file(dir: &Path) -> Option<PathBuf> {
    let top = dir.join(TRAINER_STATE);
    if top.is_file() {
        return Some(top);
    }
    checkpoints(dir).pop().map(|(_, p)| p.join(TRAINER_STATE))
}

/// Whether `dir` is a Trainer output folder rather than a gaplab run directory.
pub fn is_trainer_folder(dir: &Path) -> bool {
    !dir.join(CONFIG).exists() && state_file(dir).is_some()
}

/// `checkpoint-N` folders holding a trainer_state.json, by step.
fn checkpoints(dir: &Path) -> Vec<(usize, PathBuf)> {
    super::checkpoint_folders(dir, "checkpoint-")
}

#[derive(Deserialize)]
struct TrainerState {
    log_history: Vec<Map<String, Value>>,
    #[serde(default)]
    max_steps: usize,
    #[serde(default)]
    global_step: usize,
}

/// Python's json module writes non-finite floats as the bare words `NaN`, `Infinity` and
/// `-Infinity` (a Trainer whose loss went NaN does): made strings here, which [`number`] reads.
fn python_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w))
        {
            out.push('"');
            out.push_str(word);
            out.push('"');
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A metric's value: a number, or a non-finite one as [`python_json`] wrote it (null: NaN).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Null => Some(f64::NAN),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// The numbers of a log entry, but its step.
fn metrics(entry: &Map<String, Value>) -> std::collections::BTreeMap<String, f64> {
    entry
        .iter()
        .filter(|(k, _)| k.as_str() != "step")
        .filter_map(|(k, v)| number(v).map(|x| (k.clone(), x)))
        .collect()
}

/// "train_loss 0.4521, train_runtime 0.4904, ...": the Trainer's summary in words.
fn summary(entry: &Map<String, Value>) -> String {
    let parts: Vec<String> = metrics(entry)
        .into_iter()
        .map(|(k, x)| {
            // Four decimals, as the Trainer prints its summary, without trailing zeros.
            let text = format!("{x:.4}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            format!("{k} {text}")
        })
        .collect();
    format!("Trainer summary: {}", parts.join(", "))
}

/// Every event of a Trainer output folder, as it is now.
pub fn events(dir: &Path) -> Result<Vec<Event>> {
    let Some(path) = state_file(dir) else {
        bail!(
            "{}: not a Trainer output folder (no {TRAINER_STATE} at its top or in a checkpoint-N folder)",
            dir.display()
        );
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state: TrainerState = serde_json::from_str(&python_json(&text)).with_context(|| {
        format!(
            "{}: expected a Trainer state: a JSON object whose \"log_history\" is a list of \
             objects of metrics",
            path.display()
        )
    })?;
    let end = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(crate::event::now, |d| d.as_secs_f64());
    let mut entries = Vec::new();
    for (i, entry) in state.log_history.iter().enumerate() {
        let Some(step) = entry.get("step").and_then(Value::as_u64) else {
            bail!(
                "{}: log_history[{i}]: expected a \"step\" (a whole number)",
                path.display()
            );
        };
        entries.push((step as usize, entry));
    }
    let last_step = entries
        .iter()
        .map(|e| e.0)
        .max()
        .unwrap_or(0)
        .max(state.global_step);
    let summary_entry = entries.iter().find(|e| e.1.contains_key("train_runtime"));
    let done = summary_entry.is_some();
    let runtime = summary_entry
        .and_then(|e| e.1.get("train_runtime"))
        .and_then(number)
        .filter(|r| r.is_finite() && *r > 0.0);
    let time = |step: usize| match runtime {
        Some(r) if last_step > 0 => end - r + r * step as f64 / last_step as f64,
        _ => end,
    };
    let total_steps = if state.max_steps > 0 {
        state.max_steps
    } else {
        last_step
    };
    let variant = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let raw: Value = serde_json::from_str(&python_json(&text)).unwrap_or(Value::Null);
    let mut settings = Map::new();
    for k in [
        "max_steps",
        "num_train_epochs",
        "train_batch_size",
        "logging_steps",
        "eval_steps",
        "save_steps",
    ] {
        if let Some(v) = raw.get(k) {
            settings.insert(k.into(), v.clone());
        }
    }
    let relative = path
        .strip_prefix(dir)
        .unwrap_or(&path)
        .display()
        .to_string();
    let mut out = vec![
        Event::Started {
            variant: variant.clone(),
            run_dir: dir.to_path_buf(),
            start_step: 0,
            total_steps,
            device: String::new(),
            params: 0,
            lora: None,
            config: Box::new(json!({
                "variant": variant,
                "trainer_state": path,
                "trainer": settings,
            })),
        },
        Event::Log {
            step: 0,
            level: Level::Info,
            message: format!(
                "Trainer output folder read from {relative}{}",
                if runtime.is_some() {
                    " (times estimated from train_runtime)"
                } else {
                    " (no times recorded)"
                }
            ),
        },
    ];
    let mut ckpts = checkpoints(dir).into_iter().peekable();
    for (step, entry) in entries {
        while let Some((n, p)) = ckpts.next_if(|c| c.0 < step) {
            out.push(Event::Checkpoint { step: n, path: p });
        }
        let t = time(step);
        out.push(if entry.contains_key("train_runtime") {
            Event::Log {
                step,
                level: Level::Info,
                message: summary(entry),
            }
        } else if entry.keys().any(|k| k.starts_with("eval_")) {
            Event::Eval(Box::new(EvalReport {
                step,
                time: t,
                metrics: metrics(entry),
                prefix: Default::default(),
                token_diffs: Vec::new(),
                entropy: Vec::new(),
                cross_entropy: Vec::new(),
                kl_profile: Vec::new(),
                token_view: Vec::new(),
            }))
        } else {
            Event::Step(StepMetrics {
                step,
                time: t,
                metrics: metrics(entry),
            })
        });
    }
    out.extend(ckpts.map(|(step, path)| Event::Checkpoint { step, path }));
    let finished = done || (state.max_steps > 0 && last_step >= state.max_steps);
    out.push(Event::State {
        step: last_step,
        state: if finished {
            RunState::Finished
        } else {
            RunState::Stopped
        },
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_words_become_strings_outside_strings_only() {
        let text = r#"{"loss": NaN, "a": -Infinity, "b": [Infinity], "s": "NaN \"Infinity\""}"#;
        let v: Value = serde_json::from_str(&python_json(text)).unwrap();
        assert!(number(&v["loss"]).unwrap().is_nan());
        assert_eq!(number(&v["a"]), Some(f64::NEG_INFINITY));
        assert_eq!(number(&v["b"][0]), Some(f64::INFINITY));
        assert_eq!(v["s"], "NaN \"Infinity\"");
    }

    fn folder(state: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(TRAINER_STATE), state).unwrap();
        tmp
    }

    #[test]
    fn entries_become_steps_evals_and_a_summary() {
        let tmp = folder(
            r#"{"max_steps": 4, "global_step": 2, "log_history": [
                {"loss": 0.69, "rewards/chosen": 0.0, "epoch": 0.5, "step": 1},
                {"loss": NaN, "epoch": 1.0, "step": 2},
                {"eval_loss": 0.5, "eval_rewards/margins": 0.25, "epoch": 1.0, "step": 2}
            ]}"#,
        );
        let evs = events(tmp.path()).unwrap();
        assert!(matches!(&evs[0], Event::Started { total_steps: 4, .. }));
        let Event::Step(s) = &evs[2] else {
            panic!("{evs:?}")
        };
        assert_eq!(s.step, 1);
        assert_eq!(s.metrics["rewards/chosen"], 0.0);
        assert_eq!(s.metrics["epoch"], 0.5);
        let Event::Step(s) = &evs[3] else {
            panic!("{evs:?}")
        };
        assert!(s.metrics["loss"].is_nan());
        let Event::Eval(r) = &evs[4] else {
            panic!("{evs:?}")
        };
        assert_eq!(r.metrics["eval_rewards/margins"], 0.25);
        // Cut short of max_steps without a summary: stopped.
        assert_eq!(
            evs[5],
            Event::State {
                step: 2,
                state: RunState::Stopped
            }
        );
    }

    #[test]
    fn the_latest_checkpoint_stands_in_for_a_missing_top_level_state() {
        let tmp = tempfile::tempdir().unwrap();
        for n in [2, 10] {
            let d = tmp.path().join(format!("checkpoint-{n}"));
            std::fs::create_dir(&d).unwrap();
            let state =
                format!(r#"{{"max_steps": 10, "log_history": [{{"loss": 1.0, "step": {n}}}]}}"#);
            std::fs::write(d.join(TRAINER_STATE), state).unwrap();
        }
        assert!(is_trainer_folder(tmp.path()));
        let evs = events(tmp.path()).unwrap();
        let steps: Vec<usize> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Step(m) => Some(m.step),
                _ => None,
            })
            .collect();
        assert_eq!(steps, vec![10]);
        assert!(matches!(
            evs.last(),
            Some(Event::State {
                step: 10,
                state: RunState::Finished
            })
        ));
    }

    #[test]
    fn a_bad_state_names_the_file_and_what_was_expected() {
        let tmp = folder(r#"{"log_history": {"loss": 1}}"#);
        let err = format!("{:#}", events(tmp.path()).unwrap_err());
        let file = tmp.path().join(TRAINER_STATE);
        assert!(
            err.starts_with(&format!("{}: expected a Trainer state", file.display())),
            "{err}"
        );
        let tmp = folder(r#"{"log_history": [{"loss": 1}]}"#);
        let err = format!("{:#}", events(tmp.path()).unwrap_err());
        assert!(err.contains("log_history[0]: expected a \"step\""), "{err}");
    }
}
