//! The dashboard's state: what the runs reported and what the user chose to look at. Pure:
//! events and keys go in, commands for the engine come out; drawing reads it.

mod mode;
mod panes;

use std::collections::BTreeMap;
use std::path::PathBuf;

use ratatui::crossterm::event::KeyEvent;

pub use self::mode::{Exit, Mode};
pub use self::panes::{
    CellCursor, ChartsPane, Compare, HeatMetric, HeatmapMode, HeatmapPane, LogLine, LogPane,
    SamplesPane, StatusBar, TokenSource, TokensPane,
};
use crate::engine::Command;
use crate::event::{
    Change, EvalReport, Event, Level, Observer, PairTokens, RunState, Sample, StepMetrics,
};
use crate::ui::keymap::{self, Action, Scope};
use crate::ui::theme::Theme;

/// A metric over steps; a record repeated for a step (a resumed run) replaces the old one.
pub type Series = BTreeMap<usize, f64>;

/// Everything known about one run.
pub struct RunView {
    pub name: String,
    pub run_dir: PathBuf,
    pub variant: String,
    pub total_steps: usize,
    pub step: usize,
    pub state: RunState,
    pub device: String,
    pub params: usize,
    /// The adapters of a LoRA run.
    pub lora: Option<crate::event::LoraInfo>,
    pub train: BTreeMap<String, Series>,
    pub eval: BTreeMap<String, Series>,
    pub diagnostics: BTreeMap<usize, EvalReport>,
    /// Samples by step; the reference's live at the step they were made (0).
    pub samples: BTreeMap<usize, Vec<Sample>>,
    /// Steps where live settings changed (marked on the charts).
    pub applied: Vec<usize>,
    /// (time, step) of the first and latest step records, for the ETA.
    pub first_seen: Option<(f64, usize)>,
    pub last_seen: Option<(f64, usize)>,
    pub tokens_per_s: f64,
    /// Trained by this process (not an overlaid or attached run directory).
    pub owned: bool,
    /// The latest alert: its step and sentence (shown in the status bar).
    pub alert: Option<(usize, String)>,
}

impl RunView {
    fn new(variant: &str, run_dir: PathBuf) -> Self {
        Self {
            name: variant.to_string(),
            run_dir,
            variant: variant.to_string(),
            total_steps: 0,
            step: 0,
            state: RunState::Starting,
            device: String::new(),
            params: 0,
            lora: None,
            train: BTreeMap::new(),
            eval: BTreeMap::new(),
            diagnostics: BTreeMap::new(),
            samples: BTreeMap::new(),
            applied: Vec::new(),
            first_seen: None,
            last_seen: None,
            tokens_per_s: f64::NAN,
            owned: false,
            alert: None,
        }
    }

    pub fn series(&self, eval: bool, name: &str) -> Vec<(f64, f64)> {
        let m = if eval { &self.eval } else { &self.train };
        m.get(name)
            .map(|s| s.iter().map(|(&k, &v)| (k as f64, v)).collect())
            .unwrap_or_default()
    }

    /// Seconds left at the recent pace (NaN when unknown).
    pub fn eta(&self) -> f64 {
        match (self.first_seen, self.last_seen) {
            (Some((t0, s0)), Some((t1, s1))) if s1 > s0 && t1 > t0 => {
                (t1 - t0) / (s1 - s0) as f64 * self.total_steps.saturating_sub(self.step) as f64
            }
            _ => f64::NAN,
        }
    }

    fn on_step(&mut self, m: &StepMetrics) {
        for (k, v) in &m.metrics {
            self.train.entry(k.clone()).or_default().insert(m.step, *v);
        }
        self.step = self.step.max(m.step);
        if let Some(&t) = m.metrics.get("tokens_per_s") {
            self.tokens_per_s = t;
        }
        if self.first_seen.is_none() {
            self.first_seen = Some((m.time, m.step));
        }
        self.last_seen = Some((m.time, m.step));
    }

    fn on_eval(&mut self, r: &EvalReport) {
        for (k, v) in &r.metrics {
            self.eval.entry(k.clone()).or_default().insert(r.step, *v);
        }
        if !r.prefix.j.is_empty()
            || !r.token_diffs.is_empty()
            || !r.kl_profile.is_empty()
            || !r.token_view.is_empty()
        {
            self.diagnostics.insert(r.step, r.clone());
        }
    }

    /// Steps at which the policy was sampled.
    pub fn sample_steps(&self) -> Vec<usize> {
        self.samples
            .iter()
            .filter(|(_, v)| v.iter().any(|s| s.source == "policy"))
            .map(|(&k, _)| k)
            .collect()
    }

