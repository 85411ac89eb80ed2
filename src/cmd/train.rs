//! `gaplab train`: runs the variants of a workspace (or resumes a run) on the engine thread and
//! reports progress on stderr.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

/// Writes to stderr, ignoring failures: after a hang-up the terminal is gone, and a progress
/// line must never take the training down with it.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

use crate::config::Workspace;
use crate::engine::{self, Command, Outcome, Plan, Work};
use crate::event::{Event, Level, Observer, RunState};

/// Train the variants of a workspace (or one of them, or resume a run).
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// Workspace folder (holding gaplab.toml).
    pub workspace: PathBuf,
    /// Run only this variant.
    #[arg(long)]
    pub variant: Option<String>,
    /// Continue a run directory from its latest checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// With --resume: continue even though restart-only settings of the workspace changed
    /// since the run started, keeping the run's own.
    #[arg(long, requires = "resume")]
    pub force: bool,
    /// Where run directories go (default: WORKSPACE/runs).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Progress on stderr instead of the dashboard (the default when stdout is not a
    /// terminal).
    #[arg(long)]
    pub headless: bool,
    /// Dashboard options (they override the config's `[ui]`).
    #[command(flatten)]
    pub ui: super::UiArgs,
}

/// Builds the engine's plan from the arguments.
pub fn plan(args: &TrainArgs) -> Result<Plan> {
    if let Some(dir) = &args.resume {
        let dir = std::path::absolute(dir).unwrap_or(dir.clone());
        let root = dir
            .parent()
            .context("--resume: expected a run directory")?
            .to_path_buf();
        let run = crate::runlog::RunDir::open(&dir)?;
        let latest = resume_workspace(args, &run)?;
        return Ok(Plan {
            runs_root: args.out.clone().unwrap_or(root),
            work: Work::Resume { dir, latest },
        });
    }
    let ws = Workspace::load(&args.workspace)?;
    let names = match &args.variant {
        Some(v) => vec![v.clone()],
        None => ws.variant_names(),
    };
    let cfgs = names
        .iter()
        .map(|n| ws.run_config(n))
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan {
        runs_root: args.out.clone().unwrap_or_else(|| ws.dir.join("runs")),
        work: Work::Variants(cfgs),
    })
}

/// The workspace a resumed run takes its live settings from, checked against the settings the
/// run started with: restart-only ones that changed (a longer `max_len`, another LoRA rank)
/// cannot apply to a run halfway through, so the resume is refused, naming each, unless
/// `--force` keeps the run's own. A workspace that cannot be read or no longer has the run's
/// variant is refused the same way.
fn resume_workspace(
    args: &TrainArgs,
    run: &crate::runlog::RunDir,
) -> Result<Option<Box<Workspace>>> {
    let own = run.read_config()?;
    let current = Workspace::load(&args.workspace).and_then(|ws| {
        let cfg = ws.run_config(&own.variant)?;
        Ok((ws, cfg))
    });
    let keep_own = "pass --force to resume with the run's own settings";
    let (ws, cfg) = match current {
        Ok(x) => x,
        Err(e) if args.force => {
            say!(
                "gaplab: --force: resuming {} with its own settings ({e:#})",
                run.path.display()
            );
            return Ok(None);
        }
        Err(e) => anyhow::bail!(
            "--resume: cannot compare {} with the workspace: {e:#}; fix the workspace or {keep_own}",
            run.path.display()
        ),
    };
    let changed = own.restart_changes(&cfg)?;
    if !changed.is_empty() {
        let list = changed
            .iter()
            .map(|c| format!("{} ({} -> {})", c.field, c.old, c.new))
            .collect::<Vec<_>>()
            .join(", ");
        anyhow::ensure!(
            args.force,
            "--resume: restart-only settings changed since {} started: {list}; put them back, start a new run, or {keep_own}",
            run.path.display()
        );
        say!(
            "gaplab: --force: resuming {} with its own restart-only settings, not the workspace's: {list}",
            run.path.display()
        );
    }
    Ok(Some(Box::new(ws)))
}

