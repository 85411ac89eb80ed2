//! The gap heatmap: where in the response the chosen/rejected margin is made.
//!
//! Over training: columns are evaluations, rows prefix lengths j = 1, 2, 4, ... (log2), colour
//! the mean prefix margin or prefix accuracy. Per pair: rows are fixed eval pairs, columns
//! response positions up to k, colour the per-token reward difference. Cells are half blocks,
//! two data rows per terminal row.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};
use ratatui::Frame;

use crate::ui::math;
use crate::ui::state::{App, HeatMetric, HeatmapMode};
use crate::ui::theme::{ColorDepth, Theme};

pub fn title(app: &App) -> String {
    let run = app
        .selected_run()
        .map_or(String::new(), |r| format!(" · {}", r.name));
    match app.heatmap.mode {
        HeatmapMode::OverTraining => match app.heatmap.metric {
            HeatMetric::Margin => format!("Gap: prefix margin by j over training{run}"),
            HeatMetric::Accuracy => format!("Gap: prefix accuracy by j over training{run}"),
            HeatMetric::Kl => format!("KL(policy||ref) by response position over training{run}"),
        },
        HeatmapMode::PerPair => format!("Gap: per-token reward difference per pair{run}"),
    }
}

/// A grid of values (rows x columns, NaN = no data) and how to colour them.
pub struct Grid {
    pub rows: Vec<Vec<f64>>,
    pub row_labels: Vec<String>,
    pub col_labels: (String, String),
    /// Values map to [-1, 1] as (v - center) / scale.
    pub center: f64,
    pub scale: f64,
    pub legend: (String, String, String),
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
    let rows: Vec<Vec<f64>> = js
        .iter()
        .map(|&j| {
            steps
                .iter()
                .map(|s| {
                    let d = &r.diagnostics[s];
                    d.prefix
                        .j
                        .iter()
                        .position(|&x| x == j)
                        .map_or(f64::NAN, |i| {
                            if acc {
                                d.prefix.accuracy[i]
                            } else {
                                d.prefix.margin[i]
                            }
                        })
                })
                .collect()
        })
        .collect();
    let (center, scale, legend) = if acc {
        (0.5, 0.5, ("0".into(), "0.5".into(), "1".into()))
    } else {
        let m = max_abs(&rows);
        (0.0, m, (math::compact(-m), "0".into(), math::compact(m)))
    };
    Some(Grid {
        rows,
        row_labels: js.iter().map(|j| format!("j{j}")).collect(),
        col_labels: (
            format!("step {}", steps[0]),
            format!("{}", steps[steps.len() - 1]),
        ),
        center,
        scale,
        legend,
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
    let steps: Vec<usize> = diagnostics.keys().copied().collect();
    let rows: Vec<Vec<f64>> = (0..width)
        .map(|t| {
            diagnostics
                .values()
                .map(|d| d.kl_profile.get(t).copied().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    let m = max_abs(&rows);
    Some(Grid {
        rows,
        row_labels: (1..=width).map(|t| format!("t{t}")).collect(),
        col_labels: (
            format!("step {}", steps[0]),
            format!("{}", steps[steps.len() - 1]),
        ),
        center: 0.0,
        scale: m,
        legend: (math::compact(-m), "0".into(), math::compact(m)),
    })
}

/// Per-token reward differences of the latest evaluation's fixed pairs.
pub fn per_pair(app: &App) -> Option<Grid> {
    let r = app.selected_run()?;
    let (step, d) = r.diagnostics.iter().next_back()?;
    if d.token_diffs.is_empty() {
        return None;
    }
    let rows: Vec<Vec<f64>> = d.token_diffs.iter().map(|t| t.values.clone()).collect();
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let rows = rows
        .into_iter()
        .map(|mut r| {
            r.resize(width, f64::NAN);
            r
        })
        .collect::<Vec<_>>();
    let m = max_abs(&rows);
    Some(Grid {
        row_labels: d
            .token_diffs
            .iter()
            .map(|t| format!("#{}", t.pair + 1))
            .collect(),
        rows,
        col_labels: (format!("t1 (step {step})"), format!("t{width}")),
        center: 0.0,
        scale: m,
        legend: (math::compact(-m), "0".into(), math::compact(m)),
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

/// Mean of the finite values among `cols` of a row.
fn cell_value(row: &[f64], c0: usize, c1: usize) -> f64 {
    let vals: Vec<f64> = row[c0..c1.max(c0 + 1).min(row.len())]
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if vals.is_empty() {
        f64::NAN
    } else {
        vals.iter().sum::<f64>() / vals.len() as f64
    }
}

/// The half-block cells of a grid.
struct Cells<'a> {
    grid: &'a Grid,
    theme: &'a Theme,
}

impl Cells<'_> {
    fn color(&self, v: f64) -> Color {
        if !v.is_finite() {
            return Color::Reset;
        }
        self.theme
            .diverging(((v - self.grid.center) / self.grid.scale).clamp(-1.0, 1.0))
    }
}

impl Widget for Cells<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let nrows = self.grid.rows.len();
        let ncols = self.grid.rows.first().map_or(0, |r| r.len());
        if nrows == 0 || ncols == 0 || area.width == 0 || area.height == 0 {
            return;
        }
        let half_rows = area.height as usize * 2;
        let w = area.width as usize;
        let value = |half: usize, x: usize| -> f64 {
            let r = (half * nrows / half_rows).min(nrows - 1);
            let (c0, c1) = (x * ncols / w, ((x + 1) * ncols).div_ceil(w));
            cell_value(&self.grid.rows[r], c0.min(ncols - 1), c1.min(ncols))
        };
        let mono = self.theme.depth == ColorDepth::Mono;
        for y in 0..area.height as usize {
            for x in 0..w {
                let (top, bottom) = (value(2 * y, x), value(2 * y + 1, x));
                let Some(cell) = buf.cell_mut((area.x + x as u16, area.y + y as u16)) else {
                    continue;
                };
                if mono {
                    let both: Vec<f64> = [top, bottom]
                        .into_iter()
                        .filter(|v| v.is_finite())
                        .collect();
                    let v = if both.is_empty() {
                        0.0
                    } else {
                        both.iter().sum::<f64>() / both.len() as f64
                    };
                    cell.set_char(Theme::shade(
                        ((v - self.grid.center) / self.grid.scale).abs(),
                    ));
                } else {
                    cell.set_char('▀');
                    cell.set_fg(self.color(top));
                    cell.set_bg(self.color(bottom));
                }
            }
        }
    }
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
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
            .style(app.theme.dim),
            area,
        );
        return;
    };
    if area.height < 3 || area.width < 12 {
        return;
    }
    let label_w = grid
        .row_labels
        .iter()
        .map(|l| l.len())
        .max()
        .unwrap_or(0)
        .min(6) as u16
        + 1;
    let [body, axis, legend] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let [labels, cells] =
        Layout::horizontal([Constraint::Length(label_w), Constraint::Min(1)]).areas(body);
    // Row labels where their data rows start.
    let nrows = grid.rows.len();
    let half_rows = body.height as usize * 2;
    let mut shown = vec![String::new(); body.height as usize];
    for (i, l) in grid.row_labels.iter().enumerate() {
        let y = (i * half_rows).div_ceil(nrows) / 2;
        if y < shown.len() && shown[y].is_empty() {
            shown[y] = l.clone();
        }
    }
    let label_lines: Vec<Line> = shown
        .into_iter()
        .map(|l| Line::styled(l, app.theme.dim))
        .collect();
    f.render_widget(Paragraph::new(label_lines), labels);
    f.render_widget(
        Cells {
            grid: &grid,
            theme: &app.theme,
        },
        cells,
    );
    let pad = cells
        .width
        .saturating_sub((grid.col_labels.0.len() + grid.col_labels.1.len()) as u16)
        as usize;
    f.render_widget(
        Paragraph::new(Line::styled(
            format!(
                "{}{}{}",
                " ".repeat(label_w as usize),
                grid.col_labels.0,
                " ".repeat(pad)
            ) + &grid.col_labels.1,
            app.theme.dim,
        )),
        axis,
    );
    legend_line(f, app, &grid, legend);
}

/// A colour ramp with its values: low, middle, high.
fn legend_line(f: &mut Frame, app: &App, grid: &Grid, area: Rect) {
    let ramp_w = 16usize;
    let mut spans = vec![Span::styled(format!("{} ", grid.legend.0), app.theme.dim)];
    for i in 0..ramp_w {
        let t = -1.0 + 2.0 * i as f64 / (ramp_w - 1) as f64;
        if app.theme.depth == ColorDepth::Mono {
            spans.push(Span::raw(Theme::shade(t.abs()).to_string()));
        } else {
            spans.push(Span::styled(
                "█",
                Style::default().fg(app.theme.diverging(t)),
            ));
        }
        if i == ramp_w / 2 - 1 {
            spans.push(Span::styled(format!(" {} ", grid.legend.1), app.theme.dim));
        }
    }
    spans.push(Span::styled(format!(" {}", grid.legend.2), app.theme.dim));
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averaging_cells_skips_missing_values() {
        assert_eq!(cell_value(&[1.0, f64::NAN, 3.0], 0, 3), 2.0);
        assert!(cell_value(&[f64::NAN], 0, 1).is_nan());
        assert_eq!(cell_value(&[5.0, 7.0], 1, 1), 7.0);
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
        assert_eq!((g.center, g.scale), (0.0, 1.0));
        assert_eq!(g.col_labels, ("step 0".to_string(), "5".to_string()));
        let none: std::collections::BTreeMap<_, _> = [(0, report(0, vec![]))].into_iter().collect();
        assert!(kl_over_training(&none).is_none());
    }
}
