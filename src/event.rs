//! The one event type that flows from a training run (live, or replayed from its run
//! directory) to whoever watches, and the records it carries. This is the bottom floor of
//! gaplab's vocabulary: the trainer, the engine, run directories, the dashboard and the
//! commands all speak it, and it imports nothing of gaplab. (The command type that flows back
//! lives with the engine, which takes it.)

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
    pub metrics: BTreeMap<String, f64>,
}

/// Per-token reward differences of one eval pair (a heatmap row).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenDiffRow {
    pub pair: usize,
    pub values: Vec<f64>,
}

/// Mean prefix margin and prefix accuracy (share of pairs with m(j) > 0) per prefix length j,
/// over the pairs whose k reaches j (computed by `objective::prefix`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefixCurve {
    pub j: Vec<usize>,
    pub margin: Vec<f64>,
    pub accuracy: Vec<f64>,
    /// Pairs that reach each j.
    pub pairs: Vec<usize>,
}

/// Evaluation on the held-out pairs: `eval_`-prefixed metrics and the prefix diagnostics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub step: usize,
    pub time: f64,
    pub metrics: BTreeMap<String, f64>,
    pub prefix: PrefixCurve,
    pub token_diffs: Vec<TokenDiffRow>,
    /// Mean policy entropy per response position of the chosen responses (nats).
    pub entropy: Vec<f64>,
    /// Mean cross-entropy (-log p of the actual token) per response position.
    pub cross_entropy: Vec<f64>,
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
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