/// Watches the workspace's `gaplab.toml` (unless `mode` is None: `--no-watch`): each edit is
/// parsed and validated as a whole, then sent to the engine, which applies its live settings at
/// the next step boundary (or reports the error and keeps the config in effect).
pub fn watch_config(
    workspace: &std::path::Path,
    mode: Option<crate::watch::Mode>,
    commands: std::sync::mpsc::Sender<Command>,
) -> Result<Option<crate::watch::Watcher>> {
    let Some(mode) = mode else {
        return Ok(None);
    };
    let ws = Workspace::load(workspace)?;
    let (dir, file) = (ws.dir, ws.file);
    crate::watch::spawn(
        vec![crate::watch::Target::File(file.clone())],
        mode,
        move |change| {
            // Removed (or mid-save): wait for the file to come back.
            let Some(bytes) = change.content else { return };
            let parsed = crate::config::decode(&file, bytes)
                .and_then(|text| Workspace::parse(&dir, &file, &text));
            let cmd = match parsed {
                Ok(ws) => Command::Reload(Box::new(ws)),
                Err(e) => Command::ConfigError(e.to_string()),
            };
            let _ = commands.send(cmd);
        },
    )
    .map(Some)
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Signals while training: the first SIGINT/SIGTERM finishes the current step, writes a
/// checkpoint and stops; a second one exits at once. SIGHUP (the terminal went away, e.g. a
/// dropped SSH connection) never stops training: it sets `hangup` for the dashboard to detach.
fn on_signals(
    commands: std::sync::mpsc::Sender<Command>,
    hangup: Arc<AtomicBool>,
    terminate: Arc<AtomicBool>,
    quiet: bool,
) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("gaplab-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    hangup.store(true, Ordering::SeqCst);
                } else if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
                    terminate.store(true, Ordering::SeqCst);
                    if !quiet {
                        say!("\ngaplab: stopping after this step (signal again to quit at once)");
                    }
                    let _ = commands.send(Command::Stop);
                } else {
                    crate::ui::terminal::restore();
                    // Exiting skips destructors: the locks would outlive the process.
                    crate::runlog::lock::release_all();
                    std::process::exit(130);
                }
            }
        })?;
    Ok(())
}

/// Run directories already in `root` (finished or earlier runs), newest first, to overlay.
fn previous_runs(root: &std::path::Path, max: usize) -> Vec<PathBuf> {
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            !n.starts_with('.')
                && !n.starts_with("sft-")
                && !n.starts_with("init-")
                && p.join(crate::runlog::CONFIG).exists()
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    v.sort();
    v.into_iter().rev().take(max).map(|x| x.1).collect()
}

/// Trains with the dashboard when stdout and stdin are a terminal (unless `--headless`),
/// otherwise with progress on stderr.
pub fn run(args: &TrainArgs) -> Result<Outcome> {
    // Checked with or without the dashboard: a bad flag is an error either way.
    let mut opts = args.ui.options()?;
    let tty = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if args.headless || !tty {
        return run_headless(args);
    }
    let plan = plan(args)?;
    if let Ok(ws) = Workspace::load(&args.workspace) {
        let ui = &ws.config.ui;
        opts.theme = opts.theme.or(Some(ui.theme.clone()));
        opts.color = opts
            .color
            .or(crate::ui::theme::ColorDepth::from_setting(ui.color));
        opts.ascii |= ui.markers == crate::config::Markers::Dot;
        opts.smoothing = opts.smoothing.or(Some(ui.smoothing));
        opts.refresh_hz = opts.refresh_hz.or(Some(ui.refresh_hz));
        if opts.theme_dirs.is_empty() {
            opts.theme_dirs = crate::ui::app::theme_dirs(Some(&ws.dir));
        }
    }
    if opts.theme_dirs.is_empty() {
        opts.theme_dirs = crate::ui::app::theme_dirs(None);
    }
    let overlay = previous_runs(&plan.runs_root, 6);
    let engine = engine::spawn(plan)?;
    let _watch = watch_config(&args.workspace, opts.watch, engine.commands.clone())?;
    let signals = crate::ui::app::Signals::default();
    on_signals(
        engine.commands.clone(),
        signals.hangup.clone(),
        signals.terminate.clone(),
        true,
    )?;
    let source = crate::ui::app::Source::Engine { engine, overlay };
    let finish = crate::ui::app::run(source, opts, signals)?;
    for line in &finish.summary {
        say!("{line}");
    }
    if finish.outcome == Some(Outcome::Stopped) {
        say!(
            "continue a stopped run with: gaplab train {} --resume RUN_DIR",
            args.workspace.display()
        );
    }
    Ok(finish.outcome.unwrap_or(Outcome::Finished))
}

