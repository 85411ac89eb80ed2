//! The gap heatmap: where in the response the chosen/rejected margin is made.
//!
//! Over training: columns are evaluations, rows prefix lengths j = 1, 2, 4, ... (log2), colour
//! the mean prefix margin or prefix accuracy (or, for KL, rows are response positions). Per
//! pair: rows are fixed eval pairs, columns response positions, colour the per-token reward
//! difference. Each value gets whole terminal cells, drawn as the theme's heat cells (colours,
//! and at 16 colours shade characters too), so a cell cursor can sit on it; under the grid
//! come its axis, a legend with ticks and a readout of the value under the cursor.
//!
//! Over training, a grid larger than its pane is averaged into it (the whole run at a
//! glance); per pair it scrolls around the cursor instead (every position readable).

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};
use ratatui::Frame;

use crate::ui::math;
use crate::ui::state::{App, CellCursor, HeatMetric, HeatmapMode};
use crate::ui::theme::{HeatCell, Ramp, Theme};

/// The pane title, the longest of its forms that fits `width` columns.
pub fn title(app: &App, width: usize) -> String {
    let run = app
        .selected_run()
        .map_or(String::new(), |r| format!(" · {}", r.name));
    let forms: [&str; 4] = match app.heatmap.mode {
        HeatmapMode::OverTraining => match app.heatmap.metric {
            HeatMetric::Margin => [
                "Gap: prefix margin by j over training",
                "Gap: prefix margin by j",
                "prefix margin by j",
                "margin",
            ],
            HeatMetric::Accuracy => [
                "Gap: prefix accuracy by j over training",
                "Gap: prefix accuracy by j",
                "prefix accuracy by j",
                "accuracy",
            ],
            HeatMetric::Kl => [
                "KL(policy||ref) by response position over training",
                "KL(policy||ref) by position",
                "KL by position",
                "KL",
            ],
        },
        HeatmapMode::PerPair => [
            "Gap: per-token reward difference per pair",
            "Gap: reward difference per token",
            "reward diff per token",
            "per pair",
        ],
    };
    fit_title(&forms, &run, width)
}

/// The first of `forms` (longest first) that fits `width` with `suffix` (the shortest form
/// never takes it), then without it; the shortest cut to `width` when none fits.
pub fn fit_title(forms: &[&str], suffix: &str, width: usize) -> String {
    let fits = |s: &String| s.chars().count() <= width;
    // The run's name stays while any but the shortest form fits with it.
    let keep = forms.len().saturating_sub(1).max(1);
    for with_suffix in [true, false] {
        for form in forms
            .iter()
            .take(if with_suffix { keep } else { forms.len() })
        {
            let t = if with_suffix {
                format!("{form}{suffix}")
            } else {
                form.to_string()
            };
            if fits(&t) {
                return t;
            }
        }
    }
    forms
        .last()
        .map_or(String::new(), |f| f.chars().take(width).collect())
}

/// A grid of values (rows x columns, NaN = no data) and how to colour and describe them.
pub struct Grid {
    pub rows: Vec<Vec<f64>>,
    pub row_labels: Vec<String>,
    /// What each column is: an eval step (over training) or a response position (from 1).
    pub cols: Vec<usize>,
    pub ramp: Ramp,
    /// Diverging values are drawn as v / scale (symmetric around zero); sequential ones as
    /// they are (0..1).
    pub scale: f64,
    /// The value's name in the readout.
    pub what: &'static str,
    /// Pairs counted in each cell (over training: the pairs whose k reaches j), when known.
    pub pairs: Vec<Vec<Option<usize>>>,
    /// The eval a per-pair grid comes from.
    pub step: Option<usize>,
}

impl Grid {
    fn ncols(&self) -> usize {
        self.rows.first().map_or(0, |r| r.len())
    }

    /// A value as the ramp takes it.
    fn unit(&self, v: f64) -> f64 {
        match self.ramp {
            Ramp::Diverging => v / self.scale,
            Ramp::Sequential => v,
        }
    }