    /// Eval steps that recorded pairs token by token.
    pub fn token_view_steps(&self) -> Vec<usize> {
        self.diagnostics
            .iter()
            .filter(|(_, d)| !d.token_view.is_empty())
            .map(|(&k, _)| k)
            .collect()
    }

    /// The token-view pairs of eval `step` (the latest at or before it), or of the latest eval
    /// that recorded them when None.
    pub fn token_view_at(&self, step: Option<usize>) -> Option<(usize, &[PairTokens])> {
        self.diagnostics
            .range(..=step.unwrap_or(usize::MAX))
            .rev()
            .find(|(_, d)| !d.token_view.is_empty())
            .map(|(&k, d)| (k, d.token_view.as_slice()))
    }

    /// The sample of `source` for `prompt_id` at `step` (or the latest step at or before it).
    pub fn sample_at(&self, source: &str, prompt_id: usize, step: usize) -> Option<&Sample> {
        self.samples
            .range(..=step)
            .rev()
            .flat_map(|(_, v)| v.iter())
            .find(|s| s.source == source && s.prompt_id == prompt_id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    Loss,
    Rewards,
    Heatmap,
    Samples,
    Log,
}

pub const PANES: [Pane; 5] = [
    Pane::Loss,
    Pane::Rewards,
    Pane::Heatmap,
    Pane::Samples,
    Pane::Log,
];

impl Pane {
    pub fn title(self) -> &'static str {
        match self {
            Pane::Loss => "Loss",
            Pane::Rewards => "Rewards",
            Pane::Heatmap => "Gap heatmap",
            Pane::Samples => "Samples",
            Pane::Log => "Log",
        }
    }
}

/// Where events come from: whether the dashboard owns the training (quitting stops it) and
/// whether it can send commands at all (an attached finished run is read-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Owner,
    Attached { controllable: bool },
}

impl Role {
    /// Whether keys may pause, step, sample or checkpoint.
    pub fn can_steer(self) -> bool {
        matches!(self, Role::Owner | Role::Attached { controllable: true })
    }
}

/// What a key asks of the loop around this state.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A command for the engine (this process's, or the selected run's over its socket).
    Send(Command),
    /// The next theme: the loop owns the theme files.
    NextTheme,
}

pub struct App {
    // What the runs reported, and which run the heatmap, samples and status bar show.
    pub runs: Vec<RunView>,
    /// Which run each event source currently feeds.
    sources: BTreeMap<usize, usize>,
    pub selected: usize,
    /// The selected run is paused (space resumes it).
    pub paused: bool,
    pub role: Role,
    /// The engine this dashboard owns has ended (every variant done, stopped or failed).
    pub engine_done: bool,

    // What the user chose to look at.
    pub focus: Pane,
    /// The focused pane fills the screen.
    pub expanded: bool,
    pub charts: ChartsPane,
    pub heatmap: HeatmapPane,
    pub tokens: TokensPane,
    pub samples: SamplesPane,
    pub log: LogPane,
    pub status: StatusBar,
    pub theme: Theme,
    pub mode: Mode,
    pub exit: Exit,

    /// `ui.*` settings changed by config edits, for the main loop to take (theme, colour
    /// depth, smoothing, refresh rate, markers).
    pub ui_changes: Vec<Change>,
    /// Something changed since the last frame.
    pub dirty: bool,
}

impl App {
    pub fn new(role: Role, theme: Theme) -> Self {
        Self {
            runs: Vec::new(),
            sources: BTreeMap::new(),
            selected: 0,
            paused: false,
            role,
            engine_done: false,
            focus: Pane::Loss,
            expanded: false,
            charts: ChartsPane::default(),
            heatmap: HeatmapPane::default(),
            tokens: TokensPane::default(),
            samples: SamplesPane::default(),
            log: LogPane::default(),
            status: StatusBar::default(),
            theme,
            mode: Mode::Dashboard,
            exit: Exit::Stay,
            ui_changes: Vec::new(),
            dirty: true,
        }
    }

    pub fn selected_run(&self) -> Option<&RunView> {
        self.runs.get(self.selected)
    }

    /// Runs drawn on the charts.
    pub fn visible_runs(&self) -> Vec<usize> {
        if self.charts.overlay_all {
            (0..self.runs.len()).collect()
        } else if self.runs.is_empty() {
            vec![]
        } else {
            vec![self.selected]
        }
    }

