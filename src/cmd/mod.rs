//! Bodies of the CLI's commands; `main.rs` only parses arguments and prints.

pub mod bench;
pub mod eval;
pub mod sample;
