//! Line charts: loss, rewards and accuracy, every visible run overlaid in its own colour.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph};
use ratatui::Frame;

use crate::ui::math;
use crate::ui::state::App;

/// One curve to draw: points, colour, legend name (None: not in the legend), and whether
/// to draw points only.
struct Curve {
    points: Vec<(f64, f64)>,
    color: Color,
    name: Option<String>,
    scatter: bool,
}

/// The loss pane's title with the chart settings in force, in at most `width` columns:
/// long names, then short ones, then cut.
pub fn loss_title(app: &App, width: usize) -> String {
    let c = &app.charts;
    let flags = [
        (c.log_scale, "log", "log"),
        (c.ignore_outliers, "no outliers", "p5-95"),
        (c.y_lock.is_some(), "y locked", "y lock"),
    ];
    let parts = |long: bool| -> Vec<String> {
        let smoothing = if long {
            format!("smoothing {:.2}", c.smoothing)
        } else {
            format!("sm {:.2}", c.smoothing)
        };
        ["Loss".to_string(), smoothing]
            .into_iter()
            .chain(
                flags
                    .iter()
                    .filter(|f| f.0)
                    .map(|f| if long { f.1 } else { f.2 }.to_string()),
            )
            .collect()
    };
    for (long, sep) in [(true, " · "), (false, " · "), (false, " ")] {
        let t = parts(long).join(sep);
        if t.chars().count() <= width {
            return t;
        }
    }
    parts(false).join(" ").chars().take(width).collect()
}

/// y -> log10(y) for the log scale (non-positive values dropped).
fn log_points(points: Vec<(f64, f64)>, log: bool) -> Vec<(f64, f64)> {
    if !log {
        return points;
    }
    points
        .into_iter()
        .filter(|p| p.1 > 0.0)
        .map(|(x, y)| (x, y.log10()))
        .collect()
}

/// Raw (faded) and smoothed curves of one series of one run.
fn train_curves(
    app: &App,
    run: usize,
    metric: &str,
    color: Color,
    faded: Color,
    name: Option<String>,
    log: bool,
) -> Vec<Curve> {
    let raw = log_points(app.runs[run].series(false, metric), log);
    if raw.is_empty() {
        return vec![];
    }
    let smoothed = math::smooth(&raw, app.charts.smoothing);
    let mut out = Vec::new();
    if app.charts.smoothing > 0.0 {
        out.push(Curve {
            points: raw,
            color: faded,
            name: None,
            scatter: false,
        });
    }
    out.push(Curve {
        points: smoothed,
        color,
        name,
        scatter: false,
    });
    out
}

fn eval_curve(app: &App, run: usize, metric: &str, color: Color, log: bool) -> Option<Curve> {
    let points = log_points(app.runs[run].series(true, metric), log);
    (!points.is_empty()).then_some(Curve {
        points,
        color,
        name: None,
        scatter: true,
    })
}

/// Draws curves with shared bounds; `fixed` pins the y-range (accuracy), `key` names the chart
/// for y-range locking.
fn chart(
    f: &mut Frame,
    app: &mut App,
    area: Rect,
    key: &'static str,
    mut curves: Vec<Curve>,
    fixed: Option<(f64, f64)>,
    log: bool,
) {
    if area.width < 8 || area.height < 3 {
        return;
    }
    if curves.iter().all(|c| c.points.is_empty()) {
        f.render_widget(Paragraph::new("no data yet").style(app.theme.dim), area);
        return;
    }
    let xs = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let ys: Vec<f64> = curves
        .iter()
        .filter(|c| !c.scatter || fixed.is_none())
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .collect();
    let computed = fixed
        .or_else(|| math::y_range(&ys, app.charts.ignore_outliers))
        .unwrap_or((0.0, 1.0));
    let (y0, y1) = match fixed {
        Some(_) => computed,
        None => app.charts.y_range(key, computed),
    };
    // Steps where live settings changed: vertical marks.
    let applied: Vec<Vec<(f64, f64)>> = app
        .visible_runs()
        .iter()
        .flat_map(|&r| {
            app.runs[r]
                .applied
                .iter()
                .map(|&s| vec![(s as f64, y0), (s as f64, y1)])
        })
        .collect();
    let max_points = (area.width as usize * 2).max(16);
    for c in &mut curves {
        if !c.scatter {
            c.points = math::downsample(&c.points, max_points);
        }
    }
    let marker = if app.charts.braille {
        Marker::Braille
    } else {
        Marker::Dot
    };
    // Applied config edits are thin rules (Braille) behind the curves.
    let mut datasets: Vec<Dataset> = applied
        .iter()
        .map(|pts| {
            Dataset::default()
                .data(pts)
                .graph_type(GraphType::Line)
                .marker(Marker::Braille)
                .style(Style::default().fg(app.theme.axis))
        })
        .collect();
    // Eval points are small dots, drawn last so they sit on the lines without hiding more
    // than their own cell.
    curves.sort_by_key(|c| c.scatter);
    for c in &curves {
        let mut d = Dataset::default()
            .data(&c.points)
            .marker(if c.scatter { Marker::Dot } else { marker })
            .graph_type(if c.scatter {
                GraphType::Scatter
            } else {
                GraphType::Line
            })
            .style(Style::default().fg(c.color));
        if let Some(n) = &c.name {
            d = d.name(n.clone());
        }
        datasets.push(d);
    }
    let ticks = [y0, (y0 + y1) / 2.0, y1].map(|v| if log { 10f64.powf(v) } else { v });
    let [lo, mid, hi]: [String; 3] = math::axis_labels(&ticks)
        .try_into()
        .unwrap_or_else(|_| ticks.map(math::sig3));
    // A plot of few rows has no row of its own for the middle label: it would be drawn over
    // another one.
    let y_labels = if area.height >= 6 {
        vec![Span::raw(lo), Span::raw(mid), Span::raw(hi)]
    } else {
        vec![Span::raw(lo), Span::raw(hi)]
    };
    let axis_style = Style::default().fg(app.theme.axis);
    let chart = Chart::new(datasets)
        .x_axis(
            Axis::default()
                .bounds([x0, x1])
                .style(axis_style)
                .labels([Span::raw(math::compact(x0)), Span::raw(math::compact(x1))]),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .style(axis_style)
                .labels(y_labels),
        )
        .hidden_legend_constraints((Constraint::Percentage(60), Constraint::Percentage(60)));
    f.render_widget(chart, area);
}