    /// Whether training this dashboard can steer is still going on.
    pub fn training(&self) -> bool {
        match self.role {
            Role::Owner => !self.engine_done,
            Role::Attached { controllable } => {
                controllable && self.runs.iter().any(|r| !r.state.is_over())
            }
        }
    }

    /// Opens the token view (of the sample shown when the samples pane has focus, else of the
    /// pair under the heatmap cursor) in the heatmap pane, expanded; closing restores the layout.
    fn toggle_token_view(&mut self) {
        if self.tokens.open {
            self.tokens.open = false;
            self.expanded = self.tokens.was_expanded;
            self.focus = self.tokens.was_focus;
            return;
        }
        let source = if self.focus == Pane::Samples {
            TokenSource::Sample
        } else {
            TokenSource::Pair
        };
        let (pair, cursor, step) = match source {
            TokenSource::Pair => self.heatmap_target(),
            TokenSource::Sample => (0, 0, None),
        };
        self.tokens = TokensPane {
            open: true,
            source,
            pair,
            step,
            response: 0,
            cursor,
            was_expanded: self.expanded,
            was_focus: self.focus,
        };
        self.focus = Pane::Heatmap;
        self.expanded = true;
    }

    /// Where the heatmap's cursor points the token view: per pair, its pair (row) and token
    /// (column) at the latest eval; over training, the eval of its column (None: the latest).
    fn heatmap_target(&self) -> (usize, usize, Option<usize>) {
        let (rows, cols) = self.heatmap_extent();
        let (row, col) = self.heatmap.cursor().at(rows, cols);
        match self.heatmap.mode {
            HeatmapMode::PerPair => (row, col, None),
            HeatmapMode::OverTraining => {
                let steps: Vec<usize> = self
                    .selected_run()
                    .map(|r| r.diagnostics.keys().copied().collect())
                    .unwrap_or_default();
                let step = steps.get(col).copied().filter(|s| steps.last() != Some(s));
                (0, 0, step)
            }
        }
    }

    /// Tokens in the response the token view shows.
    fn token_track_len(&self) -> usize {
        let Some(run) = self.selected_run() else {
            return 0;
        };
        match self.tokens.source {
            TokenSource::Pair => run
                .token_view_at(self.tokens.step)
                .and_then(|(_, pairs)| pairs.get(self.tokens.pair))
                .map_or(0, |p| {
                    if self.tokens.response == 0 {
                        p.chosen.ids.len()
                    } else {
                        p.rejected.ids.len()
                    }
                }),
            TokenSource::Sample => {
                let step = self.samples.step.unwrap_or(usize::MAX);
                run.sample_at("policy", self.samples.prompt, step)
                    .map_or(0, |s| s.token_ids.len())
            }
        }
    }

    /// A message of the dashboard itself in the log pane.
    pub fn note(&mut self, level: Level, text: String) {
        self.dirty = true;
        let step = self.selected_run().map_or(0, |r| r.step);
        self.log_line("gaplab".into(), step, level, text);
    }

    fn log_line(&mut self, run: String, step: usize, level: Level, text: String) {
        self.log.push(LogLine {
            run,
            step,
            level,
            text,
        });
    }
}

