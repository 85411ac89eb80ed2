//! The one event type that flows from a training run (live, or replayed from its run
//! directory) to whoever watches, and the records it carries. This is the bottom floor of
//! gaplab's vocabulary: the trainer, the engine, run directories, the dashboard and the
//! commands all speak it, and it imports nothing of gaplab. (The command type that flows back
//! lives with the engine, which takes it.)
//!
//! Each event also knows how it is said ([`Event::describe`], the one sentence every viewer
//! shows) and how it is kept ([`Event::to_record`], a versioned JSON line of a run directory's
//! `events.jsonl`); whoever watches implements [`Observer`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "detail")]
pub enum RunState {
    Starting,
    Running,
    Paused,
    /// Finished every step.
    Finished,
    /// Stopped on request (signal, quit) after a checkpoint; resumable.
    Stopped,
    Failed(String),
}

impl RunState {
    pub fn is_over(&self) -> bool {
        matches!(
            self,
            RunState::Finished | RunState::Stopped | RunState::Failed(_)
        )
    }
}

/// Metrics of one optimizer step, TRL names (`loss`, `rewards/chosen`, ...) plus gaplab's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub time: f64,
    #[serde(deserialize_with = "nan::map")]
    pub metrics: BTreeMap<String, f64>,
}

/// Per-token reward differences of one eval pair (a heatmap row).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenDiffRow {
    pub pair: usize,
    #[serde(deserialize_with = "nan::vec")]
    pub values: Vec<f64>,
}

/// Mean prefix margin and prefix accuracy (share of pairs with m(j) > 0) per prefix length j,
/// over the pairs whose k reaches j (computed by `objective::prefix`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefixCurve {
    pub j: Vec<usize>,
    #[serde(deserialize_with = "nan::vec")]
    pub margin: Vec<f64>,
    #[serde(deserialize_with = "nan::vec")]
    pub accuracy: Vec<f64>,
    /// Pairs that reach each j.
    pub pairs: Vec<usize>,
}

/// Evaluation on the held-out pairs: `eval_`-prefixed metrics and the prefix diagnostics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub step: usize,
    pub time: f64,
    #[serde(deserialize_with = "nan::map")]
    pub metrics: BTreeMap<String, f64>,
    pub prefix: PrefixCurve,
    pub token_diffs: Vec<TokenDiffRow>,
    /// Mean policy entropy per response position of the chosen responses (nats).
    #[serde(deserialize_with = "nan::vec")]
    pub entropy: Vec<f64>,
    /// Mean cross-entropy (-log p of the actual token) per response position.
    #[serde(deserialize_with = "nan::vec")]
    pub cross_entropy: Vec<f64>,
    /// Mean log pi - log pi_ref of the policy's sampled generations per response position
    /// (the per-position KL estimate; empty, and not written, when not measured).
    #[serde(
        default,
        deserialize_with = "nan::vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub kl_profile: Vec<f64>,
    /// The first `eval.token_view_pairs` fixed pairs token by token (the token view); empty,
    /// and not written, when not recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_view: Vec<PairTokens>,
}

/// A next-token alternative at one position: the token, its text and its probability. Kept as
/// a `[id, piece, p]` triple: a token-view record holds ten of them per token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "(u32, String, f64)", into = "(u32, String, f64)")]
pub struct Alternative {
    pub id: u32,
    pub piece: String,
    pub p: f64,
}

impl From<(u32, String, f64)> for Alternative {
    fn from((id, piece, p): (u32, String, f64)) -> Self {
        Self { id, piece, p }
    }
}

impl From<Alternative> for (u32, String, f64) {
    fn from(a: Alternative) -> Self {
        (a.id, a.piece, a.p)
    }
}

/// One response of a token-view pair, position by position (all vectors have one entry per
/// recorded token; the reference's are empty for objectives without one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenTrack {
    pub ids: Vec<u32>,
    /// Each token's text, as the tokenizer decodes it alone (leading spaces kept).
    pub pieces: Vec<String>,
    /// log pi of each token given everything before it.
    #[serde(deserialize_with = "nan::vec")]
    pub logps: Vec<f64>,
    #[serde(default, deserialize_with = "nan::vec")]
    pub ref_logps: Vec<f64>,
    /// Each token's share of its response's implicit reward: beta * (log pi - log pi_ref) for
    /// reference-based objectives, the length-normalised beta * log pi / |y| for SimPO.
    #[serde(deserialize_with = "nan::vec")]
    pub contributions: Vec<f64>,
    /// The policy's five most likely next tokens at each position (what it would have said).
    #[serde(default)]
    pub policy_top: Vec<Vec<Alternative>>,
    /// The reference's, where a reference model is at hand.
    #[serde(default)]
    pub ref_top: Vec<Vec<Alternative>>,
}

