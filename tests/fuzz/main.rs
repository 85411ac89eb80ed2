//! Property-based tests that try to crash gaplab's parsers: the workspace config, preference
//! data (JSONL and Parquet), chat templates, theme files and run directories. Every input
//! must give a result or an error that says where the problem is, never a panic or a hang.
//!
//! The case count of each target is `GAPLAB_FUZZ_CASES` (a long local run, e.g. 100000) or a
//! default sized for CI; each target prints `fuzz NAME: N cases in Ts: ...` with its outcomes.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod chat;
mod data;
mod harness;
mod mutate;
mod runlog;
mod theme;
mod workspace;
