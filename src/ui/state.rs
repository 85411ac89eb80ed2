//! The dashboard's state: what the runs reported and what the user chose to look at. Pure:
//! events and key actions go in, commands for the engine come out; drawing reads it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use crate::engine::Command;
use crate::event::{Change, EvalReport, Event, Level, Observer, RunState, Sample, StepMetrics};
use crate::ui::keymap::Action;
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
            train: BTreeMap::new(),
            eval: BTreeMap::new(),
            diagnostics: BTreeMap::new(),
            samples: BTreeMap::new(),
            applied: Vec::new(),
            first_seen: None,
            last_seen: None,
            tokens_per_s: f64::NAN,
            owned: false,
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
        if !r.prefix.j.is_empty() || !r.token_diffs.is_empty() {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeatmapMode {
    /// x = eval step, y = prefix length j.
    OverTraining,
    /// rows = eval pairs, columns = response positions.
    PerPair,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeatMetric {
    Margin,
    Accuracy,
}

/// What the samples view compares the selected run's policy with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    Reference,
    /// The policy of another run (by index).
    Run(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub run: String,
    pub step: usize,
    pub level: Level,
    pub text: String,
}

/// Where events come from: whether the dashboard owns the training (quitting stops it) and
/// whether it can send commands at all (an attached finished run is read-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Owner,
    Attached { controllable: bool },
}

pub struct App {
    pub runs: Vec<RunView>,
    /// Which run each event source currently feeds.
    sources: BTreeMap<usize, usize>,
    pub selected: usize,
    pub focus: Pane,
    pub expanded: bool,
    pub overlay_all: bool,
    pub smoothing: f64,
    pub log_scale: bool,
    pub outliers: bool,
    /// Frozen y-ranges by chart name, while locked.
    pub y_locked: bool,
    pub locked_ranges: BTreeMap<&'static str, (f64, f64)>,
    pub heatmap_mode: HeatmapMode,
    pub heat_metric: HeatMetric,
    pub prompt: usize,
    /// None follows the latest sampling step.
    pub sample_step: Option<usize>,
    pub compare: Compare,
    pub sample_scroll: u16,
    pub log: VecDeque<LogLine>,
    pub log_scroll: u16,
    pub help: bool,
    /// First line of the help overlay shown (when it is taller than the terminal).
    pub help_scroll: u16,
    pub confirm_quit: bool,
    pub quitting: bool,
    pub quit: bool,
    pub mode: Mode,
    pub paused: bool,
    pub theme: Theme,
    pub theme_names: Vec<String>,
    pub braille: bool,
    /// Resident memory of the training process in bytes, when it is this process.
    pub memory: Option<u64>,
    /// Last config or theme reload: (ok, message).
    pub reload: Option<(bool, String)>,
    /// `ui.*` settings changed by config edits, for the main loop to take (theme, colour
    /// depth, smoothing, refresh rate, markers).
    pub ui_changes: Vec<Change>,
    /// The engine this dashboard owns has ended (every variant done, stopped or failed).
    pub engine_done: bool,
    /// Something changed since the last frame.
    pub dirty: bool,
}

const LOG_LINES: usize = 500;

impl App {
    pub fn new(mode: Mode, theme: Theme) -> Self {
        Self {
            runs: Vec::new(),
            sources: BTreeMap::new(),
            selected: 0,
            focus: Pane::Loss,
            expanded: false,
            overlay_all: true,
            smoothing: 0.6,
            log_scale: false,
            outliers: false,
            y_locked: false,
            locked_ranges: BTreeMap::new(),
            heatmap_mode: HeatmapMode::OverTraining,
            heat_metric: HeatMetric::Margin,
            prompt: 0,
            sample_step: None,
            compare: Compare::Reference,
            sample_scroll: 0,
            log: VecDeque::new(),
            log_scroll: 0,
            help: false,
            help_scroll: 0,
            confirm_quit: false,
            quitting: false,
            quit: false,
            mode,
            paused: false,
            theme,
            theme_names: Vec::new(),
            braille: true,
            memory: None,
            reload: None,
            ui_changes: Vec::new(),
            engine_done: false,
            dirty: true,
        }
    }

    pub fn selected_run(&self) -> Option<&RunView> {
        self.runs.get(self.selected)
    }

    /// Runs drawn on the charts.
    pub fn visible_runs(&self) -> Vec<usize> {
        if self.overlay_all {
            (0..self.runs.len()).collect()
        } else if self.runs.is_empty() {
            vec![]
        } else {
            vec![self.selected]
        }
    }

    /// Whether training this dashboard can steer is still going on.
    pub fn training(&self) -> bool {
        match self.mode {
            Mode::Owner => !self.engine_done,
            Mode::Attached { controllable } => {
                controllable && self.runs.iter().any(|r| !r.state.is_over())
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
        self.log.push_back(LogLine {
            run,
            step,
            level,
            text,
        });
        while self.log.len() > LOG_LINES {
            self.log.pop_front();
        }
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
            ..
        } = ev
        {
            let existing = self.runs.iter().position(|r| &r.run_dir == run_dir);
            let idx = existing.unwrap_or_else(|| {
                self.runs.push(RunView::new(variant, run_dir.clone()));
                self.runs.len() - 1
            });
            let r = &mut self.runs[idx];
            r.owned = self.mode == Mode::Owner && source == 0;
            r.total_steps = *total_steps;
            r.step = r.step.max(*start_step);
            if !device.is_empty() {
                r.device = device.clone();
            }
            if *params > 0 {
                r.params = *params;
            }
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
                self.reload = ev.describe().map(|text| (true, text));
            }
            Event::ConfigRejected { error, .. } => {
                // The status bar is narrow: the file name says enough there, the log has all.
                self.reload = Some((false, format!("config rejected: {}", short_path(error))));
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

    /// Applies a key action; returns a command for the engine when the action asks for one.
    pub fn on_action(&mut self, a: Action) -> Option<Command> {
        self.dirty = true;
        if self.confirm_quit {
            // Any key other than the confirmation closes the question.
            self.confirm_quit = false;
            return None;
        }
        if self.help {
            match a {
                // The help may be taller than the terminal: scrolling keys scroll it.
                Action::ScrollDown => self.help_scroll = self.help_scroll.saturating_add(1),
                Action::ScrollUp => self.help_scroll = self.help_scroll.saturating_sub(1),
                Action::Help | Action::Quit => {}
                _ => self.help = false,
            }
            if !matches!(a, Action::Help | Action::Quit) {
                return None;
            }
        }
        let controllable = matches!(
            self.mode,
            Mode::Owner | Mode::Attached { controllable: true }
        );
        match a {
            Action::FocusNext | Action::FocusPrev => {
                let i = PANES.iter().position(|&p| p == self.focus).unwrap_or(0);
                let n = PANES.len();
                let j = if a == Action::FocusNext {
                    (i + 1) % n
                } else {
                    (i + n - 1) % n
                };
                self.focus = PANES[j];
            }
            Action::Expand => self.expanded = !self.expanded,
            Action::ScrollDown | Action::ScrollUp => {
                let field = if self.focus == Pane::Log {
                    &mut self.log_scroll
                } else {
                    &mut self.sample_scroll
                };
                *field = if a == Action::ScrollDown {
                    field.saturating_add(1)
                } else {
                    field.saturating_sub(1)
                };
            }
            Action::PauseResume if controllable => {
                return Some(if self.paused {
                    Command::Resume
                } else {
                    Command::Pause
                });
            }
            Action::Step if controllable && self.paused => return Some(Command::Step),
            Action::SampleNow if controllable => return Some(Command::SampleNow),
            Action::Checkpoint if controllable => return Some(Command::Checkpoint),
            Action::PauseResume | Action::Step | Action::SampleNow | Action::Checkpoint => {}
            Action::SmoothMore => {
                self.smoothing = ((self.smoothing + 0.1).min(0.99) * 100.0).round() / 100.0
            }
            Action::SmoothLess => {
                self.smoothing = ((self.smoothing - 0.1).max(0.0) * 100.0).round() / 100.0
            }
            Action::LogScale => {
                self.log_scale = !self.log_scale;
                self.locked_ranges.clear();
            }
            Action::Outliers => self.outliers = !self.outliers,
            Action::LockY => {
                self.y_locked = !self.y_locked;
                if !self.y_locked {
                    self.locked_ranges.clear();
                }
            }
            Action::Overlay => self.overlay_all = !self.overlay_all,
            Action::NextRun => {
                if !self.runs.is_empty() {
                    self.selected = (self.selected + 1) % self.runs.len();
                    self.paused = self.runs[self.selected].state == RunState::Paused;
                }
            }
            Action::HeatmapMode => {
                self.heatmap_mode = match self.heatmap_mode {
                    HeatmapMode::OverTraining => HeatmapMode::PerPair,
                    HeatmapMode::PerPair => HeatmapMode::OverTraining,
                }
            }
            Action::HeatmapMetric => {
                self.heat_metric = match self.heat_metric {
                    HeatMetric::Margin => HeatMetric::Accuracy,
                    HeatMetric::Accuracy => HeatMetric::Margin,
                }
            }
            Action::NextPrompt | Action::PrevPrompt => {
                let n = self.prompt_count().max(1);
                self.prompt = if a == Action::NextPrompt {
                    (self.prompt + 1) % n
                } else {
                    (self.prompt + n - 1) % n
                };
                self.sample_scroll = 0;
            }
            Action::NextSampleStep | Action::PrevSampleStep => {
                let steps = self
                    .selected_run()
                    .map(|r| r.sample_steps())
                    .unwrap_or_default();
                if let Some(&last) = steps.last() {
                    let cur = self.sample_step.unwrap_or(last);
                    let i = steps
                        .iter()
                        .position(|&s| s >= cur)
                        .unwrap_or(steps.len() - 1);
                    let j = if a == Action::NextSampleStep {
                        (i + 1).min(steps.len() - 1)
                    } else {
                        i.saturating_sub(1)
                    };
                    self.sample_step = if steps[j] == last {
                        None
                    } else {
                        Some(steps[j])
                    };
                }
            }
            Action::SwapCompare => {
                let others: Vec<usize> = (0..self.runs.len())
                    .filter(|&i| i != self.selected)
                    .collect();
                self.compare = match self.compare {
                    Compare::Reference => others
                        .first()
                        .map_or(Compare::Reference, |&i| Compare::Run(i)),
                    Compare::Run(i) => others
                        .iter()
                        .find(|&&j| j > i)
                        .map_or(Compare::Reference, |&j| Compare::Run(j)),
                };
            }
            Action::ThemeCycle => {} // handled by the app loop (it owns theme files)
            Action::Help => {
                self.help = !self.help;
                self.help_scroll = 0;
            }
            Action::Quit => {
                if self.mode == Mode::Owner && self.training() {
                    self.confirm_quit = true;
                } else {
                    self.quit = true;
                }
            }
        }
        None
    }

    /// The answer to the quit question: stop the run (with a checkpoint), then leave.
    pub fn confirm(&mut self, yes: bool) -> Option<Command> {
        self.dirty = true;
        self.confirm_quit = false;
        if yes {
            self.quitting = true;
            Some(Command::Stop)
        } else {
            None
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
        App::new(Mode::Owner, theme)
    }

    fn started(dir: &str, variant: &str) -> Event {
        Event::Started {
            variant: variant.into(),
            run_dir: dir.into(),
            start_step: 0,
            total_steps: 10,
            device: "Cpu".into(),
            params: 100,
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
        assert!(a.confirm_quit && !a.quit);
        assert_eq!(a.confirm(true), Some(Command::Stop));
        assert!(a.quitting);
        // Attached viewers just leave.
        let mut b = App::new(Mode::Attached { controllable: true }, a.theme.clone());
        b.on_event(0, &started("/r/dpo", "dpo"));
        b.on_event(
            0,
            &Event::State {
                step: 0,
                state: RunState::Running,
            },
        );
        b.on_action(Action::Quit);
        assert!(b.quit);
    }

    #[test]
    fn pause_toggles_and_read_only_viewers_send_nothing() {
        let mut a = app();
        a.on_event(0, &started("/r/dpo", "dpo"));
        assert_eq!(a.on_action(Action::PauseResume), Some(Command::Pause));
        a.on_event(
            0,
            &Event::State {
                step: 3,
                state: RunState::Paused,
            },
        );
        assert_eq!(a.on_action(Action::Step), Some(Command::Step));
        assert_eq!(a.on_action(Action::PauseResume), Some(Command::Resume));
        let mut ro = App::new(
            Mode::Attached {
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
        assert_eq!(a.smoothing, 0.99);
        for _ in 0..20 {
            a.on_action(Action::SmoothLess);
        }
        assert_eq!(a.smoothing, 0.0);
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
        let (ok, text) = a.reload.clone().unwrap();
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
        let (ok, text) = a.reload.clone().unwrap();
        assert!(!ok);
        assert_eq!(
            text,
            "config rejected: gaplab.toml:3:8: train.beta: expected a number > 0"
        );
        assert!(a
            .log
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