/// A fixed eval pair token by token: the data of the token view and of its figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairTokens {
    /// Index of the pair among the fixed eval pairs (the heatmap's row).
    pub pair: usize,
    pub prompt: String,
    /// POET's cut, k = min(|y_w|, |y_l|): positions from k on do not count under POET.
    pub k: usize,
    /// Whether the run trains with POET (the cut is then what the loss sees).
    pub poet: bool,
    /// The first response position where the chosen and rejected tokens differ.
    #[serde(default)]
    pub first_diff: Option<usize>,
    /// The prefix margin m(j) for j = 1..=k (entry j-1), as the heatmap computes it.
    #[serde(deserialize_with = "nan::vec")]
    pub prefix_margin: Vec<f64>,
    /// Full response lengths (the tracks may be cut to `eval.token_view_tokens`).
    pub chosen_len: usize,
    pub rejected_len: usize,
    pub chosen: TokenTrack,
    pub rejected: TokenTrack,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub step: usize,
    pub prompt_id: usize,
    pub prompt: String,
    /// "policy" or "reference".
    pub source: String,
    pub text: String,
    pub token_ids: Vec<u32>,
    /// The text of each token (concatenated they give `text`), for token-level comparisons.
    #[serde(default)]
    pub pieces: Vec<String>,
    /// log pi of each generated token, and log pi_ref where a reference is at hand (the
    /// sample's token view colours log pi - log pi_ref); empty when not measured.
    #[serde(
        default,
        deserialize_with = "nan::vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub logps: Vec<f64>,
    #[serde(
        default,
        deserialize_with = "nan::vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ref_logps: Vec<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// A live setting changed by an applied config edit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    pub old: String,
    pub new: String,
}

/// What a LoRA run trains: adapters of rank `r`, `trainable` parameters in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoraInfo {
    pub r: usize,
    pub trainable: usize,
}

impl LoraInfo {
    /// "LoRA r=16 · trainable 4.19M of 494M params", as the status bar shows it.
    pub fn label(&self, params: usize) -> String {
        format!(
            "LoRA r={} · trainable {} of {} params",
            self.r,
            count(self.trainable),
            count(params)
        )
    }
}

/// 4194304 -> "4.19M", 494032768 -> "494M", 7615616512 -> "7.62B".
pub fn count(n: usize) -> String {
    let x = n as f64;
    let (v, unit) = match x {
        x if x >= 1e9 => (x / 1e9, "B"),
        x if x >= 1e6 => (x / 1e6, "M"),
        x if x >= 1e3 => (x / 1e3, "k"),
        _ => return n.to_string(),
    };
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$}{unit}")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A run (an SFT stage or a variant) begins or resumes.
    Started {
        variant: String,
        run_dir: PathBuf,
        start_step: usize,
        total_steps: usize,
        device: String,
        params: usize,
        /// The adapters of a LoRA run: rank and parameters trained (of `params`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lora: Option<LoraInfo>,
        /// The variant's resolved config (`config::RunConfig` as serde writes it).
        config: Box<serde_json::Value>,
    },
    State {
        step: usize,
        state: RunState,
    },
    Step(StepMetrics),
    /// A step whose loss or gradient was not finite: the weights were left unchanged.
    Skipped {
        step: usize,
        reason: String,
    },
    Eval(Box<EvalReport>),
    Samples {
        step: usize,
        samples: Vec<Sample>,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    Log {
        step: usize,
        level: Level,
        message: String,
    },
    /// An edited workspace config was taken at `step` (acknowledges `Command::Reload`): the
    /// live settings changed and the restart-only fields that differ and were ignored.
    Applied {
        step: usize,
        changes: Vec<Change>,
        ignored: Vec<String>,
    },
    /// An edited workspace config was invalid (or lost this run's variant): nothing changed.
    ConfigRejected {
        step: usize,
        error: String,
    },
    /// Something in the run's own records a researcher should know about (`train::alerts`):
    /// `kind` is one of its fixed names, `detail` the numbers that triggered it.
    Alert {
        kind: String,
        step: usize,
        detail: String,
    },
}

