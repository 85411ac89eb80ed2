//! `gaplab export`: a run's records in another tool's format. `export tensorboard` writes the
//! TensorBoard event file a run with `[log] tensorboard = true` writes as it trains, from the
//! records of any run directory (an earlier version's too) or Trainer (TRL) output folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::runlog::{tail, tensorboard};

/// Write a run's records in another tool's format.
#[derive(clap::Args, Clone, Debug)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub format: Format,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Format {
    /// TensorBoard event files of the runs' metrics, tagged as TRL's Trainer tags them
    /// (train/loss, eval/rewards/margins, ...).
    Tensorboard(TensorboardArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct TensorboardArgs {
    /// Run directories, workspaces (every run) or Trainer output folders.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// A TensorBoard log folder to write into, one subfolder per run (named as the run);
    /// default: each run's own tb/ folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    match &args.format {
        Format::Tensorboard(a) => super::print(&export_tensorboard(a)?),
    }
    Ok(())
}

/// Where a run's event file goes.
fn target(run: &Path, out: Option<&Path>) -> PathBuf {
    match out {
        Some(out) => out.join(run.file_name().unwrap_or(run.as_os_str())),
        None => run.join(tensorboard::DIR),
    }
}

/// Writes one event file per run; returns what to tell the user.
pub fn export_tensorboard(args: &TensorboardArgs) -> Result<String> {
    let runs = super::attach::run_dirs(&args.runs)?;
    // Every target checked before anything is written: a second export into the same folder
    // would show each point twice.
    let targets: Vec<PathBuf> = runs
        .iter()
        .map(|r| target(r, args.out.as_deref()))
        .collect();
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].contains(t) {
            bail!(
                "{}: two runs would be written there (runs with the same folder name): export them \
                 with different --out folders",
                t.display()
            );
        }
        if let Some(f) = tensorboard::event_files(t).first() {
            bail!(
                "{}: already holds TensorBoard event files ({}): remove them, or choose another \
                 folder with --out",
                t.display(),
                f.display()
            );
        }
    }
    let mut said = String::new();
    for (run, t) in runs.iter().zip(&targets) {
        let events = tail::replay(run)?;
        let (file, n) = tensorboard::export(&events, t)?;
        said += &format!("{}: {n} records -> {}\n", run.display(), file.display());
    }
    if let Some(out) = &args.out {
        said += &format!("view with: tensorboard --logdir {}\n", out.display());
    }
    Ok(said)
}
