//! The dashboard's main loop: events from a live engine or from followed run directories,
//! keys from the terminal, a frame only when something changed (at most `refresh_hz` a second).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ratatui::crossterm::event::{self as term, KeyEvent, KeyEventKind};

use super::state::{App, Effect, Exit, Role};
use super::terminal::{self, TerminalGuard};
use super::theme::{self, ColorDepth, Theme};
use super::view;
use crate::engine::control::{ControlClient, Remote};
use crate::engine::Command;
use crate::engine::{Engine, Outcome};
use crate::event::{Change, Event, Level, Observer};
use crate::runlog::tail;
use crate::watch;

/// Where the dashboard's events come from.
pub enum Source {
    /// A training engine this process runs (quitting stops it), plus finished runs to overlay.
    Engine {
        engine: Engine,
        overlay: Vec<PathBuf>,
    },
    /// Run directories followed from disk; each may be controllable through its socket.
    Runs(Vec<PathBuf>),
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Theme name or path (default: the config's `[ui] theme`, else "default").
    pub theme: Option<String>,
    /// Colour depth (default: detected from the environment).
    pub color: Option<ColorDepth>,
    /// Markers without Braille.
    pub ascii: bool,
    pub smoothing: Option<f64>,
    pub refresh_hz: Option<f64>,
    /// Folders searched for `NAME.toml` themes.
    pub theme_dirs: Vec<PathBuf>,
    /// Reload the theme file when it is edited (None: do not watch).
    pub watch: Option<watch::Mode>,
}

/// The shortest interval between frames that only show new training data.
const DATA_FRAME: Duration = Duration::from_millis(500);

enum Msg {
    Key(KeyEvent),
    Resize,
    Event(usize, Event),
    EngineGone,
    /// A theme file was edited.
    ThemeFile(watch::Change),
}

/// How the dashboard looks, as chosen (and changed by keys, config edits and theme edits).
struct Looks {
    depth: ColorDepth,
    /// The theme as named by the user (a name or a path).
    spec: String,
    dirs: Vec<PathBuf>,
    /// Themes the theme key cycles through.
    names: Vec<String>,
    frame: Duration,
}

impl Looks {
    fn resolve(&self, spec: &str) -> Result<Theme> {
        resolve_theme(spec, self.depth, &self.dirs)
    }

    /// Switches to theme `spec` (or reloads it); on failure the current theme stays and the
    /// status bar says why.
    fn set_theme(&mut self, app: &mut App, spec: &str, why: &str) {
        app.dirty = true;
        match self.resolve(spec) {
            Ok(t) => {
                app.theme = t;
                self.spec = spec.to_string();
                app.status.reload = Some((true, format!("theme {spec} {why}")));
            }
            Err(e) => {
                let keep = &app.theme.name;
                app.status.reload = Some((false, format!("theme error, keeping {keep}: {e:#}")));
                app.note(Level::Warn, format!("theme {spec}: {e:#}; keeping {keep}"));
            }
        }
    }

    /// Takes a `ui.*` setting changed by an edit of the workspace config.
    fn apply(&mut self, app: &mut App, c: &Change) {
        let value = c.new.trim_matches('"');
        app.dirty = true;
        match c.field.as_str() {
            "ui.theme" => self.set_theme(app, value, "(config)"),
            "ui.smoothing" => {
                if let Ok(v) = value.parse::<f64>() {
                    app.charts.smoothing = v.clamp(0.0, 0.999);
                }
            }
            "ui.refresh_hz" => {
                if let Ok(v) = value.parse::<f64>() {
                    self.frame = frame_for(v);
                }
            }
            "ui.color" => {
                self.depth = ColorDepth::parse(value).unwrap_or_else(ColorDepth::detect);
                let spec = self.spec.clone();
                self.set_theme(app, &spec, "(colour depth changed)");
            }
            "ui.markers" => app.charts.braille = value != "dot",
            _ => {}
        }
    }