/// The generation health of the visible runs: the sampled KL per token at each eval (a chart)
/// under one caption line with the selected run's latest greedy length, stop share and
/// repetition (`eval_gen/*`).
fn health(f: &mut Frame, app: &mut App, area: Rect, runs: &[usize]) {
    let th = app.theme.clone();
    let [caption, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(3)]).areas(area);
    let latest = |name: &str| {
        app.selected_run()
            .and_then(|r| r.eval.get(name))
            .and_then(|s| s.values().last().copied())
    };
    let mut text = String::from(" KL(policy||ref) per token");
    for (name, label) in [
        ("eval_gen/length", "length"),
        ("eval_gen/stop_share", "stop"),
        ("eval_gen/repetition", "repetition"),
    ] {
        if let Some(v) = latest(name) {
            text += &format!(" · {label} {}", crate::ui::math::compact(v));
        }
    }
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("generation", th.title),
            Span::styled(text, th.dim),
        ])),
        caption,
    );
    let curves: Vec<Curve> = runs
        .iter()
        .map(|&r| Curve {
            points: app.runs[r].series(true, "eval_gen/kl"),
            color: th.series(r),
            name: Some(app.runs[r].name.clone()),
            scatter: false,
        })
        .collect();
    chart(f, app, rest, "kl", curves, None, false);
}

pub fn loss(f: &mut Frame, app: &mut App, area: Rect) {
    let runs = app.visible_runs();
    // With generation health recorded and room for both, the lower part charts it.
    let measured = runs
        .iter()
        .any(|&r| app.runs[r].eval.contains_key("eval_gen/length"));
    let area = if measured && area.height >= 12 {
        let [top, bottom] =
            Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
        health(f, app, bottom, &runs);
        top
    } else {
        area
    };
    let mut curves = Vec::new();
    let log = app.charts.log_scale;
    for (i, &r) in runs.iter().enumerate() {
        let (c, faded) = (app.theme.series(r), app.theme.series_faded(r));
        let name = (runs.len() > 1 || i == 0).then(|| app.runs[r].name.clone());
        curves.extend(train_curves(app, r, "loss", c, faded, name, log));
        curves.extend(eval_curve(app, r, "eval_loss", app.theme.eval, log));
    }
    chart(f, app, area, "loss", curves, None, log);
}

/// The judge's score of greedy generations (a task with a programmatic judge).
const JUDGE_SCORE: &str = "eval_judge/score";

/// The range a judge's scores are drawn from on the gap chart's 0..1 axis: None when they fit
/// it (the task judge's scores are shares), else their [lowest, highest] (a reward model's
/// scores are on its own scale), which is mapped onto 0..1 so the trend still shows.
fn judge_scale(scores: &[(f64, f64)]) -> Option<(f64, f64)> {
    let (lo, hi) = scores
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo >= 0.0 && hi <= 1.0 || lo > hi {
        return None;
    }
    Some((lo, if hi > lo { hi } else { lo + 1.0 }))
}

