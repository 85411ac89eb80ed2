//! `gaplab attach`: the dashboard on run directories, following them while they are written;
//! or, without a dashboard (`--headless`, `--jsonl`), their progress or their records as text.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::engine::control::{self, ControlClient};
use crate::event::{Event, Observer};
use crate::runlog::{tail, CONFIG};
use crate::ui::app::{self, Source};

/// Open the dashboard on run directories (or all runs of a workspace), following them live; a
/// Hugging Face Trainer (TRL) output folder opens as a finished run.
#[derive(clap::Args, Clone, Debug)]
pub struct AttachArgs {
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// No dashboard: progress lines on stderr, as `train --headless` prints them; exits when
    /// every run has ended.
    #[arg(long, conflicts_with = "jsonl")]
    pub headless: bool,
    /// No dashboard: every event on stdout as its events.jsonl record, one a line; exits when
    /// every run has ended.
    #[arg(long)]
    pub jsonl: bool,
    // Without a dashboard nothing is sent to the run; this holds a control connection to each
    // live run anyway, loading its socket as a dashboard would (for load benchmarks).
    #[arg(long, hide = true)]
    pub hold_control: bool,
    #[command(flatten)]
    pub ui: super::UiArgs,
}

/// Run directories named by `paths`: a run directory itself, a Hugging Face Trainer (TRL)
/// output folder (its trainer_state.json read now, so that a bad one is an error at once), or
/// every run of a workspace.
pub fn run_dirs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.join(CONFIG).exists() {
            out.push(p.clone());
        } else if crate::runlog::trl::is_trainer_folder(p) {
            tail::Tail::open(p)?;
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
    if args.headless || args.jsonl {
        return run_headless(args, dirs);
    }
    if !(std::io::stdout().is_terminal() && std::io::stdin().is_terminal()) {
        bail!(
            "attach draws a dashboard and needs a terminal (without one: --headless for \
             progress lines, --jsonl for the event records)"
        );
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

/// How often a headless viewer reads its runs (as often as the dashboard does).
const POLL: Duration = Duration::from_millis(250);
/// How long a run must have written nothing before a headless viewer asks whether its training
/// process is still there (and how often it asks again).
const SILENCE: Duration = Duration::from_secs(30);

/// Follows `dirs` without a dashboard until every run has ended, SIGINT/SIGTERM, or (with
/// `--jsonl`) stdout is closed.
fn run_headless(args: &AttachArgs, dirs: Vec<PathBuf>) -> Result<()> {
    let terminate = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, terminate.clone())?;
    }
    // Held, unused, until the viewer leaves; a run that is not live has none.
    let _controls: Vec<ControlClient> = if args.hold_control {
        dirs.iter()
            .filter_map(|d| ControlClient::connect(d).ok())
            .collect()
    } else {
        Vec::new()
    };
    let mut sink = if args.jsonl {
        Sink::Records(std::io::stdout().lock())
    } else {
        // One updating line is a single run's; several runs get periodic lines.
        let tty = std::io::stderr().is_terminal() && dirs.len() == 1;
        Sink::Progress(
            dirs.iter()
                .map(|d| super::train::Progress::new(tty, workspace_of(d)))
                .collect(),
        )
    };
    let mut runs: Vec<Followed> = dirs.iter().map(|d| Followed::new(d)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let follower = tail::follow(dirs, POLL, tx, stop.clone());
    while !terminate.load(Ordering::SeqCst) {
        match rx.recv_timeout(POLL) {
            Ok((i, ev)) => {
                if let Some(r) = runs.get_mut(i) {
                    r.over = over_after(r.over, &ev);
                    r.heard = Instant::now();
                }
                if sink.event(i, &ev).is_err() {
                    // The reader is gone (`gaplab attach --jsonl RUN | head`): nothing to do.
                    break;
                }
            }
            // Every run has ended and what came with its end has been passed on.
            Err(RecvTimeoutError::Timeout) if runs.iter().all(Followed::done) => break,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        for r in runs.iter_mut().filter(|r| !r.done()) {
            r.check_gone();
        }
    }
    stop.store(true, Ordering::SeqCst);
    drop(rx);
    let _ = follower.join();
    sink.finish();
    let gone: Vec<String> = runs
        .iter()
        .filter(|r| r.gone)
        .map(|r| r.dir.display().to_string())
        .collect();
    if !gone.is_empty() {
        bail!(
            "{}: ended without a final state; its training process is gone (killed?) and left \
             its control socket behind",
            gone.join(", ")
        );
    }
    Ok(())
}

/// What a headless viewer knows of one of its runs.
struct Followed {
    dir: PathBuf,
    over: bool,
    /// The run's training process has died without saying so.
    gone: bool,
    /// When an event of the run last arrived (or its process was last asked about).
    heard: Instant,
}

impl Followed {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            over: false,
            gone: false,
            heard: Instant::now(),
        }
    }

    fn done(&self) -> bool {
        self.over || self.gone
    }

    /// After a long silence, whether the process that trains the run is still there: one that
    /// was killed leaves its socket file with nobody listening. A paused run, a long eval or a
    /// run without a socket (one written on another machine, or set up by an earlier version)
    /// keeps its viewer.
    fn check_gone(&mut self) {
        if self.heard.elapsed() < SILENCE {
            return;
        }
        self.heard = Instant::now();
        self.gone = abandoned_socket(&self.dir);
        if self.gone {
            let _ = writeln!(
                std::io::stderr(),
                "gaplab: {}: nothing written for {} s and nobody answers on its control socket: \
                 its training process is gone; no longer following it",
                self.dir.display(),
                SILENCE.as_secs()
            );
        }
    }
}

