//! Bodies of the CLI's commands; `main.rs` only parses arguments and prints.

pub mod attach;
pub mod bench;
pub mod check;
pub mod eval;
pub mod init;
pub mod sample;
pub mod train;