/// The gap chart: at each eval, how often the implicit reward prefers the chosen response
/// (dots) next to how good the policy's own generations are by the judge (lines), per run.
/// A reward accuracy that climbs while the judge's score stays flat is the gap. Also returns
/// the judge scores' range when they were rescaled onto the axis ([`judge_scale`]).
fn gap_curves(app: &App, runs: &[usize]) -> (Vec<Curve>, Option<(f64, f64)>) {
    let th = &app.theme;
    let all: Vec<(f64, f64)> = runs
        .iter()
        .flat_map(|&r| app.runs[r].series(true, JUDGE_SCORE))
        .collect();
    let scale = judge_scale(&all);
    let mut out = Vec::new();
    for &r in runs {
        let (judge_color, acc_color) = if runs.len() == 1 {
            (th.chosen, th.accuracy)
        } else {
            (th.series(r), th.series(r))
        };
        let name = |what: &str| {
            Some(if runs.len() == 1 {
                what.to_string()
            } else {
                format!("{} {what}", app.runs[r].name)
            })
        };
        let mut points = app.runs[r].series(true, JUDGE_SCORE);
        if let Some((lo, hi)) = scale {
            for p in &mut points {
                p.1 = (p.1 - lo) / (hi - lo);
            }
        }
        out.push(Curve {
            points,
            color: judge_color,
            name: name("judge"),
            scatter: false,
        });
        out.push(Curve {
            points: app.runs[r].series(true, "eval_rewards/accuracies"),
            color: acc_color,
            name: name("reward acc ·"),
            scatter: true,
        });
    }
    (out, scale)
}

pub fn rewards(f: &mut Frame, app: &mut App, area: Rect) {
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    let runs = app.visible_runs();
    let th = app.theme.clone();
    let mut curves = Vec::new();
    if runs.len() == 1 {
        let r = runs[0];
        for (metric, color, name) in [
            ("rewards/chosen", th.chosen, "chosen"),
            ("rewards/rejected", th.rejected, "rejected"),
            ("rewards/margins", th.margin, "margin"),
        ] {
            curves.extend(train_curves(
                app,
                r,
                metric,
                color,
                th.axis,
                Some(name.into()),
                false,
            ));
        }
        curves.extend(eval_curve(app, r, "eval_rewards/margins", th.eval, false));
    } else {
        for &r in &runs {
            let name = Some(format!("{} margin", app.runs[r].name));
            curves.extend(train_curves(
                app,
                r,
                "rewards/margins",
                th.series(r),
                th.series_faded(r),
                name,
                false,
            ));
            curves.extend(eval_curve(
                app,
                r,
                "eval_rewards/margins",
                th.series(r),
                false,
            ));
        }
    }
    chart(f, app, top, "rewards", curves, None, false);
    let mut acc = Vec::new();
    for &r in &runs {
        let name = Some(if runs.len() == 1 {
            "accuracy".to_string()
        } else {
            format!("{} acc", app.runs[r].name)
        });
        let color = if runs.len() == 1 {
            th.accuracy
        } else {
            th.series(r)
        };
        acc.extend(train_curves(
            app,
            r,
            "rewards/accuracies",
            color,
            th.axis,
            name,
            false,
        ));
        acc.extend(eval_curve(
            app,
            r,
            "eval_rewards/accuracies",
            th.eval,
            false,
        ));
    }
    let judged = runs
        .iter()
        .any(|&r| !app.runs[r].series(true, JUDGE_SCORE).is_empty());
    if judged && bottom.height >= 4 {
        // The legend does not fit a chart this short: one caption line says what is what.
        let [caption, rest] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(3)]).areas(bottom);
        let (gap, scale) = gap_curves(app, &runs);
        let lines = match scale {
            Some((lo, hi)) => format!(
                " · lines: judge score ({} to {} drawn as 0 to 1)",
                math::compact(lo),
                math::compact(hi)
            ),
            None => " · lines: judge score".to_string(),
        };
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("gap", th.title),
                Span::styled(format!("{lines} · dots: reward accuracy"), th.dim),
            ])),
            caption,
        );
        chart(f, app, rest, "gap", gap, Some((0.0, 1.0)), false);
    } else if bottom.height >= 3 {
        chart(f, app, bottom, "accuracy", acc, Some((0.0, 1.0)), false);
    } else if let Some(v) = runs
        .first()
        .and_then(|&r| app.runs[r].train.get("rewards/accuracies"))
        .and_then(|s| s.values().last())
    {
        f.render_widget(
            Paragraph::new(Line::raw(format!("accuracy {v:.2}"))),
            bottom,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::judge_scale;

    #[test]
    fn judge_scores_off_the_unit_axis_are_rescaled_onto_it() {
        // A task judge's shares fit the axis as they are.
        assert_eq!(judge_scale(&[(0.0, 0.2), (25.0, 0.9)]), None);
        assert_eq!(judge_scale(&[]), None);
        // A reward model's scores do not: their range is mapped onto it.
        assert_eq!(
            judge_scale(&[(0.0, -2.0), (25.0, 3.5), (50.0, f64::NAN)]),
            Some((-2.0, 3.5))
        );
        // One score off the axis still gets a range to map from.
        assert_eq!(judge_scale(&[(0.0, 3.5)]), Some((3.5, 4.5)));
    }
}