/// Runs training with progress on stderr.
pub fn run_headless(args: &TrainArgs) -> Result<Outcome> {
    let plan = plan(args)?;
    let engine = engine::spawn(plan)?;
    let _watch = watch_config(&args.workspace, args.ui.watch(), engine.commands.clone())?;
    // Headless runs ignore SIGHUP (training goes on when the shell that started it closes).
    let unused = Arc::new(AtomicBool::new(false));
    on_signals(engine.commands.clone(), unused.clone(), unused, false)?;
    let mut progress = Progress::new(std::io::stderr().is_terminal(), args.workspace.clone());
    for ev in engine.events.iter() {
        progress.on_event(0, &ev);
    }
    progress.finish_line();
    engine.join()
}

/// Renders events as progress on stderr: an updating line on a terminal, periodic lines
/// otherwise.
pub struct Progress {
    tty: bool,
    workspace: PathBuf,
    variant: String,
    run_dir: PathBuf,
    total: usize,
    start_step: usize,
    started: Instant,
    every: usize,
    line_open: bool,
    last: Option<(usize, f64, f64, f64, f64)>,
}

impl Progress {
    pub fn new(tty: bool, workspace: PathBuf) -> Self {
        Self {
            tty,
            workspace,
            variant: String::new(),
            run_dir: PathBuf::new(),
            total: 0,
            start_step: 0,
            started: Instant::now(),
            every: 1,
            line_open: false,
            last: None,
        }
    }

    fn say(&mut self, text: &str) {
        self.finish_line();
        say!("{text}");
    }

    pub fn finish_line(&mut self) {
        if self.line_open {
            say!();
            self.line_open = false;
        }
    }
}

/// The judges' part of a headless eval line: the task judge's score, the reward model's full
/// score and its first prefix scores (see train::judge for the names), and its scoring time.
fn judge_summary(m: &std::collections::BTreeMap<String, f64>) -> String {
    let mut text = String::new();
    let rm_only = m.contains_key("eval_judge/rm_seconds") && !m.contains_key("eval_judge/rm_score");
    if let Some(v) = m.get("eval_judge/score") {
        text += &format!("  {} {v:.3}", if rm_only { "rm score" } else { "judge" });
    }
    if let Some(v) = m.get("eval_judge/rm_score") {
        text += &format!("  rm score {v:.3}");
    }
    let mut prefixes: Vec<(usize, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let k = k.strip_prefix("eval_judge/prefix_score@")?;
            Some((k.parse().ok()?, *v))
        })
        .collect();
    prefixes.sort_by_key(|p| p.0);
    if !prefixes.is_empty() {
        let parts: Vec<String> = prefixes
            .iter()
            .take(4)
            .map(|(k, v)| format!("k{k} {v:.3}"))
            .collect();
        text += &format!("  rm prefix {}", parts.join(" "));
    }
    if let Some(s) = m.get("eval_judge/rm_seconds") {
        text += &format!(" ({s:.1}s)");
    }
    text
}

