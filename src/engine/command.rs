//! The one command type that flows from whoever watches a run (the dashboard, a control-socket
//! client, a config watcher) back to the engine.

use crate::config::Workspace;

/// What a watcher may ask of a running engine; taken between optimizer steps and acknowledged
/// by an event (`State`, `Samples`, `Checkpoint`, `Applied`, `ConfigRejected`).
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Pause,
    Resume,
    /// One optimizer step while paused.
    Step,
    SampleNow,
    Checkpoint,
    /// The workspace config was edited and is valid: apply its live fields to the running
    /// variant (and to the variants still to run, when they start).
    Reload(Box<Workspace>),
    /// The workspace config was edited and is invalid (the message says where): keep going
    /// with the config in effect and say so.
    ConfigError(String),
    /// Finish the current step, checkpoint, stop.
    Stop,
}