    /// (lowest, highest) value of the ramp.
    fn range(&self) -> (f64, f64) {
        match self.ramp {
            Ramp::Diverging => (-self.scale, self.scale),
            Ramp::Sequential => (0.0, 1.0),
        }
    }
}

/// Prefix margin (or accuracy) per (j, eval step) of the selected run, or its KL profile.
pub fn over_training(app: &App) -> Option<Grid> {
    let r = app.selected_run()?;
    if r.diagnostics.is_empty() {
        return None;
    }
    if app.heatmap.metric == HeatMetric::Kl {
        return kl_over_training(&r.diagnostics);
    }
    let steps: Vec<usize> = r.diagnostics.keys().copied().collect();
    let mut js: Vec<usize> = r
        .diagnostics
        .values()
        .flat_map(|d| d.prefix.j.iter().copied())
        .collect();
    js.sort();
    js.dedup();
    let acc = app.heatmap.metric == HeatMetric::Accuracy;
    let at = |s: &usize, j: usize| {
        let d = &r.diagnostics[s];
        d.prefix.j.iter().position(|&x| x == j).map(|i| (d, i))
    };
    let rows: Vec<Vec<f64>> = js
        .iter()
        .map(|&j| {
            steps
                .iter()
                .map(|s| {
                    at(s, j).map_or(f64::NAN, |(d, i)| {
                        let v = if acc {
                            d.prefix.accuracy.get(i)
                        } else {
                            d.prefix.margin.get(i)
                        };
                        v.copied().unwrap_or(f64::NAN)
                    })
                })
                .collect()
        })
        .collect();
    let pairs = js
        .iter()
        .map(|&j| {
            steps
                .iter()
                .map(|s| at(s, j).and_then(|(d, i)| d.prefix.pairs.get(i).copied()))
                .collect()
        })
        .collect();
    let (ramp, scale) = if acc {
        (Ramp::Sequential, 1.0)
    } else {
        (Ramp::Diverging, max_abs(&rows))
    };
    Some(Grid {
        scale,
        row_labels: js.iter().map(|j| format!("j{j}")).collect(),
        rows,
        cols: steps,
        ramp,
        what: if acc { "accuracy" } else { "margin" },
        pairs,
        step: None,
    })
}