impl Observer for App {
    /// Takes one event from source `source` (the live engine, or one followed run directory).
    fn on_event(&mut self, source: usize, ev: &Event) {
        self.dirty = true;
        if let Event::Started {
            variant,
            run_dir,
            start_step,
            total_steps,
            device,
            params,
            lora,
            ..
        } = ev
        {
            let existing = self.runs.iter().position(|r| &r.run_dir == run_dir);
            let idx = existing.unwrap_or_else(|| {
                self.runs.push(RunView::new(variant, run_dir.clone()));
                self.runs.len() - 1
            });
            let r = &mut self.runs[idx];
            r.owned = self.role == Role::Owner && source == 0;
            r.total_steps = *total_steps;
            r.step = r.step.max(*start_step);
            if !device.is_empty() {
                r.device = device.clone();
            }
            if *params > 0 {
                r.params = *params;
            }
            r.lora = *lora;
            // A live source moving on to its next variant: follow it.
            if self
                .sources
                .get(&source)
                .is_some_and(|&old| old == self.selected)
                || self.runs.len() == 1
            {
                self.selected = idx;
            }
            self.sources.insert(source, idx);
            self.disambiguate();
            return;
        }
        let Some(&idx) = self.sources.get(&source) else {
            return;
        };
        let name = self.runs[idx].name.clone();
        let r = &mut self.runs[idx];
        match ev {
            Event::Started { .. } => unreachable!(),
            Event::State { step, state } => {
                r.step = r.step.max(*step);
                r.state = state.clone();
                if idx == self.selected && !matches!(state, RunState::Failed(_)) {
                    self.paused = r.state == RunState::Paused;
                }
            }
            Event::Step(m) => r.on_step(m),
            Event::Eval(rep) => r.on_eval(rep),
            Event::Samples { step, samples } => {
                for s in samples {
                    let at = if s.source == "reference" { 0 } else { *step };
                    let v = r.samples.entry(at).or_default();
                    v.retain(|x| !(x.source == s.source && x.prompt_id == s.prompt_id));
                    v.push(s.clone());
                }
            }
            Event::Applied { step, changes, .. } => {
                if !changes.is_empty() {
                    r.applied.push(*step);
                }
                if let Some(c) = changes.iter().find(|c| c.field == "train.steps") {
                    if let Ok(n) = c.new.parse::<usize>() {
                        r.total_steps = n.max(r.step);
                    }
                }
                // Dashboard settings follow the live run's config (not a finished run's
                // history).
                if !r.state.is_over() {
                    self.ui_changes.extend(
                        changes
                            .iter()
                            .filter(|c| c.field.starts_with("ui."))
                            .cloned(),
                    );
                }
                self.status.reload = ev.describe().map(|text| (true, text));
            }
            Event::ConfigRejected { error, .. } => {
                // The status bar is narrow: the file name says enough there, the log has all.
                self.status.reload =
                    Some((false, format!("config rejected: {}", short_path(error))));
            }
            Event::Alert { step, .. } => {
                r.alert = ev.describe().map(|text| (*step, text));
            }
            Event::Skipped { .. } | Event::Checkpoint { .. } | Event::Log { .. } => {}
        }
        if let Some(text) = ev.describe() {
            self.log_line(name, ev.step(), ev.level(), text);
        }
    }
}