/// Version of an event's serialized record (the `"v"` field of each `events.jsonl` line).
/// Raised when a record's meaning changes in a way older readers would misread; adding an
/// event kind or an optional field does not need it.
pub const RECORD_VERSION: u64 = 1;

/// Why a serialized event record could not be read back.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordError {
    /// Written by a newer gaplab, in a format this one does not know.
    Newer(u64),
    /// Not an event record (a torn line, another file's record, an unknown event).
    Unreadable(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Newer(v) => write!(
                f,
                "record format version {v} is newer than this gaplab reads ({RECORD_VERSION})"
            ),
            RecordError::Unreadable(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for RecordError {}

impl Event {
    /// The event as one JSON line (no newline): its serde form plus `"v": RECORD_VERSION`.
    pub fn to_record(&self) -> serde_json::Result<String> {
        let mut v = serde_json::to_value(self)?;
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("v".into(), RECORD_VERSION.into());
        }
        serde_json::to_string(&v)
    }

    /// Reads a line written by [`Event::to_record`] (null numbers, which is how JSON keeps a
    /// NaN, read back as NaN).
    pub fn from_record(line: &str) -> Result<Event, RecordError> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| RecordError::Unreadable(e.to_string()))?;
        match v.get("v").and_then(serde_json::Value::as_u64) {
            Some(version) if version > RECORD_VERSION => return Err(RecordError::Newer(version)),
            Some(_) => {}
            None => return Err(RecordError::Unreadable("no format version".into())),
        }
        Event::deserialize(v).map_err(|e| RecordError::Unreadable(e.to_string()))
    }

    /// The step the event belongs to (where a run starts or resumes, for `Started`).
    pub fn step(&self) -> usize {
        match self {
            Event::Started { start_step, .. } => *start_step,
            Event::Step(m) => m.step,
            Event::Eval(r) => r.step,
            Event::State { step, .. }
            | Event::Skipped { step, .. }
            | Event::Samples { step, .. }
            | Event::Checkpoint { step, .. }
            | Event::Log { step, .. }
            | Event::Applied { step, .. }
            | Event::ConfigRejected { step, .. }
            | Event::Alert { step, .. } => *step,
        }
    }

    /// How much the event's sentence matters (see [`Event::describe`]).
    pub fn level(&self) -> Level {
        match self {
            Event::State {
                state: RunState::Failed(_),
                ..
            } => Level::Error,
            Event::Skipped { .. } | Event::ConfigRejected { .. } | Event::Alert { .. } => {
                Level::Warn
            }
            Event::Log { level, .. } => *level,
            _ => Level::Info,
        }
    }

    /// The one sentence that says what happened, as the run's log.txt, the dashboard's log
    /// pane and headless progress show it (each puts its own time, step or run name before
    /// it). None for the records that charts show rather than sentences (steps, samples).
    pub fn describe(&self) -> Option<String> {
        let text = match self {
            Event::Started {
                run_dir,
                start_step,
                total_steps,
                device,
                params,
                lora,
                ..
            } => {
                let mut text = if *start_step == 0 {
                    format!("started {total_steps} steps")
                } else {
                    format!("resumed at step {start_step} of {total_steps}")
                };
                if !device.is_empty() {
                    text += &format!(" on {device}");
                }
                match lora {
                    Some(l) => text += &format!(", {}", l.label(*params)),
                    None if *params > 0 => {
                        text += &format!(", {:.2}M parameters", *params as f64 / 1e6)
                    }
                    None => {}
                }
                text + &format!(" -> {}", run_dir.display())
            }
            Event::State { step, state } => match state {
                RunState::Starting => "starting".into(),
                RunState::Running => "running".into(),
                RunState::Paused => "paused".into(),
                RunState::Finished => "finished".into(),
                RunState::Stopped => format!("stopped at step {step}"),
                // Step 0: no optimizer step was taken.
                RunState::Failed(msg) if *step == 0 => format!("failed before training: {msg}"),
                RunState::Failed(msg) => format!("failed at step {step}: {msg}"),
            },
            Event::Step(_) | Event::Samples { .. } => return None,
            Event::Skipped { step, reason } => format!("step {step} skipped: {reason}"),
            Event::Eval(r) => {
                let g = |k: &str| r.metrics.get(k).copied().unwrap_or(f64::NAN);
                match r.metrics.get("eval_rewards/accuracies") {
                    Some(acc) => format!(
                        "eval: loss {:.4}  accuracy {acc:.3}  margin {:+.4}",
                        g("eval_loss"),
                        g("eval_rewards/margins")
                    ),
                    // The SFT stage has no preference metrics.
                    None => format!("eval: loss {:.4}", g("eval_loss")),
                }
            }
            Event::Checkpoint { path, .. } => format!("checkpoint {}", path.display()),
            Event::Log { message, .. } => message.clone(),
            Event::Applied {
                changes, ignored, ..
            } => {
                let mut text = if changes.is_empty() {
                    "config reloaded: no live setting changed".to_string()
                } else {
                    let c: Vec<String> = changes
                        .iter()
                        .map(|c| format!("{} {} -> {}", c.field, c.old, c.new))
                        .collect();
                    format!("config applied: {}", c.join(", "))
                };
                if !ignored.is_empty() {
                    text += &format!(" (need a restart, ignored: {})", ignored.join(", "));
                }
                text
            }
            Event::ConfigRejected { error, .. } => {
                format!("config rejected, previous config kept: {error}")
            }
            Event::Alert { kind, detail, .. } => format!("alert {kind}: {detail}"),
        };
        Some(text)
    }
}

