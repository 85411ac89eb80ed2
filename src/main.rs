//! The gaplab command line: the commands (each one's arguments and body live in `gaplab::cmd`),
//! dispatch and exit codes.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use gaplab::cmd;
use gaplab::engine::Outcome;

// The allocator matters for training speed: the default one returns freed activations to the
// kernel and maps fresh pages every step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gaplab",
    version,
    about = "A terminal workbench for preference optimization (DPO, SimPO, POET)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Train(cmd::train::TrainArgs),
    Attach(cmd::attach::AttachArgs),
    Check(cmd::check::CheckArgs),
    DemoData(cmd::demo_data::DemoDataArgs),
    Init(cmd::init::InitArgs),
    // Boxed: the objective's flags make it the largest by far.
    Eval(Box<cmd::eval::EvalArgs>),
    Sample(cmd::sample::SampleArgs),
    Merge(cmd::merge::MergeArgs),
    Bench(cmd::bench::BenchArgs),
    TrainRm(cmd::train_rm::TrainRmArgs),
    Score(cmd::score::ScoreArgs),
    Analyze(cmd::analyze::AnalyzeArgs),
    Report(cmd::report::ReportArgs),
    Export(cmd::export::ExportArgs),
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train(args) => {
            return Ok(match cmd::train::run(&args)? {
                Outcome::Finished => ExitCode::SUCCESS,
                // Stopped by a signal, with a checkpoint: the shell convention for SIGINT.
                Outcome::Stopped => ExitCode::from(130),
            });
        }
        Command::Attach(args) => cmd::attach::run(&args)?,
        Command::Check(args) => cmd::check::run(&args)?,
        Command::DemoData(args) => cmd::demo_data::run(&args)?,
        Command::Init(args) => cmd::init::run(&args)?,
        Command::Eval(args) => cmd::eval::run(&args)?,
        Command::Sample(args) => cmd::sample::run(&args)?,
        Command::Merge(args) => cmd::merge::run(&args)?,
        Command::Bench(args) => cmd::bench::run(&args)?,
        Command::TrainRm(args) => cmd::train_rm::run(&args)?,
        Command::Score(args) => cmd::score::run(&args)?,
        Command::Analyze(args) => cmd::analyze::run(&args)?,
        Command::Report(args) => cmd::report::run(&args)?,
        Command::Export(args) => cmd::export::run(&args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// mimalloc's `purge_delay` option (the same index in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Keep freed memory mapped: a training step frees and reallocates the same activation sizes
    // every step, and returning them to the kernel costs a page fault and a zeroed huge page
    // each time (about 35k faults per 10 DPO steps of the benchmark model, 700 without).
    // SAFETY: setting an option is a plain store inside mimalloc.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain of contexts joined by ": ".
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(2)
        }
    }
}