/// The per-position KL profile of each eval (rows: response positions t1, t2, ...; columns:
/// evals), coloured on the largest |KL| seen; None before any eval measured it.
pub fn kl_over_training(
    diagnostics: &std::collections::BTreeMap<usize, crate::event::EvalReport>,
) -> Option<Grid> {
    let width = diagnostics.values().map(|d| d.kl_profile.len()).max()?;
    if width == 0 {
        return None;
    }
    let rows: Vec<Vec<f64>> = (0..width)
        .map(|t| {
            diagnostics
                .values()
                .map(|d| d.kl_profile.get(t).copied().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    Some(Grid {
        scale: max_abs(&rows),
        rows,
        row_labels: (1..=width).map(|t| format!("t{t}")).collect(),
        cols: diagnostics.keys().copied().collect(),
        // The sampled estimate can dip below zero at a position: signed.
        ramp: Ramp::Diverging,
        what: "KL",
        pairs: vec![],
        step: None,
    })
}

/// Per-token reward differences of the latest evaluation's fixed pairs.
pub fn per_pair(app: &App) -> Option<Grid> {
    let r = app.selected_run()?;
    let (step, d) = r.diagnostics.iter().next_back()?;
    if d.token_diffs.is_empty() {
        return None;
    }
    let width = d.token_diffs.iter().map(|t| t.values.len()).max()?;
    if width == 0 {
        return None;
    }
    let rows: Vec<Vec<f64>> = d
        .token_diffs
        .iter()
        .map(|t| {
            let mut r = t.values.clone();
            r.resize(width, f64::NAN);
            r
        })
        .collect();
    Some(Grid {
        scale: max_abs(&rows),
        row_labels: d
            .token_diffs
            .iter()
            .map(|t| format!("#{}", t.pair + 1))
            .collect(),
        rows,
        cols: (1..=width).collect(),
        ramp: Ramp::Diverging,
        what: "Δreward",
        pairs: vec![],
        step: Some(*step),
    })
}

fn max_abs(rows: &[Vec<f64>]) -> f64 {
    let m = rows
        .iter()
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |a, v| a.max(v.abs()));
    if m > 0.0 {
        m
    } else {
        1.0
    }
}

/// Mean of the finite values in rows `r0..r1`, columns `c0..c1` (NaN when there are none).
fn cell_value(rows: &[Vec<f64>], (r0, r1): (usize, usize), (c0, c1): (usize, usize)) -> f64 {
    let mut sum = 0.0;
    let mut n = 0usize;
    for row in rows.get(r0..r1.min(rows.len())).unwrap_or(&[]) {
        for &v in row.get(c0..c1.min(row.len())).unwrap_or(&[]) {
            if v.is_finite() {
                sum += v;
                n += 1;
            }
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// How the `n` data lines (rows or columns) of one axis map onto `len` screen cells: each
/// line gets `per` cells when they fit; when they do not, either a window of them scrolls
/// (starting at `first`) or several share a cell (`compressed`, averaged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisFit {
    n: usize,
    len: usize,
    first: usize,
    per: usize,
    compressed: bool,
}

impl AxisFit {
    /// `scroll`: a window around `at` starting near `first`, else compressed.
    pub fn new(n: usize, len: usize, scroll: bool, first: usize, at: usize) -> Self {
        let len = len.max(1);
        if n <= len {
            AxisFit {
                n,
                len,
                first: 0,
                per: (len / n.max(1)).max(1),
                compressed: false,
            }
        } else if scroll {
            AxisFit {
                n,
                len,
                first: CellCursor::scrolled(first, at, n, len),
                per: 1,
                compressed: false,
            }
        } else {
            AxisFit {
                n,
                len,
                first: 0,
                per: 1,
                compressed: true,
            }
        }
    }

    /// The data lines [a, b) drawn at screen cell `x`; None where no line is.
    pub fn data(&self, x: usize) -> Option<(usize, usize)> {
        if x >= self.len || self.n == 0 {
            return None;
        }
        if self.compressed {
            let a = x * self.n / self.len;
            let b = ((x + 1) * self.n / self.len).max(a + 1);
            return Some((a, b.min(self.n)));
        }
        let i = self.first + x / self.per;
        (i < self.n && x / self.per < self.shown()).then_some((i, i + 1))
    }

    /// The screen cells [a, b) where data line `i` is drawn; None when it is off screen.
    pub fn screen(&self, i: usize) -> Option<(usize, usize)> {
        if self.compressed {
            let x = (0..self.len).find(|&x| self.data(x).is_some_and(|(a, b)| a <= i && i < b))?;
            return Some((x, x + 1));
        }
        let k = i.checked_sub(self.first)?;
        (k < self.shown()).then_some((k * self.per, (k + 1) * self.per))
    }

    /// Data lines on screen, whole or averaged.
    fn shown(&self) -> usize {
        if self.compressed {
            self.n
        } else {
            (self.n - self.first.min(self.n)).min(self.len / self.per)
        }
    }

    /// Screen cells in use, from the first.
    pub fn used(&self) -> usize {
        if self.compressed {
            self.len
        } else {
            self.shown() * self.per
        }
    }

    /// The first and last data lines on screen.
    pub fn visible(&self) -> (usize, usize) {
        let first = if self.compressed { 0 } else { self.first };
        (first, (first + self.shown()).saturating_sub(1))
    }
}

/// The cells of a grid with its cursor.
struct Cells<'a> {
    grid: &'a Grid,
    theme: &'a Theme,
    rows: AxisFit,
    cols: AxisFit,
    cursor: (usize, usize),
}

impl Widget for Cells<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        for y in 0..area.height as usize {
            let Some(rows) = self.rows.data(y) else {
                continue;
            };
            for x in 0..area.width as usize {
                let Some(cols) = self.cols.data(x) else {
                    continue;
                };
                let v = cell_value(&self.grid.rows, rows, cols);
                let (symbol, style) = self.theme.heat_cell(self.grid.ramp, self.grid.unit(v));
                if let Some(cell) = buf.cell_mut((area.x + x as u16, area.y + y as u16)) {
                    cell.set_char(symbol);
                    cell.set_style(style);
                }
            }
        }
        // The cursor: a marked cell (the middle column of a wide one, so its colour shows
        // on either side), at every depth.
        let (Some((y0, y1)), Some((x0, x1))) = (
            self.rows.screen(self.cursor.0),
            self.cols.screen(self.cursor.1),
        ) else {
            return;
        };
        let (x0, x1) = if x1 - x0 >= 3 {
            let mid = (x0 + x1) / 2;
            (mid, mid + 1)
        } else {
            (x0, x1)
        };
        let style = self.theme.selection.add_modifier(Modifier::BOLD);
        for y in y0..y1.min(area.height as usize) {
            for x in x0..x1.min(area.width as usize) {
                if let Some(cell) = buf.cell_mut((area.x + x as u16, area.y + y as u16)) {
                    cell.set_char(CURSOR);
                    cell.set_style(style);
                }
            }
        }
    }
}

/// The cell cursor's mark.
pub const CURSOR: char = '◆';

pub fn draw(f: &mut Frame, app: &mut App, area: Rect) {
    let grid = match app.heatmap.mode {
        HeatmapMode::OverTraining => over_training(app),
        HeatmapMode::PerPair => per_pair(app),
    };
    let Some(grid) = grid else {
        f.render_widget(
            Paragraph::new(match app.heatmap.metric {
                HeatMetric::Kl if app.heatmap.mode == HeatmapMode::OverTraining => {
                    "no KL profile yet (measured at each eval from sampled generations, \
                     with eval.health and a reference model)"
                }
                _ => "no evaluation yet (prefix diagnostics come with each eval)",
            })
            .style(app.theme.dim)
            .wrap(ratatui::widgets::Wrap { trim: true }),
            area,
        );
        return;
    };
    if area.height == 0 || area.width < 8 {
        return;
    }
    // Under the cells, as height allows: the readout first, then the legend, then the axis.
    let h = area.height;
    let readout_h = u16::from(h >= 2);
    let legend_h = u16::from(h >= 3);
    let axis_h = u16::from(h >= 4);
    let body_h = h - readout_h - legend_h - axis_h;
    let label_w = grid
        .row_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .min(6) as u16
        + 1;
    let body = Rect::new(area.x, area.y, area.width, body_h);
    let labels = Rect::new(body.x, body.y, label_w.min(body.width), body.height);
    let cells = Rect::new(
        body.x + labels.width,
        body.y,
        body.width - labels.width,
        body.height,
    );

    // Over training, the whole run is averaged into the pane; per pair, a window scrolls.
    let scroll = app.heatmap.mode == HeatmapMode::PerPair;
    let (nrows, ncols) = (grid.rows.len(), grid.ncols());
    let cursor = *app.heatmap.cursor();
    let at = cursor.at(nrows, ncols);
    // Rows stretch to two lines at most: taller bands only spread a few rows apart.
    let rows_len = (cells.height as usize).min(2 * nrows.max(1));
    let rows = AxisFit::new(nrows, rows_len, scroll, cursor.top, at.0);
    let cols = AxisFit::new(ncols, cells.width as usize, scroll, cursor.left, at.1);
    let c = app.heatmap.cursor_mut();
    (c.top, c.left) = (rows.visible().0, cols.visible().0);
    // The lines under the grid follow its last row (blank space goes below them).
    let grid_h = (rows.used() as u16).clamp(1, body_h);
    let line = |i: u16| Rect::new(area.x, area.y + grid_h + i, area.width, 1);

    let th = &app.theme;
    // Row labels on the first screen row of each data row (of each averaged band).
    let mut shown = vec![String::new(); body.height as usize];
    for (i, l) in grid.row_labels.iter().enumerate() {
        if let Some((y, _)) = rows.screen(i) {
            if shown[y].is_empty() {
                shown[y] = l.chars().take(label_w as usize - 1).collect();
            }
        }
    }
    let label_lines: Vec<Line> = shown.into_iter().map(|l| Line::styled(l, th.dim)).collect();
    f.render_widget(Paragraph::new(label_lines), labels);
    f.render_widget(
        Cells {
            grid: &grid,
            theme: th,
            rows,
            cols,
            cursor: at,
        },
        cells,
    );
    if axis_h > 0 {
        let text = axis_text(&grid, &cols, cells.width as usize);
        f.render_widget(
            Paragraph::new(Line::styled(
                format!("{}{text}", " ".repeat(label_w as usize)),
                th.dim,
            )),
            line(0),
        );
    }
    if legend_h > 0 {
        f.render_widget(
            Paragraph::new(legend(th, &grid, area.width as usize)),
            line(axis_h),
        );
    }
    if readout_h > 0 {
        f.render_widget(
            Paragraph::new(Line::styled(
                readout(&grid, at, area.width as usize),
                th.text,
            )),
            line(axis_h + legend_h),
        );
    }
}

/// The column axis: the first and last column on screen, at the ends of `width` cells; per
/// pair also how many positions there are when not all are on screen.
fn axis_text(grid: &Grid, cols: &AxisFit, width: usize) -> String {
    let (a, b) = cols.visible();
    let col = |i: usize| grid.cols.get(i).copied().unwrap_or(0);
    let (left, right) = match grid.step {
        None => (format!("step {}", col(a)), format!("{}", col(b))),
        Some(_) if b + 1 - a < grid.cols.len() => (
            format!("t{}", col(a)),
            format!("t{} of {}", col(b), grid.cols.len()),
        ),
        Some(_) => (format!("t{}", col(a)), format!("t{}", col(b))),
    };
    let pad = width.saturating_sub(left.chars().count() + right.chars().count());
    if pad == 0 {
        return format!("{left}-{right}");
    }
    format!("{left}{}{right}", " ".repeat(pad))
}

/// A value with 3 significant digits, trailing zeros dropped (`0.5`, `1`, `1.56`).
fn tick(v: f64) -> String {
    let s = math::sig3(v);
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The legend: the ramp's levels in order with values at a few ticks (its ends and middle,
/// and the quarters where `width` allows): `-1.56 ▓▒░ 0 ░▒▓ 1.56`, `0 ░▒▓ 0.5 ▓██ 1`.
pub fn legend(th: &Theme, grid: &Grid, width: usize) -> Line<'static> {
    let levels = th.heat_cells(grid.ramp);
    let n = levels.len();
    let (lo, hi) = grid.range();
    let labels = |ticks: usize| -> Vec<String> {
        (0..ticks)
            .map(|k| tick(lo + (hi - lo) * k as f64 / (ticks - 1) as f64))
            .collect()
    };
    // Widest layout that fits: five ticks or three, two cells per level or one.
    let mut choice = None;
    for (ticks, per) in [(5, 2), (5, 1), (3, 2), (3, 1)] {
        let text: usize = labels(ticks).iter().map(|l| l.chars().count() + 2).sum();
        if ticks <= n && text + n * per <= width + 2 {
            choice = Some((ticks, per));
            break;
        }
    }
    let (ticks, per) = choice.unwrap_or((3, 1));
    let labels = labels(ticks);
    // Too narrow for every level: an evenly spaced odd number of them (zero stays in the
    // middle of a diverging ramp), never fewer than five.
    let text: usize = labels.iter().map(|l| l.chars().count() + 2).sum();
    let room = (width + 2).saturating_sub(text);
    let levels: Vec<HeatCell> = if choice.is_none() && room < n {
        let m = (room.max(5) - 1) / 2 * 2 + 1;
        (0..m).map(|i| levels[i * (n - 1) / (m - 1)]).collect()
    } else {
        levels.to_vec()
    };
    let n = levels.len();
    let mut spans = Vec::new();
    let level_at = |k: usize| (k * (n - 1)) / (ticks - 1);
    for (k, label) in labels.iter().enumerate() {
        if k > 0 {
            spans.push(Span::styled(" ", th.dim));
        }
        spans.push(Span::styled(label.clone(), th.dim));
        if k + 1 < ticks {
            spans.push(Span::styled(" ", th.dim));
            for &(symbol, style) in &levels[level_at(k)..level_at(k + 1)] {
                spans.push(Span::styled(symbol.to_string().repeat(per), style));
            }
            if k + 2 == ticks {
                let (symbol, style) = levels[n - 1];
                spans.push(Span::styled(symbol.to_string().repeat(per), style));
            }
        }
    }
    Line::from(spans)
}

/// The value under the cursor: where it is and what it is, in `width` columns
/// (`step 4 · j8 · margin +1.23 · 12 pairs`; per pair `pair #2 · t5 · Δreward -0.31 · step 6`).
pub fn readout(grid: &Grid, (row, col): (usize, usize), width: usize) -> String {
    let v = grid.rows.get(row).and_then(|r| r.get(col)).copied();
    let value = match v {
        Some(v) if v.is_finite() => {
            let s = math::sig3(v);
            if grid.ramp == Ramp::Diverging && v > 0.0 {
                format!("+{s}")
            } else {
                s
            }
        }
        _ => "no data".into(),
    };
    let row_label = grid.row_labels.get(row).cloned().unwrap_or_default();
    let c = grid.cols.get(col).copied().unwrap_or(0);
    let mut parts = match grid.step {
        None => vec![
            format!("step {c}"),
            row_label,
            format!("{} {value}", grid.what),
        ],
        Some(step) => vec![
            format!("pair {row_label}"),
            format!("t{c}"),
            format!("{} {value}", grid.what),
            format!("step {step}"),
        ],
    };
    if let Some(Some(n)) = grid.pairs.get(row).and_then(|r| r.get(col)) {
        parts.push(format!("{n} pairs"));
    }
    // Narrow panes: tighter separators, then the last parts go.
    while !parts.is_empty() {
        for sep in [" · ", " "] {
            let s = parts.join(sep);
            if s.chars().count() <= width {
                return s;
            }
        }
        parts.pop();
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averaging_cells_skips_missing_values() {
        let rows = vec![vec![1.0, f64::NAN, 3.0], vec![5.0, 7.0, f64::NAN]];
        assert_eq!(cell_value(&rows, (0, 1), (0, 3)), 2.0);
        assert_eq!(cell_value(&rows, (0, 2), (0, 2)), 13.0 / 3.0);
        assert!(cell_value(&rows, (0, 1), (1, 2)).is_nan());
        assert!(cell_value(&rows, (5, 6), (0, 1)).is_nan(), "past the end");
    }

    #[test]
    fn axes_stretch_scroll_or_compress() {
        // 4 lines on 10 cells: 2 cells each, the rest blank.
        let a = AxisFit::new(4, 10, true, 0, 0);
        assert_eq!(
            (a.data(0), a.data(1), a.data(7)),
            (Some((0, 1)), Some((0, 1)), Some((3, 4)))
        );
        assert_eq!(
            (a.data(8), a.screen(3), a.visible()),
            (None, Some((6, 8)), (0, 3))
        );
        // 100 lines on 30 cells, cursor at 45: a window that shows it.
        let s = AxisFit::new(100, 30, true, 0, 45);
        assert_eq!(s.visible(), (16, 45));
        assert_eq!(
            (s.screen(45), s.screen(10), s.data(0)),
            (Some((29, 30)), None, Some((16, 17)))
        );
        // The same averaged: every line somewhere, several per cell.
        let c = AxisFit::new(100, 30, false, 0, 45);
        assert_eq!(c.visible(), (0, 99));
        assert_eq!(c.data(0), Some((0, 3)));
        let (x, _) = c.screen(45).unwrap();
        let (a, b) = c.data(x).unwrap();
        assert!(a <= 45 && 45 < b);
        assert_eq!(AxisFit::new(0, 5, true, 0, 0).data(0), None);
    }

    #[test]
    fn titles_shorten_to_fit() {
        let forms = ["a long title", "short", "s"];
        assert_eq!(fit_title(&forms, " · dpo", 40), "a long title · dpo");
        assert_eq!(fit_title(&forms, " · dpo", 12), "short · dpo");
        assert_eq!(
            fit_title(&forms, " · dpo", 7),
            "short",
            "the name goes first"
        );
        assert_eq!(fit_title(&forms, " · dpo", 3), "s");
        assert_eq!(fit_title(&forms, " · dpo", 0), "");
    }

    #[test]
    fn readouts_shed_parts_to_fit() {
        let grid = Grid {
            rows: vec![vec![0.5, f64::NAN]],
            row_labels: vec!["j8".into()],
            cols: vec![2, 4],
            ramp: Ramp::Diverging,
            scale: 1.0,
            what: "margin",
            pairs: vec![vec![Some(12), None]],
            step: None,
        };
        assert_eq!(
            readout(&grid, (0, 0), 80),
            "step 2 · j8 · margin +0.500 · 12 pairs"
        );
        assert_eq!(
            readout(&grid, (0, 0), 32),
            "step 2 j8 margin +0.500 12 pairs"
        );
        assert_eq!(readout(&grid, (0, 0), 31), "step 2 · j8 · margin +0.500");
        assert_eq!(readout(&grid, (0, 0), 26), "step 2 j8 margin +0.500");
        assert_eq!(readout(&grid, (0, 0), 3), "");
        assert_eq!(readout(&grid, (0, 1), 80), "step 4 · j8 · margin no data");
    }

    #[test]
    fn legends_fit_their_width_with_ticks_at_the_ends_and_middle() {
        use crate::ui::theme::{find, ColorDepth};
        let th = find("default", &[]).unwrap().0.resolve(ColorDepth::C16);
        let mut grid = Grid {
            rows: vec![vec![1.0]],
            row_labels: vec![],
            cols: vec![0],
            ramp: Ramp::Diverging,
            scale: 1.56,
            what: "margin",
            pairs: vec![],
            step: None,
        };
        let text =
            |line: &Line| -> String { line.spans.iter().map(|s| s.content.as_ref()).collect() };
        for width in [20, 26, 34, 60, 120] {
            let line = legend(&th, &grid, width);
            let t = text(&line);
            assert!(line.width() <= width, "{width}: {t}");
            assert!(
                t.starts_with("-1.56 ") && t.ends_with(" 1.56") && t.contains(" 0 "),
                "{t}"
            );
        }
        assert!(
            text(&legend(&th, &grid, 120)).contains(" -0.78 "),
            "quarters where wide"
        );
        grid.ramp = Ramp::Sequential;
        let t = text(&legend(&th, &grid, 34));
        assert!(
            t.starts_with("0 ") && t.contains(" 0.5 ") && t.ends_with(" 1"),
            "{t}"
        );
    }

    fn report(step: usize, kl_profile: Vec<f64>) -> crate::event::EvalReport {
        crate::event::EvalReport {
            step,
            time: 0.0,
            metrics: Default::default(),
            prefix: Default::default(),
            token_diffs: vec![],
            entropy: vec![],
            cross_entropy: vec![],
            kl_profile,
            token_view: vec![],
        }
    }

    #[test]
    fn the_kl_grid_has_a_row_per_position_and_a_column_per_eval() {
        let d: std::collections::BTreeMap<_, _> = [
            (0, report(0, vec![0.0, 0.0])),
            (5, report(5, vec![0.5, -0.25, 1.0])),
        ]
        .into_iter()
        .collect();
        let g = kl_over_training(&d).unwrap();
        assert_eq!(g.row_labels, vec!["t1", "t2", "t3"]);
        assert_eq!(g.rows[0], vec![0.0, 0.5]);
        assert!(g.rows[2][0].is_nan() && g.rows[2][1] == 1.0);
        assert_eq!((g.ramp, g.scale), (Ramp::Diverging, 1.0));
        assert_eq!(g.cols, vec![0, 5]);
        let none: std::collections::BTreeMap<_, _> = [(0, report(0, vec![]))].into_iter().collect();
        assert!(kl_over_training(&none).is_none());
    }
}
