//! What each pane shows, as the user chose it: one struct per pane, each changed only through
//! its own small methods.

use std::collections::{BTreeMap, VecDeque};

use crate::event::Level;

/// The loss and rewards charts (and the accuracy and gap charts under the rewards).
pub struct ChartsPane {
    /// TensorBoard-style smoothing weight of train curves, in [0, 1).
    pub smoothing: f64,
    /// Loss on a log10 axis.
    pub log_scale: bool,
    /// y-ranges from the 5th to the 95th percentile instead of the extremes.
    pub ignore_outliers: bool,
    /// Frozen y-ranges by chart name while the y-range is locked (None: unlocked). A chart
    /// takes its range the first time it is drawn locked.
    pub y_lock: Option<BTreeMap<&'static str, (f64, f64)>>,
    /// Every run overlaid, or only the selected one.
    pub overlay_all: bool,
    /// Braille markers (finer curves) rather than dots.
    pub braille: bool,
}

impl Default for ChartsPane {
    fn default() -> Self {
        Self {
            smoothing: 0.6,
            log_scale: false,
            ignore_outliers: false,
            y_lock: None,
            overlay_all: true,
            braille: true,
        }
    }
}

/// The smoothing keys move by a tenth, between none and almost flat.
const SMOOTHING_STEP: f64 = 0.1;
const SMOOTHING_MAX: f64 = 0.99;

impl ChartsPane {
    pub fn smooth_more(&mut self) {
        self.smoothing = round2((self.smoothing + SMOOTHING_STEP).min(SMOOTHING_MAX));
    }

    pub fn smooth_less(&mut self) {
        self.smoothing = round2((self.smoothing - SMOOTHING_STEP).max(0.0));
    }

    pub fn toggle_log_scale(&mut self) {
        self.log_scale = !self.log_scale;
        // A range locked on the other scale means nothing on this one.
        if let Some(ranges) = &mut self.y_lock {
            ranges.clear();
        }
    }

    pub fn toggle_y_lock(&mut self) {
        self.y_lock = match self.y_lock {
            Some(_) => None,
            None => Some(BTreeMap::new()),
        };
    }

    /// The y-range chart `key` shows: `computed`, or the one frozen for it while locked.
    pub fn y_range(&mut self, key: &'static str, computed: (f64, f64)) -> (f64, f64) {
        match &mut self.y_lock {
            Some(ranges) => *ranges.entry(key).or_insert(computed),
            None => computed,
        }
    }
}

/// Two decimals, so repeated steps of 0.1 show as 0.70, not 0.7000000000000001.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
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
    /// The sampled per-token KL(policy || reference) by response position.
    Kl,
}

/// The gap heatmap.
pub struct HeatmapPane {
    pub mode: HeatmapMode,
    /// What the over-training view colours.
    pub metric: HeatMetric,
    /// The cell cursor of the over-training view (starts on the latest eval).
    pub over_training: CellCursor,
    /// The cell cursor of the per-pair view (starts on the first pair's first token).
    pub per_pair: CellCursor,
}

impl Default for HeatmapPane {
    fn default() -> Self {
        Self {
            mode: HeatmapMode::OverTraining,
            metric: HeatMetric::Margin,
            over_training: CellCursor::default(),
            per_pair: CellCursor {
                col: Some(0),
                ..CellCursor::default()
            },
        }
    }
}

impl HeatmapPane {
    pub fn toggle_mode(&mut self) {
        self.mode = match self.mode {
            HeatmapMode::OverTraining => HeatmapMode::PerPair,
            HeatmapMode::PerPair => HeatmapMode::OverTraining,
        }
    }

    pub fn toggle_metric(&mut self) {
        self.metric = match self.metric {
            HeatMetric::Margin => HeatMetric::Accuracy,
            HeatMetric::Accuracy => HeatMetric::Kl,
            HeatMetric::Kl => HeatMetric::Margin,
        }
    }

    /// The cursor of the view on screen.
    pub fn cursor(&self) -> &CellCursor {
        match self.mode {
            HeatmapMode::OverTraining => &self.over_training,
            HeatmapMode::PerPair => &self.per_pair,
        }
    }

    pub fn cursor_mut(&mut self) -> &mut CellCursor {
        match self.mode {
            HeatmapMode::OverTraining => &mut self.over_training,
            HeatmapMode::PerPair => &mut self.per_pair,
        }
    }
}

