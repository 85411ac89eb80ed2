//! `gaplab report`: figures for papers from run directories (the drawing is `crate::report`).

use std::path::PathBuf;

use anyhow::Result;

use crate::report::{self, Format, Options, PrefixGap, Run, PREFIX_GAP_FILE};

use super::print;

/// Figures for papers from run directories: loss, rewards and accuracy, the gap chart, the
/// prefix heatmap, token-contribution strips and ΔQ(k), with a report.md listing the runs,
/// their config differences and final metrics. Runs that differ only by their seed are drawn
/// as one line, their mean with a ± std band.
#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// Run directories (e.g. WORKSPACE/runs/dpo-20250101-120000).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Folder the figures and report.md are written to (created if missing).
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
    /// Image format of the figures: svg or png.
    #[arg(long, default_value = "svg")]
    pub format: Format,
    /// ΔQ(k) of preference data, as `gaplab analyze prefix-gap --json` writes it (repeatable;
    /// the legend names each by its file's stem). A prefix-gap.json inside a run directory is
    /// drawn too.
    #[arg(long, value_name = "FILE.json")]
    pub prefix_gap: Vec<PathBuf>,
    /// Draw every run on its own, even runs that differ only by their seed.
    #[arg(long)]
    pub no_group: bool,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let mut runs = args
        .runs
        .iter()
        .map(|d| Run::load(d))
        .collect::<Result<Vec<Run>>>()?;
    report::name_runs(&mut runs);
    let mut gap_files = args.prefix_gap.clone();
    gap_files.extend(
        args.runs
            .iter()
            .map(|d| d.join(PREFIX_GAP_FILE))
            .filter(|p| p.is_file()),
    );
    let gaps = gap_files
        .iter()
        .map(|p| PrefixGap::load(p))
        .collect::<Result<Vec<_>>>()?;
    let opts = Options {
        out: args.out.clone(),
        format: args.format,
        group: !args.no_group,
    };
    let written = report::write(&runs, &gaps, &opts)?;
    let mut text = format!(
        "wrote {} and {} figure{} to {}\n",
        written.markdown.display(),
        written.figures.len(),
        if written.figures.len() == 1 { "" } else { "s" },
        args.out.display()
    );
    for (path, _) in &written.figures {
        text += &format!("  {}\n", path.display());
    }
    for n in &written.notes {
        text += &format!("  not drawn: {n}\n");
    }
    print(&text);
    Ok(())
}