/// Everything but the periodic step and eval lines is said as [`Event::describe`] says it,
/// after the variant's name.
impl Observer for Progress {
    fn on_event(&mut self, _source: usize, ev: &Event) {
        // A variant that fails before it starts has not been named by a Started event; its
        // message names it.
        let said = |p: &Self| {
            let sentence = ev.describe().unwrap_or_default();
            if p.variant.is_empty() {
                sentence
            } else {
                format!("{}: {sentence}", p.variant)
            }
        };
        match ev {
            Event::Started {
                variant,
                run_dir,
                start_step,
                total_steps,
                ..
            } => {
                self.variant = variant.clone();
                self.run_dir = run_dir.clone();
                self.total = *total_steps;
                self.start_step = *start_step;
                self.started = Instant::now();
                self.every = (total_steps / 20).max(1);
                self.last = None;
                self.say(&said(self));
            }
            Event::Step(m) => {
                let g = |k: &str| m.metrics.get(k).copied().unwrap_or(f64::NAN);
                self.last = Some((
                    m.step,
                    g("loss"),
                    g("rewards/margins"),
                    g("rewards/accuracies"),
                    g("tokens_per_s"),
                ));
                let line = self.step_line();
                if self.tty {
                    let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
                    let _ = std::io::stderr().flush();
                    self.line_open = true;
                } else if m.step.is_multiple_of(self.every) || m.step == self.total {
                    say!("{line}");
                }
            }
            Event::Eval(r) => {
                let g = |k: &str| r.metrics.get(k).copied().unwrap_or(f64::NAN);
                let mut text = format!(
                    "{}: eval @ {}: loss {:.4}",
                    self.variant,
                    r.step,
                    g("eval_loss")
                );
                // The SFT stage's eval has no pairs to compare: no accuracy, no margin.
                if let Some(a) = r.metrics.get("eval_rewards/accuracies") {
                    text += &format!("  accuracy {a:.3}");
                }
                if let Some(m) = r.metrics.get("eval_rewards/margins") {
                    text += &format!("  margin {m:+.4}");
                }
                text += &health_text(&r.metrics);
                if !r.prefix.j.is_empty() {
                    let parts: Vec<String> = r
                        .prefix
                        .j
                        .iter()
                        .zip(&r.prefix.accuracy)
                        .take(4)
                        .map(|(j, a)| format!("j{j} {a:.2}"))
                        .collect();
                    text += &format!("  prefix accuracy {}", parts.join(" "));
                }
                text += &judge_summary(&r.metrics);
                self.say(&text);
            }
            Event::Log { level, .. } => {
                if *level != Level::Info {
                    self.say(&said(self));
                }
            }
            Event::Skipped { .. }
            | Event::Applied { .. }
            | Event::ConfigRejected { .. }
            | Event::Alert { .. } => self.say(&said(self)),
            Event::State { step, state } => {
                match state {
                    RunState::Finished => {
                        let took = crate::ui::math::duration(self.started.elapsed().as_secs_f64());
                        let summary = match self.last {
                            Some((_, loss, margin, acc, _)) => {
                                let mut s = format!(" (last step: loss {loss:.4}");
                                if margin.is_finite() {
                                    s += &format!(", margin {margin:+.4}");
                                }
                                if acc.is_finite() {
                                    s += &format!(", accuracy {acc:.3}");
                                }
                                s + ")"
                            }
                            None => String::new(),
                        };
                        let text = format!(
                            "{} {step} steps in {took}{summary}; run directory {}",
                            said(self),
                            self.run_dir.display()
                        );
                        self.say(&text);
                    }
                    RunState::Stopped => {
                        let text = format!(
                            "{} with a checkpoint; continue with: gaplab train {} --resume {}",
                            said(self),
                            self.workspace.display(),
                            self.run_dir.display()
                        );
                        self.say(&text);
                    }
                    RunState::Failed(_) => self.say(&said(self)),
                    RunState::Starting | RunState::Running | RunState::Paused => {}
                }
                if state.is_over() {
                    // What comes next belongs to the next variant.
                    self.variant.clear();
                }
            }
            Event::Samples { .. } | Event::Checkpoint { .. } => {}
        }
    }
}

/// The generation health of an eval line (greedy length, stop share and repetition, the
/// sampled KL), for the metrics the eval has.
fn health_text(metrics: &std::collections::BTreeMap<String, f64>) -> String {
    let mut text = String::new();
    for (name, label, digits) in [
        ("eval_gen/length", "gen length", 1),
        ("eval_gen/stop_share", "stop", 2),
        ("eval_gen/repetition", "repetition", 2),
        ("eval_gen/kl", "kl", 3),
    ] {
        if let Some(v) = metrics.get(name) {
            text += &format!("  {label} {v:.digits$}");
        }
    }
    text
}

impl Progress {
    fn step_line(&self) -> String {
        let Some((step, loss, margin, acc, tps)) = self.last else {
            return String::new();
        };
        let done = step.saturating_sub(self.start_step).max(1) as f64;
        let eta = self.started.elapsed().as_secs_f64() / done
            * (self.total - step.min(self.total)) as f64;
        let width = 20;
        let filled = (step * width / self.total.max(1)).min(width);
        // The SFT stage has no preference metrics.
        let preference = if margin.is_nan() {
            String::new()
        } else {
            format!(" margin {margin:+.4} acc {acc:.2}")
        };
        format!(
            "{} {:>w$}/{} [{}{}] loss {:.4}{} {:.0} tok/s ETA {}",
            self.variant,
            step,
            self.total,
            "#".repeat(filled),
            ".".repeat(width - filled),
            loss,
            preference,
            tps,
            crate::ui::math::duration(eta),
            w = self.total.to_string().len()
        )
    }
}
