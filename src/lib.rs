//! gaplab: a terminal workbench for preference-optimization research (DPO, SimPO, POET).
//!
//! Module map: `model` (the trainable decoder, checkpoints, tokenizer, sampling), `data`
//! (preference pairs and batches), `objective` (losses, POET masks, prefix diagnostics),
//! `train` (optimizer and step functions), `cmd` (the bodies of the CLI's commands).

pub mod cmd;
pub mod config;
pub mod data;
pub mod demo;
pub mod engine;
pub mod event;
pub mod hash;
pub mod model;
pub mod objective;
pub mod rng;
pub mod runlog;
pub mod train;
pub mod ui;
pub mod watch;