    /// Whether an edited file is (or may now be) the active theme's.
    fn is_active(&self, path: &std::path::Path) -> bool {
        let stem = |p: &std::path::Path| p.file_stem().map(|s| s.to_os_string());
        stem(path) == stem(std::path::Path::new(&self.spec))
    }
}

fn frame_for(refresh_hz: f64) -> Duration {
    Duration::from_secs_f64(1.0 / refresh_hz.clamp(0.5, 60.0))
}

/// Watches the theme folders (and the folder of a theme given by path) for edits.
fn watch_themes(opts: &Options, spec: &str, tx: Sender<Msg>) -> Option<watch::Watcher> {
    let mode = opts.watch?;
    let mut targets: Vec<watch::Target> = opts
        .theme_dirs
        .iter()
        .filter(|d| d.is_dir())
        .map(|d| watch::Target::Dir {
            dir: d.clone(),
            ext: "toml".into(),
        })
        .collect();
    if spec.contains('/') || spec.ends_with(".toml") {
        targets.push(watch::Target::File(PathBuf::from(spec)));
    }
    if targets.is_empty() {
        return None;
    }
    watch::spawn(targets, mode, move |c| {
        let _ = tx.send(Msg::ThemeFile(c));
    })
    .ok()
}

/// Default theme folders: the workspace's and the current directory's `themes/`, and the
/// source tree's when run from it.
pub fn theme_dirs(workspace: Option<&std::path::Path>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(w) = workspace {
        v.push(w.join("themes"));
    }
    v.push(PathBuf::from("themes"));
    v.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("themes"));
    v
}

pub fn resolve_theme(name: &str, depth: ColorDepth, dirs: &[PathBuf]) -> Result<Theme> {
    Ok(theme::find(name, dirs)?.0.resolve(depth))
}