/// Whatever follows a run's events: the dashboard, headless progress. One method, so that a
/// new kind of event is handled in one place per consumer.
pub trait Observer {
    /// One event from source `source`: the live engine is 0, followed run directories are
    /// numbered in the order they were given.
    fn on_event(&mut self, source: usize, ev: &Event);
}

/// Reading back what serde_json wrote: it writes non-finite numbers as null.
mod nan {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    pub fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let v: Vec<Option<f64>> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    }

    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let m: BTreeMap<String, Option<f64>> = BTreeMap::deserialize(d)?;
        Ok(m.into_iter()
            .map(|(k, x)| (k, x.unwrap_or(f64::NAN)))
            .collect())
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(margin: f64) -> EvalReport {
        EvalReport {
            step: 3,
            time: 12.5,
            metrics: [
                ("eval_loss".to_string(), 0.25),
                ("eval_rewards/accuracies".into(), 0.75),
                ("eval_rewards/margins".into(), margin),
            ]
            .into_iter()
            .collect(),
            prefix: PrefixCurve {
                j: vec![1, 2],
                margin: vec![0.5, f64::NAN],
                accuracy: vec![1.0, 0.5],
                pairs: vec![2, 1],
            },
            token_diffs: vec![TokenDiffRow {
                pair: 0,
                values: vec![-0.5, 1.5],
            }],
            entropy: vec![2.0],
            cross_entropy: vec![f64::INFINITY],
            kl_profile: vec![0.25],
            token_view: vec![],
        }
    }

    #[test]
    fn records_carry_their_version_and_read_back() {
        let ev = Event::Applied {
            step: 4,
            changes: vec![Change {
                field: "train.lr".into(),
                old: "0.001".into(),
                new: "0.0005".into(),
            }],
            ignored: vec!["train.batch_size".into()],
        };
        let line = ev.to_record().unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (v["v"].as_u64(), v["event"].as_str()),
            (Some(1), Some("applied"))
        );
        assert_eq!(Event::from_record(&line).unwrap(), ev);
    }

    #[test]
    fn an_alert_is_recorded_with_its_kind_step_and_detail() {
        let ev = Event::Alert {
            kind: "kl_blowup".into(),
            step: 40,
            detail: "eval_gen/kl 6.1 > alerts.kl_max 5".into(),
        };
        let line = ev.to_record().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["kind"].as_str(), v["step"].as_u64()),
            (Some("alert"), Some("kl_blowup"), Some(40))
        );
        assert_eq!(Event::from_record(&line).unwrap(), ev);
        assert_eq!(
            said(ev),
            (
                Level::Warn,
                "alert kl_blowup: eval_gen/kl 6.1 > alerts.kl_max 5".into()
            )
        );
    }

    #[test]
    fn an_eval_written_before_the_kl_profile_reads_back() {
        let line = Event::Eval(Box::new(eval(0.5))).to_record().unwrap();
        let old = line.replace(",\"kl_profile\":[0.25]", "");
        assert_ne!(old, line);
        let Ok(Event::Eval(r)) = Event::from_record(&old) else {
            panic!("{old}")
        };
        assert!(r.kl_profile.is_empty());
    }

    #[test]
    fn non_finite_numbers_read_back_as_nan() {
        let line = Event::Eval(Box::new(eval(f64::NAN))).to_record().unwrap();
        let Ok(Event::Eval(r)) = Event::from_record(&line) else {
            panic!("{line}")
        };
        assert!(r.metrics["eval_rewards/margins"].is_nan());
        assert_eq!(r.metrics["eval_loss"], 0.25);
        assert!(r.prefix.margin[1].is_nan() && r.cross_entropy[0].is_nan());
        assert_eq!(r.token_diffs, eval(0.0).token_diffs);
    }

    #[test]
    fn unknown_and_newer_records_are_refused() {
        let line = Event::Log {
            step: 1,
            level: Level::Info,
            message: "hello".into(),
        }
        .to_record()
        .unwrap();
        // Torn by a kill in the middle of a write.
        let torn = &line[..line.len() / 2];
        assert!(matches!(
            Event::from_record(torn),
            Err(RecordError::Unreadable(_))
        ));
        let newer = line.replace("\"v\":1", "\"v\":2");
        assert_eq!(Event::from_record(&newer), Err(RecordError::Newer(2)));
        let unversioned = line.replace(",\"v\":1", "");
        assert!(matches!(
            Event::from_record(&unversioned),
            Err(RecordError::Unreadable(_))
        ));
        let unknown = line.replace("\"log\"", "\"teleported\"");
        assert!(matches!(
            Event::from_record(&unknown),
            Err(RecordError::Unreadable(_))
        ));
    }

    fn said(ev: Event) -> (Level, String) {
        (ev.level(), ev.describe().unwrap())
    }

    #[test]
    fn each_event_is_said_in_one_sentence() {
        let started = |start_step: usize| Event::Started {
            variant: "dpo".into(),
            run_dir: "/runs/dpo-1".into(),
            start_step,
            total_steps: 6,
            device: "cpu bf16".into(),
            params: 133_440,
            lora: None,
            config: Box::new(serde_json::json!({})),
        };
        assert_eq!(
            said(started(0)),
            (
                Level::Info,
                "started 6 steps on cpu bf16, 0.13M parameters -> /runs/dpo-1".into()
            )
        );
        assert_eq!(
            said(started(4)).1,
            "resumed at step 4 of 6 on cpu bf16, 0.13M parameters -> /runs/dpo-1"
        );
        let state = |step: usize, state: RunState| Event::State { step, state };
        assert_eq!(said(state(6, RunState::Finished)).1, "finished");
        assert_eq!(said(state(3, RunState::Stopped)).1, "stopped at step 3");
        assert_eq!(
            said(state(3, RunState::Failed("out of memory".into()))),
            (Level::Error, "failed at step 3: out of memory".into())
        );
        assert_eq!(
            said(state(0, RunState::Failed("variant x: no GPU".into()))).1,
            "failed before training: variant x: no GPU"
        );
        assert_eq!(
            said(Event::Skipped {
                step: 2,
                reason: "loss NaN".into()
            }),
            (Level::Warn, "step 2 skipped: loss NaN".into())
        );
        assert_eq!(
            said(Event::Eval(Box::new(eval(-0.5)))).1,
            "eval: loss 0.2500  accuracy 0.750  margin -0.5000"
        );
        assert_eq!(
            said(Event::Checkpoint {
                step: 4,
                path: "/runs/dpo-1/checkpoints/step-4".into()
            })
            .1,
            "checkpoint /runs/dpo-1/checkpoints/step-4"
        );
        let change = Change {
            field: "train.lr".into(),
            old: "0.001".into(),
            new: "0.0005".into(),
        };
        assert_eq!(
            said(Event::Applied {
                step: 4,
                changes: vec![change.clone(), change],
                ignored: vec!["train.batch_size".into()],
            })
            .1,
            "config applied: train.lr 0.001 -> 0.0005, train.lr 0.001 -> 0.0005 \
             (need a restart, ignored: train.batch_size)"
        );
        assert_eq!(
            said(Event::Applied {
                step: 4,
                changes: vec![],
                ignored: vec![],
            })
            .1,
            "config reloaded: no live setting changed"
        );
        assert_eq!(
            said(Event::ConfigRejected {
                step: 5,
                error: "gaplab.toml:3:8: bad".into()
            }),
            (
                Level::Warn,
                "config rejected, previous config kept: gaplab.toml:3:8: bad".into()
            )
        );
        assert_eq!(
            said(Event::Log {
                step: 1,
                level: Level::Error,
                message: "disk full".into()
            }),
            (Level::Error, "disk full".into())
        );
        let samples = Event::Samples {
            step: 3,
            samples: vec![],
        };
        assert_eq!((samples.describe(), samples.step()), (None, 3));
    }
}
