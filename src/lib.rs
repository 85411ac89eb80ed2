//! gaplab: a terminal workbench for preference-optimization research (DPO, SimPO, POET).
//!
//! Modules from the bottom floor up; a module imports only modules listed above it here
//! (docs/ARCHITECTURE.md draws the floors and the event flow).

// Shared vocabulary, importing nothing of gaplab.
/// The one event type (and the records it carries) that flows from a run to whoever watches.
pub mod event;
/// Fault injection for tests (`GAPLAB_FAULT`): a full disk, an out-of-memory step.
pub mod fault;
/// FNV-1a, the stable hash behind cache keys and socket names.
pub mod hash;
/// A small deterministic random number generator (data order, initialisation, sampling).
pub mod rng;
/// Watching files users edit while gaplab runs (gaplab.toml, themes).
pub mod watch;

/// The commands of the CLI: each one's arguments and body.
pub mod cmd;
/// gaplab.toml: schema, defaults, enums, validation with located errors, live/restart classes.
pub mod config;
/// Preference pairs: JSONL/Parquet files, chat templates, tokenization, length limits.
pub mod data;
/// The demo task: generator, word-level tokenizer and judge of a synthetic sorting task.
pub mod demo;
/// The worker thread: runs stages and variants, takes commands, emits events.
pub mod engine;
/// The trainable decoder: Llama-family causal LM, its input batch, checkpoints, tokenizer,
/// KV-cached sampling.
pub mod model;
/// Losses (DPO, SimPO, IPO, SFT), POET masks, metrics and prefix diagnostics.
pub mod objective;
/// Figures for papers from run directories (`gaplab report`): curves, the gap chart, the
/// prefix heatmap, token strips, ΔQ(k), seeds grouped into mean ± std, report.md.
pub mod report;
/// Reward models as judges: the input convention, scoring generations and their prefixes,
/// the paper's prefix analyses (ΔQ(k), prefix quality).
pub mod reward;
/// Run directories: layout, the append-only record (events.jsonl) and its exports, atomic
/// checkpoints, and reading a run back as events.
pub mod runlog;
/// Training: AdamW, schedules, the one trainer (SFT stage and preference variants), datasets,
/// judges, reference cache, memory estimate.
pub mod train;
/// The dashboard: pure state, keymap, views, themes, terminal setup and the main loop.
pub mod ui;