/// A cell cursor on a grid of `rows` x `cols` cells, which may change under it as data
/// arrives: positions are kept inside the grid when read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellCursor {
    pub row: usize,
    /// None: the last column, followed as columns are added (the latest eval).
    pub col: Option<usize>,
    /// First row and first column on screen where the grid is larger than its pane (kept
    /// around the cursor when drawn).
    pub top: usize,
    pub left: usize,
}

impl CellCursor {
    /// (row, column) of the cursor on a `rows` x `cols` grid.
    pub fn at(&self, rows: usize, cols: usize) -> (usize, usize) {
        let last_col = cols.saturating_sub(1);
        (
            self.row.min(rows.saturating_sub(1)),
            self.col.map_or(last_col, |c| c.min(last_col)),
        )
    }

    /// Moves by (`drow`, `dcol`) cells, stopping at the grid's edges; reaching the last
    /// column follows it from then on.
    pub fn step(&mut self, drow: isize, dcol: isize, rows: usize, cols: usize) {
        let (row, col) = self.at(rows, cols);
        let moved =
            |at: usize, by: isize, n: usize| at.saturating_add_signed(by).min(n.saturating_sub(1));
        self.row = moved(row, drow, rows);
        let col = moved(col, dcol, cols);
        self.col = (col + 1 < cols).then_some(col);
    }

    /// The first of `n` lines (rows or columns) to show in a window of `len` so that the
    /// cursor at `at` is inside it, moving `first` as little as possible.
    pub fn scrolled(first: usize, at: usize, n: usize, len: usize) -> usize {
        let len = len.max(1);
        first
            .min(at)
            .max((at + 1).saturating_sub(len))
            .min(n.saturating_sub(len))
    }
}

/// What the token view shows: an eval pair's two responses, or a sample's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Pair,
    Sample,
}

/// The token view (drawn in the heatmap pane while open).
pub struct TokensPane {
    pub open: bool,
    pub source: TokenSource,
    /// Eval pair (index into the eval's recorded token-view pairs).
    pub pair: usize,
    /// Eval step shown; None follows the latest.
    pub step: Option<usize>,
    /// 0: chosen, 1: rejected.
    pub response: usize,
    /// Token under the cursor (kept below the response's length when drawn).
    pub cursor: usize,
    /// The layout to restore on closing.
    pub was_expanded: bool,
    pub was_focus: super::Pane,
}

impl Default for TokensPane {
    fn default() -> Self {
        Self {
            open: false,
            source: TokenSource::Pair,
            pair: 0,
            step: None,
            response: 0,
            cursor: 0,
            was_expanded: false,
            was_focus: super::Pane::Loss,
        }
    }
}

impl TokensPane {
    /// One token left or right among `len`, stopping at either end.
    pub fn move_cursor(&mut self, len: usize, forward: bool) {
        let last = len.saturating_sub(1);
        self.cursor = if forward {
            (self.cursor + 1).min(last)
        } else {
            self.cursor.min(last).saturating_sub(1)
        };
    }

    /// Chosen <-> rejected, at the same position (clamped when drawn).
    pub fn other_response(&mut self) {
        if self.source == TokenSource::Pair {
            self.response = 1 - self.response.min(1);
        }
    }

    /// The next (or previous) of `count` pairs, wrapping around, from its first token.
    pub fn move_pair(&mut self, count: usize, forward: bool) {
        self.pair = wrap(self.pair.min(count.max(1) - 1), count.max(1), forward);
        self.cursor = 0;
    }
}

/// The next (or previous) of `steps` (ascending) from `cur` (None: the latest), stopping at
/// either end; reaching the latest follows new steps again.
pub fn moved_step(cur: Option<usize>, steps: &[usize], forward: bool) -> Option<usize> {
    let &last = steps.last()?;
    let cur = cur.unwrap_or(last);
    let i = steps
        .iter()
        .position(|&s| s >= cur)
        .unwrap_or(steps.len() - 1);
    let j = if forward {
        (i + 1).min(steps.len() - 1)
    } else {
        i.saturating_sub(1)
    };
    (steps[j] != last).then_some(steps[j])
}

/// What the samples view compares the selected run's policy with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    Reference,
    /// The policy of another run (by index).
    Run(usize),
}

/// The samples side by side.
pub struct SamplesPane {
    /// Prompt index (kept below the number of prompts when drawn).
    pub prompt: usize,
    /// Sampling step shown; None follows the latest.
    pub step: Option<usize>,
    pub compare: Compare,
    /// First line of the samples shown.
    pub scroll: u16,
}