impl App {
    /// One line per run this process trained: where it stands and where it is on disk.
    pub fn summary(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|r| r.owned)
            .map(|r| {
                format!(
                    "{}: {} at step {}/{} -> {}",
                    r.name,
                    state_name(&r.state),
                    r.step,
                    r.total_steps,
                    r.run_dir.display()
                )
            })
            .collect()
    }

    /// Gives runs of the same variant distinct names (their run folder's timestamp).
    fn disambiguate(&mut self) {
        let counts: BTreeMap<String, usize> = self.runs.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.variant.clone()).or_default() += 1;
            m
        });
        for r in &mut self.runs {
            r.name = if counts[&r.variant] > 1 {
                r.run_dir
                    .file_name()
                    .map_or(r.variant.clone(), |f| f.to_string_lossy().into_owned())
            } else {
                r.variant.clone()
            };
        }
    }

    /// A failure outside any run (e.g. the engine thread ended unexpectedly).
    pub fn on_failure(&mut self, message: String) {
        self.dirty = true;
        for r in &mut self.runs {
            if !r.state.is_over() {
                r.state = RunState::Failed(message.clone());
            }
        }
        self.log_line("gaplab".into(), 0, Level::Error, message);
    }

    /// Which keymap bindings apply: a dialog's, the token view's while it is open, the
    /// heatmap cursor's while its pane has focus, else the dashboard's.
    pub fn scope(&self) -> Scope {
        match self.mode {
            Mode::Dashboard if self.tokens.open => Scope::Tokens,
            Mode::Dashboard if self.focus == Pane::Heatmap => Scope::Heatmap,
            m => m.scope(),
        }
    }

    /// A key press, as the keymap reads it for what is on screen.
    pub fn on_key(&mut self, key: &KeyEvent) -> Option<Effect> {
        match keymap::action_for(self.scope(), key) {
            Some(a) => self.on_action(a),
            None => {
                self.on_unbound_key();
                None
            }
        }
    }

    /// A key the keymap does not bind where it was pressed: it closes a dialog (answering no
    /// to the quit question).
    pub fn on_unbound_key(&mut self) {
        if self.mode != Mode::Dashboard {
            self.mode = Mode::Dashboard;
            self.dirty = true;
        }
    }

    /// Applies a key action; returns what it asks of the loop, if anything.
    pub fn on_action(&mut self, a: Action) -> Option<Effect> {
        self.dirty = true;
        match self.mode {
            Mode::QuitQuestion => return self.answer_quit(a == Action::ConfirmQuit),
            Mode::Help { scroll } => match a {
                // The help may be taller than the terminal: scrolling keys scroll it.
                Action::ScrollDown | Action::ScrollUp => {
                    let down = a == Action::ScrollDown;
                    self.mode = Mode::Help {
                        scroll: panes::scrolled(scroll, down),
                    };
                    return None;
                }
                // The help key closes the help; quitting works from it.
                Action::Help | Action::Quit => {}
                _ => {
                    self.mode = Mode::Dashboard;
                    return None;
                }
            },
            Mode::Dashboard => {}
        }
        let steer = self.role.can_steer();
        match a {
            Action::FocusNext | Action::FocusPrev => {
                let i = PANES.iter().position(|&p| p == self.focus).unwrap_or(0);
                self.focus = PANES[panes::wrap(i, PANES.len(), a == Action::FocusNext)];
            }
            Action::Expand => self.expanded = !self.expanded,
            Action::ScrollDown | Action::ScrollUp => {
                let at = if self.focus == Pane::Log {
                    &mut self.log.scroll
                } else {
                    &mut self.samples.scroll
                };
                *at = panes::scrolled(*at, a == Action::ScrollDown);
            }
            Action::PauseResume if steer => {
                return Some(Effect::Send(if self.paused {
                    Command::Resume
                } else {
                    Command::Pause
                }));
            }
            Action::Step if steer && self.paused => return Some(Effect::Send(Command::Step)),
            Action::SampleNow if steer => return Some(Effect::Send(Command::SampleNow)),
            Action::Checkpoint if steer => return Some(Effect::Send(Command::Checkpoint)),
            Action::PauseResume | Action::Step | Action::SampleNow | Action::Checkpoint => {}
            Action::SmoothMore => self.charts.smooth_more(),
            Action::SmoothLess => self.charts.smooth_less(),
            Action::LogScale => self.charts.toggle_log_scale(),
            Action::Outliers => self.charts.ignore_outliers = !self.charts.ignore_outliers,
            Action::LockY => self.charts.toggle_y_lock(),
            Action::Overlay => self.charts.overlay_all = !self.charts.overlay_all,
            Action::NextRun => {
                if !self.runs.is_empty() {
                    self.selected = (self.selected + 1) % self.runs.len();
                    self.paused = self.runs[self.selected].state == RunState::Paused;
                }
            }
            Action::HeatmapMode => self.heatmap.toggle_mode(),
            Action::HeatmapMetric => self.heatmap.toggle_metric(),
            Action::NextPrompt | Action::PrevPrompt => {
                let n = self.prompt_count();
                self.samples.move_prompt(n, a == Action::NextPrompt);
            }
            Action::NextSampleStep | Action::PrevSampleStep => {
                let steps = self
                    .selected_run()
                    .map(|r| r.sample_steps())
                    .unwrap_or_default();
                self.samples.move_step(&steps, a == Action::NextSampleStep);
            }
            Action::SwapCompare => self.samples.next_compare(self.selected, self.runs.len()),
            Action::ThemeCycle => return Some(Effect::NextTheme),
            Action::CellLeft | Action::CellRight | Action::CellUp | Action::CellDown => {
                let (rows, cols) = self.heatmap_extent();
                let (drow, dcol) = match a {
                    Action::CellLeft => (0, -1),
                    Action::CellRight => (0, 1),
                    Action::CellUp => (-1, 0),
                    _ => (1, 0),
                };
                self.heatmap.cursor_mut().step(drow, dcol, rows, cols);
            }
            Action::TokenView => self.toggle_token_view(),
            Action::TokenPrev | Action::TokenNext => {
                let len = self.token_track_len();
                self.tokens.move_cursor(len, a == Action::TokenNext);
            }
            Action::OtherResponse => self.tokens.other_response(),
            Action::NextPair | Action::PrevPair => {
                let forward = a == Action::NextPair;
                match self.tokens.source {
                    TokenSource::Pair => {
                        let n = self
                            .selected_run()
                            .and_then(|r| r.token_view_at(self.tokens.step))
                            .map_or(0, |(_, pairs)| pairs.len());
                        self.tokens.move_pair(n, forward);
                    }
                    TokenSource::Sample => {
                        let n = self.prompt_count();
                        self.samples.move_prompt(n, forward);
                        self.tokens.cursor = 0;
                    }
                }
            }
            Action::NextEvalStep | Action::PrevEvalStep => {
                let forward = a == Action::NextEvalStep;
                let run = self.selected_run()?;
                match self.tokens.source {
                    TokenSource::Pair => {
                        let steps = run.token_view_steps();
                        self.tokens.step = panes::moved_step(self.tokens.step, &steps, forward);
                    }
                    TokenSource::Sample => {
                        let steps = run.sample_steps();
                        self.samples.move_step(&steps, forward);
                    }
                }
            }
            Action::Help => {
                self.mode = match self.mode {
                    Mode::Help { .. } => Mode::Dashboard,
                    _ => Mode::Help { scroll: 0 },
                };
            }
            Action::Quit => {
                if self.role == Role::Owner && self.training() {
                    self.mode = Mode::QuitQuestion;
                } else {
                    self.exit = Exit::Now;
                }
            }
            // The token view's Close shuts it; otherwise only the dialogs bind these.
            Action::Close => {
                if self.tokens.open {
                    self.toggle_token_view();
                }
            }
            Action::ConfirmQuit => {}
        }
        None
    }

    /// The answer to the quit question: yes stops the run (with a checkpoint), then leaves.
    fn answer_quit(&mut self, yes: bool) -> Option<Effect> {
        self.mode = Mode::Dashboard;
        yes.then(|| {
            self.exit = Exit::Stopping;
            Effect::Send(Command::Stop)
        })
    }

    /// Rows and columns of the heatmap's grid as `ui::view::heatmap` builds it for the
    /// selected run: over training, a row per prefix length j (or response position, for
    /// KL) and a column per eval; per pair, a row per pair of the latest eval and a column
    /// per response position.
    pub fn heatmap_extent(&self) -> (usize, usize) {
        let Some(r) = self.selected_run() else {
            return (0, 0);
        };
        match self.heatmap.mode {
            HeatmapMode::OverTraining => {
                let rows = if self.heatmap.metric == HeatMetric::Kl {
                    let kl = r.diagnostics.values().map(|d| d.kl_profile.len());
                    kl.max().unwrap_or(0)
                } else {
                    let js: std::collections::BTreeSet<usize> = r
                        .diagnostics
                        .values()
                        .flat_map(|d| d.prefix.j.iter().copied())
                        .collect();
                    js.len()
                };
                (rows, r.diagnostics.len())
            }
            HeatmapMode::PerPair => r.diagnostics.values().next_back().map_or((0, 0), |d| {
                let cols = d.token_diffs.iter().map(|t| t.values.len()).max();
                (d.token_diffs.len(), cols.unwrap_or(0))
            }),
        }
    }

    pub fn prompt_count(&self) -> usize {
        self.selected_run()
            .map(|r| {
                r.samples
                    .values()
                    .flat_map(|v| v.iter().map(|s| s.prompt_id + 1))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }
}

pub fn state_name(s: &RunState) -> &'static str {
    match s {
        RunState::Starting => "starting",
        RunState::Running => "running",
        RunState::Paused => "paused",
        RunState::Finished => "finished",
        RunState::Stopped => "stopped",
        RunState::Failed(_) => "failed",
    }
}

