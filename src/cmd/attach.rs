//! `gaplab attach`: the dashboard on run directories, following them while they are written.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::runlog::CONFIG;
use crate::ui::app::{self, Source};

/// Open the dashboard on run directories (or all runs of a workspace), following them live.
#[derive(clap::Args, Clone, Debug)]
pub struct AttachArgs {
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    #[command(flatten)]
    pub ui: super::UiArgs,
}

/// Run directories named by `paths`: a run directory itself, or every run of a workspace.
pub fn run_dirs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.join(CONFIG).exists() {
            out.push(p.clone());
        } else if p.join(crate::config::FILE_NAME).exists() || p.join("runs").is_dir() {
            let mut runs: Vec<PathBuf> = std::fs::read_dir(p.join("runs"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|r| {
                    let n = r
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    !n.starts_with('.') && r.join(CONFIG).exists()
                })
                .collect();
            runs.sort();
            if runs.is_empty() {
                bail!("{}: no runs yet", p.display());
            }
            out.extend(runs);
        } else {
            bail!(
                "{}: not a run directory (no {CONFIG}) or a workspace",
                p.display()
            );
        }
    }
    Ok(out)
}

pub fn run(args: &AttachArgs) -> Result<()> {
    let mut opts = args.ui.options()?;
    let dirs = run_dirs(&args.runs)?;
    if !(std::io::stdout().is_terminal() && std::io::stdin().is_terminal()) {
        bail!("attach draws a dashboard and needs a terminal");
    }
    if opts.theme_dirs.is_empty() {
        let ws = dirs.first().and_then(|d| d.parent()).and_then(Path::parent);
        opts.theme_dirs = app::theme_dirs(ws);
    }
    let signals = app::Signals::default();
    signal_hook::flag::register(signal_hook::consts::SIGHUP, signals.hangup.clone())?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signals.terminate.clone())?;
    }
    app::run(Source::Runs(dirs), opts, signals)?;
    Ok(())
}