impl Default for SamplesPane {
    fn default() -> Self {
        Self {
            prompt: 0,
            step: None,
            compare: Compare::Reference,
            scroll: 0,
        }
    }
}

impl SamplesPane {
    /// The next (or previous) of `count` prompts, wrapping around, from its first line.
    pub fn move_prompt(&mut self, count: usize, forward: bool) {
        self.prompt = wrap(self.prompt, count.max(1), forward);
        self.scroll = 0;
    }

    /// The next (or previous) of the sampling steps `steps` (ascending), stopping at either
    /// end; reaching the latest follows new steps again.
    pub fn move_step(&mut self, steps: &[usize], forward: bool) {
        if !steps.is_empty() {
            self.step = moved_step(self.step, steps, forward);
        }
    }

    /// Compares with the next of the `runs` runs other than `selected`, then the reference
    /// again.
    pub fn next_compare(&mut self, selected: usize, runs: usize) {
        let mut others = (0..runs).filter(|&i| i != selected);
        self.compare = match self.compare {
            Compare::Reference => others.next(),
            Compare::Run(i) => others.find(|&j| j > i),
        }
        .map_or(Compare::Reference, Compare::Run);
    }
}

/// `i` moved one place among `n` (n > 0), wrapping around.
pub fn wrap(i: usize, n: usize, forward: bool) -> usize {
    if forward {
        (i + 1) % n
    } else {
        (i + n - 1) % n
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub run: String,
    pub step: usize,
    pub level: Level,
    pub text: String,
}

/// The log pane: the latest lines of every run and of the dashboard itself.
#[derive(Default)]
pub struct LogPane {
    pub lines: VecDeque<LogLine>,
    /// Lines scrolled back from the newest.
    pub scroll: u16,
}

/// Lines the log pane keeps.
const LOG_LINES: usize = 500;

impl LogPane {
    pub fn push(&mut self, line: LogLine) {
        self.lines.push_back(line);
        while self.lines.len() > LOG_LINES {
            self.lines.pop_front();
        }
    }
}

/// What the status bar shows besides the selected run.
#[derive(Default)]
pub struct StatusBar {
    /// Resident memory of the training process in bytes, when it is this process.
    pub memory: Option<u64>,
    /// Last config or theme reload: (ok, message).
    pub reload: Option<(bool, String)>,
}

/// One line more or less, without leaving 0..=u16::MAX.
pub fn scrolled(at: u16, down: bool) -> u16 {
    if down {
        at.saturating_add(1)
    } else {
        at.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_stays_in_range_in_tenths() {
        let mut c = ChartsPane::default();
        c.smooth_more();
        assert_eq!(c.smoothing, 0.7);
        for _ in 0..20 {
            c.smooth_more();
        }
        assert_eq!(c.smoothing, 0.99);
        for _ in 0..20 {
            c.smooth_less();
        }
        assert_eq!(c.smoothing, 0.0);
    }

    #[test]
    fn a_locked_range_holds_until_unlocked_or_rescaled() {
        let mut c = ChartsPane::default();
        assert_eq!(c.y_range("loss", (0.0, 1.0)), (0.0, 1.0));
        c.toggle_y_lock();
        assert_eq!(c.y_range("loss", (0.0, 1.0)), (0.0, 1.0));
        assert_eq!(c.y_range("loss", (0.0, 5.0)), (0.0, 1.0), "frozen");
        assert_eq!(c.y_range("rewards", (2.0, 3.0)), (2.0, 3.0), "per chart");
        c.toggle_log_scale();
        assert!(c.y_lock.is_some(), "still locked");
        assert_eq!(
            c.y_range("loss", (-1.0, 0.0)),
            (-1.0, 0.0),
            "new scale, new range"
        );
        c.toggle_y_lock();
        assert_eq!(c.y_range("loss", (0.0, 5.0)), (0.0, 5.0));
    }

    #[test]
    fn heatmap_views_alternate() {
        let mut h = HeatmapPane::default();
        h.toggle_metric();
        h.toggle_mode();
        assert_eq!(
            (h.mode, h.metric),
            (HeatmapMode::PerPair, HeatMetric::Accuracy)
        );
        h.toggle_metric();
        h.toggle_mode();
        assert_eq!(
            (h.mode, h.metric),
            (HeatmapMode::OverTraining, HeatMetric::Kl)
        );
        h.toggle_metric();
        assert_eq!(h.metric, HeatMetric::Margin);
    }

    #[test]
    fn the_cell_cursor_stops_at_the_edges_and_follows_the_last_column() {
        let mut c = CellCursor::default();
        assert_eq!(c.at(4, 3), (0, 2), "starts on the latest column");
        c.step(0, -1, 4, 3);
        assert_eq!((c.at(4, 3), c.col), ((0, 1), Some(1)));
        c.step(0, -5, 4, 3);
        c.step(-1, 0, 4, 3);
        assert_eq!(c.at(4, 3), (0, 0));
        c.step(9, 9, 4, 3);
        assert_eq!(
            (c.at(4, 3), c.col),
            ((3, 2), None),
            "follows the last column"
        );
        assert_eq!(c.at(4, 5), (3, 4), "a new column arrived");
        assert_eq!(c.at(2, 5), (1, 4), "kept inside a smaller grid");
        assert_eq!(c.at(0, 0), (0, 0));
        let mut empty = CellCursor::default();
        empty.step(1, 1, 0, 0);
        assert_eq!(empty.at(0, 0), (0, 0));
    }

    #[test]
    fn a_window_scrolls_just_enough_to_show_the_cursor() {
        // 100 columns, 30 on screen.
        assert_eq!(CellCursor::scrolled(0, 10, 100, 30), 0);
        assert_eq!(CellCursor::scrolled(0, 30, 100, 30), 1, "one past the edge");
        assert_eq!(CellCursor::scrolled(40, 45, 100, 30), 40, "inside: unmoved");
        assert_eq!(CellCursor::scrolled(40, 20, 100, 30), 20, "back left");
        assert_eq!(
            CellCursor::scrolled(90, 99, 100, 30),
            70,
            "never past the end"
        );
        assert_eq!(CellCursor::scrolled(5, 3, 10, 30), 0, "everything fits");
    }

    #[test]
    fn prompts_wrap_and_start_at_the_top() {
        let mut s = SamplesPane {
            scroll: 7,
            ..SamplesPane::default()
        };
        s.move_prompt(3, false);
        assert_eq!((s.prompt, s.scroll), (2, 0));
        s.move_prompt(3, true);
        assert_eq!(s.prompt, 0);
        // No samples yet: stays on the first prompt.
        s.move_prompt(0, true);
        assert_eq!(s.prompt, 0);
    }

    #[test]
    fn sampling_steps_stop_at_the_ends_and_the_latest_follows() {
        let mut s = SamplesPane::default();
        let steps = [2, 4, 6];
        s.move_step(&steps, true);
        assert_eq!(s.step, None, "already the latest");
        s.move_step(&steps, false);
        assert_eq!(s.step, Some(4));
        s.move_step(&steps, false);
        s.move_step(&steps, false);
        assert_eq!(s.step, Some(2));
        s.move_step(&steps, true);
        s.move_step(&steps, true);
        assert_eq!(s.step, None, "back to following");
        s.move_step(&[], false);
        assert_eq!(s.step, None);
    }

    #[test]
    fn comparison_cycles_through_the_other_runs_then_the_reference() {
        let mut s = SamplesPane::default();
        let mut seen = vec![];
        for _ in 0..4 {
            s.next_compare(1, 3);
            seen.push(s.compare);
        }
        assert_eq!(
            seen,
            [
                Compare::Run(0),
                Compare::Run(2),
                Compare::Reference,
                Compare::Run(0)
            ]
        );
        let mut alone = SamplesPane::default();
        alone.next_compare(0, 1);
        assert_eq!(alone.compare, Compare::Reference);
    }

    #[test]
    fn the_log_keeps_the_latest_lines() {
        let mut log = LogPane::default();
        for step in 0..LOG_LINES + 3 {
            log.push(LogLine {
                run: "dpo".into(),
                step,
                level: Level::Info,
                text: String::new(),
            });
        }
        assert_eq!(log.lines.len(), LOG_LINES);
        assert_eq!(log.lines.front().map(|l| l.step), Some(3));
    }

    #[test]
    fn scrolling_saturates() {
        assert_eq!(scrolled(0, false), 0);
        assert_eq!(scrolled(u16::MAX, true), u16::MAX);
        assert_eq!(scrolled(4, true), 5);
    }
}