/// Resident memory of this process (Linux), for the status bar.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Gives the dashboard's threads (this one and those it spawns from now on) a lower priority
/// than training: on a machine whose cores training keeps busy, every wake-up of the dashboard
/// would otherwise preempt a compute thread that the others then wait for.
fn lower_priority() {
    // SAFETY: plain system calls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

fn spawn_input(tx: Sender<Msg>, hangup: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("gaplab-input".into())
        .spawn(move || loop {
            // A vanished terminal can keep answering reads: stop at the hang-up.
            if hangup.load(Ordering::SeqCst) {
                break;
            }
            match term::read() {
                Ok(term::Event::Key(k)) if k.kind != KeyEventKind::Release => {
                    if tx.send(Msg::Key(k)).is_err() {
                        break;
                    }
                }
                Ok(term::Event::Resize(..)) => {
                    if tx.send(Msg::Resize).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                // The terminal is gone (hang-up): no more keys.
                Err(_) => break,
            }
        })
        .expect("input thread");
}

/// Forwards followed run directories' events, shifted to source numbers from `first`.
fn spawn_follow(dirs: Vec<PathBuf>, first: usize, tx: Sender<Msg>, stop: Arc<AtomicBool>) {
    if dirs.is_empty() {
        return;
    }
    let (ttx, trx) = mpsc::channel();
    tail::follow(dirs, Duration::from_millis(250), ttx, stop);
    std::thread::spawn(move || {
        for (i, ev) in trx {
            if tx.send(Msg::Event(first + i, ev)).is_err() {
                break;
            }
        }
    });
}

/// Flags the process's signal handlers set for the dashboard.
#[derive(Clone, Default)]
pub struct Signals {
    /// SIGHUP: the terminal is gone; detach and let training go on.
    pub hangup: Arc<AtomicBool>,
    /// SIGINT/SIGTERM: leave once training has stopped (the handler asked the engine to stop).
    pub terminate: Arc<AtomicBool>,
}

/// How the dashboard ended.
pub struct Finish {
    /// The engine's outcome when the dashboard owned one.
    pub outcome: Option<Outcome>,
    /// One line per run trained, for the shell once the screen is restored.
    pub summary: Vec<String>,
}

/// Runs the dashboard until the user quits (or, for an engine, the terminal hangs up and the
/// engine finishes).
pub fn run(source: Source, opts: Options, signals: Signals) -> Result<Finish> {
    let hangup = signals.hangup;
    let theme_name = opts.theme.clone().unwrap_or_else(|| "default".into());
    let mut looks = Looks {
        depth: opts.color.unwrap_or_else(ColorDepth::detect),
        spec: theme_name.clone(),
        dirs: opts.theme_dirs.clone(),
        names: theme::available(&opts.theme_dirs),
        frame: frame_for(opts.refresh_hz.unwrap_or(15.0)),
    };
    let (theme, theme_error) = match looks.resolve(&theme_name) {
        Ok(t) => (t, None),
        Err(e) => (
            resolve_theme("default", looks.depth, &[])?,
            Some(format!("theme: {e:#}; using the default")),
        ),
    };
    let (tx, rx) = mpsc::channel();
    let _theme_watch = watch_themes(&opts, &theme_name, tx.clone());
    let stop_follow = Arc::new(AtomicBool::new(false));
    // Why a live run could not be controlled, when the viewer should know (another user's run):
    // a run that has ended is read-only as expected and says nothing.
    let mut refused = Vec::new();
    let (mut engine, role, mut controls) = match source {
        Source::Engine { engine, overlay } => {
            spawn_follow(overlay, 1, tx.clone(), stop_follow.clone());
            (Some(engine), Role::Owner, Vec::new())
        }
        Source::Runs(dirs) => {
            let controls: Vec<Option<ControlClient>> = dirs
                .iter()
                .map(|d| match ControlClient::connect(d) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let e = format!("{e:#}");
                        if e.starts_with("permission denied") {
                            refused.push(e);
                        }
                        None
                    }
                })
                .collect();
            let controllable = controls.iter().any(Option::is_some);
            spawn_follow(dirs, 0, tx.clone(), stop_follow.clone());
            (None, Role::Attached { controllable }, controls)
        }
    };
    let commands = engine.as_ref().map(|e| e.commands.clone());
    if let Some(engine) = &mut engine {
        let events = engine.take_events();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for ev in events.iter() {
                if tx.send(Msg::Event(0, ev)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Msg::EngineGone);
        });
    }
    lower_priority();
    let mut app = App::new(role, theme);
    app.charts.braille = !opts.ascii;
    if let Some(s) = opts.smoothing {
        app.charts.smoothing = s;
    }
    if let Some(e) = theme_error {
        app.status.reload = Some((false, e));
    }
    for e in refused {
        app.note(Level::Warn, format!("{e}; showing it read-only"));
    }
    // Keys redraw within one frame at most `refresh_hz` times a second; training events only
    // every DATA_FRAME at most: a live chart needs no more, and on a small machine every frame
    // (and the terminal emulator parsing it) takes time from training.
    let mut urgent = true;
    let mut guard = TerminalGuard::enter()?;
    spawn_input(tx.clone(), hangup.clone());
    drop(tx);
    let mut last_draw = Instant::now() - looks.frame;
    let mut last_mem = Instant::now() - Duration::from_secs(10);
    let mut hung_up = false;
    loop {
        if hangup.load(Ordering::SeqCst) {
            hung_up = true;
            break;
        }
        if signals.terminate.load(Ordering::SeqCst) && app.exit == Exit::Stay {
            app.exit = Exit::Stopping;
            app.dirty = true;
            if engine.is_none() {
                break;
            }
        }
        let (frame, data_frame) = (looks.frame, looks.frame.max(DATA_FRAME));
        let due = if urgent { frame } else { data_frame };
        let wait = if app.dirty {
            due.saturating_sub(last_draw.elapsed())
        } else {
            Duration::from_millis(250)
        };
        match rx.recv_timeout(wait) {
            Ok(msg) => {
                urgent |= matches!(msg, Msg::Key(_) | Msg::Resize);
                handle(msg, &mut app, &commands, &mut controls, &mut looks);
                // Take everything already queued before drawing.
                while let Ok(msg) = rx.try_recv() {
                    urgent |= matches!(msg, Msg::Key(_) | Msg::Resize);
                    handle(msg, &mut app, &commands, &mut controls, &mut looks);
                }
                for c in std::mem::take(&mut app.ui_changes) {
                    looks.apply(&mut app, &c);
                    urgent = true;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        for p in terminal::take_panics() {
            app.on_failure(format!("internal error: {p}"));
        }
        if engine.is_some() && last_mem.elapsed() > Duration::from_secs(1) {
            let m = rss_bytes();
            if m != app.status.memory {
                app.status.memory = m;
                app.dirty = true;
            }
            last_mem = Instant::now();
        }
        if app.dirty && last_draw.elapsed() >= if urgent { frame } else { data_frame } {
            if guard.terminal.draw(|f| view::draw(f, &mut app)).is_err() {
                // The terminal is gone (an I/O error before the hang-up signal arrived).
                hung_up = true;
                break;
            }
            app.dirty = false;
            urgent = false;
            last_draw = Instant::now();
        }
        if app.exit == Exit::Now || (app.exit == Exit::Stopping && app.engine_done) {
            break;
        }
    }
    stop_follow.store(true, Ordering::SeqCst);
    if hung_up {
        // Nothing can be written to a vanished terminal (and ratatui would complain on stderr
        // when it fails to show the cursor again).
        terminal::abandon();
        std::mem::forget(guard);
    } else {
        drop(guard);
    }
    let summary = app.summary();
    let Some(engine) = engine else {
        return Ok(Finish {
            outcome: None,
            summary,
        });
    };
    if hung_up {
        hangup.store(true, Ordering::SeqCst);
        // The terminal is gone: training goes on (resumed if it was paused), writing its run
        // directory, until it ends.
        let _ = engine.commands.send(Command::Resume);
        if !app.engine_done {
            for msg in rx.iter() {
                if let Msg::EngineGone = msg {
                    break;
                }
            }
        }
    } else if !app.engine_done {
        // Quit without stopping can only happen once training is over; wait for the engine.
        let _ = engine.commands.send(Command::Stop);
    }
    let outcome = engine.join()?;
    Ok(Finish {
        outcome: Some(outcome),
        summary,
    })
}

fn handle(
    msg: Msg,
    app: &mut App,
    commands: &Option<Sender<Command>>,
    controls: &mut [Option<ControlClient>],
    looks: &mut Looks,
) {
    match msg {
        Msg::Event(source, ev) => app.on_event(source, &ev),
        Msg::ThemeFile(c) => {
            // A file removed mid-save comes back with the next event.
            if c.content.is_some() && looks.is_active(&c.path) {
                let spec = looks.spec.clone();
                looks.set_theme(app, &spec, "reloaded");
            }
        }
        Msg::EngineGone => {
            app.engine_done = true;
            app.dirty = true;
        }
        Msg::Resize => app.dirty = true,
        Msg::Key(k) => match app.on_key(&k) {
            Some(Effect::Send(cmd)) => send(app, cmd, commands, controls),
            Some(Effect::NextTheme) => cycle_theme(app, looks),
            None => {}
        },
    }
}

fn cycle_theme(app: &mut App, looks: &mut Looks) {
    app.dirty = true;
    let names = &looks.names;
    if names.is_empty() {
        return;
    }
    let i = names
        .iter()
        .position(|n| *n == app.theme.name)
        .map_or(0, |i| (i + 1) % names.len());
    let name = names[i].clone();
    looks.set_theme(app, &name, "");
}

/// Sends a command to the engine this process owns, or over the selected run's socket.
fn send(
    app: &mut App,
    cmd: Command,
    commands: &Option<Sender<Command>>,
    controls: &mut [Option<ControlClient>],
) {
    if let Some(tx) = commands {
        let _ = tx.send(cmd);
        return;
    }
    let Some(remote) = Remote::from_command(&cmd) else {
        return;
    };
    let (name, step) = app
        .selected_run()
        .map_or((String::new(), 0), |r| (r.name.clone(), r.step));
    let result = match controls.get_mut(app.selected).and_then(Option::as_mut) {
        Some(c) => c.send(remote).map_err(|e| format!("{e:#}")),
        None => Err("this run is read-only (not running, or on another machine)".into()),
    };
    if let Err(e) = result {
        app.note(Level::Warn, format!("{name} at step {step}: {e}"));
    }
}