/// `error` with a leading `/some/dir/file:line:col` shortened to `file:line:col`.
pub fn short_path(error: &str) -> String {
    let Some(colon) = error.find(':') else {
        return error.to_string();
    };
    let (path, rest) = error.split_at(colon);
    match path.rsplit_once(['/', '\\']) {
        Some((_, file)) if !file.is_empty() && !path.contains(' ') => format!("{file}{rest}"),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::theme::{ColorDepth, ThemeFile, BUILTIN};

    fn app() -> App {
        let theme = ThemeFile::parse(BUILTIN[0].1, "default")
            .unwrap()
            .resolve(ColorDepth::C16);
        App::new(Role::Owner, theme)
    }

    fn started(dir: &str, variant: &str) -> Event {
        Event::Started {
            variant: variant.into(),
            run_dir: dir.into(),
            start_step: 0,
            total_steps: 10,
            device: "Cpu".into(),
            params: 100,
            lora: None,
            config: Box::new(serde_json::json!({"variant": variant})),
        }
    }

    fn step(s: usize, t: f64, loss: f64) -> Event {
        Event::Step(StepMetrics {
            step: s,
            time: t,
            metrics: [("loss".to_string(), loss)].into_iter().collect(),
        })
    }

    #[test]
    fn a_live_source_moves_to_its_next_variant() {
        let mut a = app();
        a.on_event(0, &started("/r/dpo-1", "dpo"));
        a.on_event(0, &step(1, 100.0, 0.7));
        a.on_event(0, &step(2, 102.0, 0.6));
        assert_eq!(a.runs[0].eta(), 16.0);
        a.on_event(0, &started("/r/dpo-poet-1", "dpo-poet"));
        a.on_event(0, &step(1, 200.0, 0.5));
        assert_eq!(a.runs.len(), 2);
        assert_eq!(a.selected, 1);
        assert_eq!(a.runs[1].series(false, "loss"), vec![(1.0, 0.5)]);
        // A resumed run's repeated step replaces the old record.
        a.on_event(0, &step(1, 201.0, 0.4));
        assert_eq!(a.runs[1].series(false, "loss"), vec![(1.0, 0.4)]);
    }

    #[test]
    fn same_variant_runs_get_folder_names() {
        let mut a = app();
        a.on_event(0, &started("/r/dpo-20260101-000000", "dpo"));
        a.on_event(1, &started("/r/dpo-20260102-000000", "dpo"));
        assert_eq!(a.runs[0].name, "dpo-20260101-000000");
        assert_eq!(a.runs[1].name, "dpo-20260102-000000");
    }

    #[test]
    fn quitting_asks_while_training_and_stops_cleanly() {
        let mut a = app();
        a.on_event(0, &started("/r/dpo", "dpo"));
        a.on_event(
            0,
            &Event::State {
                step: 0,
                state: RunState::Running,
            },
        );
        assert_eq!(a.on_action(Action::Quit), None);
        assert_eq!((a.mode, a.exit), (Mode::QuitQuestion, Exit::Stay));
        // Any other key answers no.
        a.on_action(Action::LockY);
        assert_eq!((a.mode, a.exit), (Mode::Dashboard, Exit::Stay));
        assert!(a.charts.y_lock.is_none(), "the answer does nothing else");
        a.on_action(Action::Quit);
        assert_eq!(
            a.on_action(Action::ConfirmQuit),
            Some(Effect::Send(Command::Stop))
        );
        assert_eq!((a.mode, a.exit), (Mode::Dashboard, Exit::Stopping));
        // Attached viewers just leave.
        let mut b = App::new(Role::Attached { controllable: true }, a.theme.clone());
        b.on_event(0, &started("/r/dpo", "dpo"));
        b.on_event(
            0,
            &Event::State {
                step: 0,
                state: RunState::Running,
            },
        );
        b.on_action(Action::Quit);
        assert_eq!(b.exit, Exit::Now);
    }

    #[test]
    fn pause_toggles_and_read_only_viewers_send_nothing() {
        let mut a = app();
        a.on_event(0, &started("/r/dpo", "dpo"));
        assert_eq!(
            a.on_action(Action::PauseResume),
            Some(Effect::Send(Command::Pause))
        );
        a.on_event(
            0,
            &Event::State {
                step: 3,
                state: RunState::Paused,
            },
        );
        assert_eq!(a.on_action(Action::Step), Some(Effect::Send(Command::Step)));
        assert_eq!(
            a.on_action(Action::PauseResume),
            Some(Effect::Send(Command::Resume))
        );
        let mut ro = App::new(
            Role::Attached {
                controllable: false,
            },
            a.theme.clone(),
        );
        assert_eq!(ro.on_action(Action::PauseResume), None);
        assert_eq!(ro.on_action(Action::Checkpoint), None);
    }

    #[test]
    fn smoothing_stays_in_range() {
        let mut a = app();
        for _ in 0..20 {
            a.on_action(Action::SmoothMore);
        }
        assert_eq!(a.charts.smoothing, 0.99);
        for _ in 0..20 {
            a.on_action(Action::SmoothLess);
        }
        assert_eq!(a.charts.smoothing, 0.0);
    }

    #[test]
    fn the_help_scrolls_and_any_other_key_closes_it() {
        let mut a = app();
        a.on_action(Action::Help);
        a.on_action(Action::ScrollDown);
        a.on_action(Action::ScrollDown);
        a.on_action(Action::ScrollUp);
        assert_eq!(a.mode, Mode::Help { scroll: 1 });
        assert_eq!(a.samples.scroll, 0, "the help scrolled, not the samples");
        assert_eq!(
            a.on_action(Action::ThemeCycle),
            None,
            "closes the help only"
        );
        assert_eq!(a.mode, Mode::Dashboard);
        assert_eq!(a.on_action(Action::ThemeCycle), Some(Effect::NextTheme));
        for close in [Action::Help, Action::Close, Action::Expand] {
            a.on_action(Action::Help);
            assert_eq!(a.mode, Mode::Help { scroll: 0 }, "opens at the top");
            a.on_action(close);
            assert_eq!(a.mode, Mode::Dashboard, "{close:?}");
        }
        assert!(!a.expanded);
        a.on_action(Action::Help);
        a.on_unbound_key();
        assert_eq!(a.mode, Mode::Dashboard);
    }

    #[test]
    fn a_key_means_what_the_dialog_on_screen_binds_it_to() {
        use ratatui::crossterm::event::{KeyCode, KeyModifiers};
        let key = |code| KeyEvent::new(code, KeyModifiers::NONE);
        let mut a = app();
        a.on_event(0, &started("/r/dpo", "dpo"));
        a.on_key(&key(KeyCode::Char('y')));
        assert!(a.charts.y_lock.is_some(), "y locks the y-range");
        a.on_key(&key(KeyCode::Char('q')));
        assert_eq!(a.mode, Mode::QuitQuestion);
        assert_eq!(a.on_key(&key(KeyCode::Char('x'))), None, "unbound: no");
        a.on_key(&key(KeyCode::Char('q')));
        assert_eq!(a.on_key(&key(KeyCode::Esc)), None);
        assert_eq!((a.mode, a.exit), (Mode::Dashboard, Exit::Stay));
        a.on_key(&key(KeyCode::Char('q')));
        assert_eq!(
            a.on_key(&key(KeyCode::Char('Y'))),
            Some(Effect::Send(Command::Stop))
        );
        assert!(a.charts.y_lock.is_some(), "y answered, it did not unlock");
        assert_eq!(a.exit, Exit::Stopping);
        a.on_key(&key(KeyCode::Char('?')));
        a.on_key(&key(KeyCode::Char('j')));
        assert_eq!(a.mode, Mode::Help { scroll: 1 });
        a.on_key(&key(KeyCode::Esc));
        assert_eq!(a.mode, Mode::Dashboard);
        assert_eq!(a.exit, Exit::Stopping, "still stopping");
    }

    fn change(field: &str, old: &str, new: &str) -> Change {
        Change {
            field: field.into(),
            old: old.into(),
            new: new.into(),
        }
    }

    #[test]
    fn config_edits_reach_the_status_bar_and_the_dashboard_settings() {
        let mut a = app();
        a.on_event(0, &started("/r/dpo-1", "dpo"));
        a.on_event(
            0,
            &Event::State {
                step: 0,
                state: RunState::Running,
            },
        );
        a.on_event(
            0,
            &Event::Applied {
                step: 4,
                changes: vec![
                    change("train.steps", "10", "50"),
                    change("ui.theme", "\"default\"", "\"dark\""),
                ],
                ignored: vec!["train.batch_size".into()],
            },
        );
        assert_eq!(a.runs[0].total_steps, 50);
        assert_eq!(a.runs[0].applied, vec![4]);
        assert_eq!(
            a.ui_changes.len(),
            1,
            "only ui.* settings go to the main loop"
        );
        let (ok, text) = a.status.reload.clone().unwrap();
        assert!(
            ok && text.contains("train.steps 10 -> 50")
                && text.contains("ignored: train.batch_size")
        );

        a.on_event(
            0,
            &Event::ConfigRejected {
                step: 5,
                error: "/home/me/ws/gaplab.toml:3:8: train.beta: expected a number > 0".into(),
            },
        );
        let (ok, text) = a.status.reload.clone().unwrap();
        assert!(!ok);
        assert_eq!(
            text,
            "config rejected: gaplab.toml:3:8: train.beta: expected a number > 0"
        );
        assert!(a
            .log
            .lines
            .back()
            .unwrap()
            .text
            .contains("/home/me/ws/gaplab.toml:3:8"));

        // A finished run's history (read back by attach) does not restyle the dashboard.
        let mut b = app();
        b.on_event(0, &started("/r/dpo-1", "dpo"));
        b.on_event(
            0,
            &Event::State {
                step: 10,
                state: RunState::Finished,
            },
        );
        b.on_event(
            0,
            &Event::Applied {
                step: 4,
                changes: vec![change("ui.smoothing", "0.6", "0.9")],
                ignored: vec![],
            },
        );
        assert!(b.ui_changes.is_empty());
    }

    #[test]
    fn error_paths_shorten_to_the_file_name() {
        assert_eq!(short_path("/a/b/gaplab.toml:1:2: x"), "gaplab.toml:1:2: x");
        assert_eq!(short_path("gaplab.toml:1:2: x"), "gaplab.toml:1:2: x");
        assert_eq!(
            short_path("variant `x`: not found"),
            "variant `x`: not found"
        );
        assert_eq!(short_path("no colon here"), "no colon here");
    }
}