/// Whether the run directory's control socket exists but nobody listens on it (the process
/// that bound it was killed).
fn abandoned_socket(run_dir: &Path) -> bool {
    let addr = std::fs::read_to_string(run_dir.join(control::ADDRESS)).ok();
    let socket = match addr.as_deref().map(str::trim_end) {
        Some(a) if !a.is_empty() => PathBuf::from(a),
        _ => run_dir.join(control::SOCKET),
    };
    match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

/// Whether a run has ended after `ev`, given whether it had before: its last state says so (a
/// stopped run that is resumed starts again).
fn over_after(over: bool, ev: &Event) -> bool {
    match ev {
        Event::State { state, .. } => state.is_over(),
        Event::Started { .. } => false,
        _ => over,
    }
}

/// The workspace of a run directory (`WS/runs/RUN`), for the resume hint of a stopped run.
fn workspace_of(run_dir: &Path) -> PathBuf {
    run_dir
        .parent()
        .and_then(Path::parent)
        .filter(|w| !w.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where a headless viewer's events go.
enum Sink<W: Write> {
    /// One progress renderer per followed run.
    Progress(Vec<super::train::Progress>),
    /// Every event's record, a line each, flushed at once for the next program in the pipe.
    Records(W),
}

impl<W: Write> Sink<W> {
    fn event(&mut self, source: usize, ev: &Event) -> std::io::Result<()> {
        match self {
            Sink::Progress(p) => {
                if let Some(p) = p.get_mut(source) {
                    p.on_event(0, ev);
                }
                Ok(())
            }
            Sink::Records(out) => {
                let line = ev.to_record().map_err(std::io::Error::other)?;
                writeln!(out, "{line}")?;
                out.flush()
            }
        }
    }

    fn finish(&mut self) {
        match self {
            Sink::Progress(p) => p.iter_mut().for_each(|p| p.finish_line()),
            Sink::Records(out) => {
                let _ = out.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Level, RunState};

    fn state(step: usize, state: RunState) -> Event {
        Event::State { step, state }
    }

    #[test]
    fn a_run_is_over_from_its_last_state_until_it_starts_again() {
        let log = Event::Log {
            step: 3,
            level: Level::Info,
            message: "x".into(),
        };
        assert!(!over_after(false, &state(0, RunState::Running)));
        assert!(over_after(false, &state(6, RunState::Finished)));
        assert!(over_after(false, &state(2, RunState::Stopped)));
        assert!(over_after(false, &state(2, RunState::Failed("oom".into()))));
        // Whatever follows the end (a checkpoint, a log line) leaves it over...
        assert!(over_after(true, &log));
        assert!(!over_after(false, &log));
        // ...until the run is resumed.
        assert!(!over_after(true, &state(2, RunState::Running)));
    }

    #[test]
    fn records_are_one_flushed_line_per_event() {
        let mut sink = Sink::Records(Vec::new());
        let evs = [state(0, RunState::Running), state(6, RunState::Finished)];
        for ev in &evs {
            sink.event(0, ev).unwrap();
        }
        let Sink::Records(out) = sink else {
            unreachable!()
        };
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for (line, ev) in lines.iter().zip(&evs) {
            assert_eq!(&Event::from_record(line).unwrap(), ev);
        }
    }

    #[test]
    fn a_socket_nobody_listens_on_is_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        // No socket at all: a run written elsewhere, not a killed one.
        assert!(!abandoned_socket(dir.path()));
        let listener =
            std::os::unix::net::UnixListener::bind(dir.path().join(control::SOCKET)).unwrap();
        assert!(!abandoned_socket(dir.path()));
        // Closing the listener leaves the socket file, as a killed process does.
        drop(listener);
        assert!(abandoned_socket(dir.path()));
    }

    #[test]
    fn a_run_directory_belongs_to_the_workspace_two_levels_up() {
        assert_eq!(
            workspace_of(Path::new("/w/ws/runs/dpo-1")),
            PathBuf::from("/w/ws")
        );
        assert_eq!(workspace_of(Path::new("runs/dpo-1")), PathBuf::from("."));
    }
}
