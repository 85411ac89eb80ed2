//! Drawing the report's figures with plotters: one drawing per figure, written as SVG or PNG
//! (the same code draws onto either backend).
//!
//! Sizes are given at SVG scale and multiplied by [`Ctx::scale`], so that a PNG, drawn at
//! twice the size, is as sharp as a paper needs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::canvas::{Ctx, Drawn, Figure};
use super::font;
use super::heatmap::PrefixHeatmap;
use super::stats::{band, BandPoint};
use super::tokens::TokenStrips;
use super::{Format, Line, Options, PrefixGap, Run, Series, Written};

/// PNGs are drawn at twice the SVG's size.
const PNG_SCALE: f64 = 2.0;

/// Draws `fig` into `path` (SVG or PNG by `format`).
pub fn save(fig: &impl Figure, path: &Path, format: Format) -> Result<()> {
    font::register()?;
    let (w, h) = fig.size();
    let drawn = |e: String| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    match format {
        Format::Svg => {
            let mut text = String::new();
            {
                let root = SVGBackend::with_string(&mut text, (w, h)).into_drawing_area();
                fig.draw(&root, Ctx { scale: 1.0 })
                    .map_err(|e| drawn(e.to_string()))?;
                root.present().map_err(|e| drawn(e.to_string()))?;
            }
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        }
        Format::Png => {
            let (w, h) = ((w as f64 * PNG_SCALE) as u32, (h as f64 * PNG_SCALE) as u32);
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
                fig.draw(&root, Ctx { scale: PNG_SCALE })
                    .map_err(|e| drawn(e.to_string()))?;
                root.present().map_err(|e| drawn(e.to_string()))?;
            }
            write_png(path, w, h, &rgb)
        }
    }
}

fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc
        .write_header()
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .write_image_data(rgb)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The y range of shares (accuracies): 0 to 1 with room for markers at either end.
const UNIT_AXIS: (f64, f64) = (-0.03, 1.03);

/// A step on an axis: steps are whole numbers.
fn step_label(v: &f64) -> String {
    format!("{v:.0}")
}

/// One colour per line (Tableau 10: distinct, and readable in greyscale print).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(78, 121, 167),
    RGBColor(242, 142, 43),
    RGBColor(225, 87, 89),
    RGBColor(118, 183, 178),
    RGBColor(89, 161, 79),
    RGBColor(237, 201, 72),
    RGBColor(176, 122, 161),
    RGBColor(255, 157, 167),
    RGBColor(156, 117, 95),
    RGBColor(186, 176, 172),
];

pub fn line_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// [lo, hi] of the finite values, padded by 5% (a flat series gets ±1 around its value).
pub fn padded_range(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return None;
    }
    if hi - lo < 1e-12 {
        return Some((lo - 1.0, hi + 1.0));
    }
    let pad = 0.05 * (hi - lo);
    Some((lo - pad, hi + pad))
}

/// A line's mean ± std curve of one metric (train or eval).
fn line_band(runs: &[Run], line: &Line, eval: bool, metric: &str) -> Vec<BandPoint> {
    let series: Vec<&Series> = line
        .members
        .iter()
        .filter_map(|&i| {
            let r = &runs[i];
            if eval {
                r.eval.get(metric)
            } else {
                r.train.get(metric)
            }
        })
        .collect();
    band(&series)
}

/// The ± 1 std area around a seed group's mean curve (None without two points that have a
/// spread: a single run has no band).
fn std_band(pts: &[BandPoint], color: RGBColor) -> Option<Polygon<(f64, f64)>> {
    let with_std: Vec<&BandPoint> = pts.iter().filter(|p| p.std.is_some()).collect();
    if with_std.len() < 2 {
        return None;
    }
    let upper = with_std
        .iter()
        .map(|p| (p.step as f64, p.mean + p.std.unwrap_or(0.0)));
    let lower = with_std
        .iter()
        .rev()
        .map(|p| (p.step as f64, p.mean - p.std.unwrap_or(0.0)));
    Some(Polygon::new(
        upper.chain(lower).collect::<Vec<_>>(),
        color.mix(0.2).filled(),
    ))
}

/// Draws a mean curve with its ± std band; dashed with dots for eval curves. Returns whether
/// anything was drawn (to label it in the legend once).
#[allow(clippy::too_many_arguments)]
fn draw_band<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    pts: &[BandPoint],
    color: RGBColor,
    dashed: bool,
    label: Option<&str>,
    ctx: Ctx,
) -> Drawn<DB> {
    if pts.is_empty() {
        return Ok(());
    }
    if let Some(area) = std_band(pts, color) {
        chart.draw_series(std::iter::once(area))?;
    }
    let xy: Vec<(f64, f64)> = pts.iter().map(|p| (p.step as f64, p.mean)).collect();
    let style = ctx.stroke(color, if dashed { 1.5 } else { 1.8 });
    let anno = if dashed {
        chart.draw_series(DashedLineSeries::new(
            xy.clone(),
            ctx.px(6.0),
            ctx.px(4.0),
            style,
        ))?;
        chart.draw_series(
            xy.iter()
                .map(|&p| Circle::new(p, ctx.px(3.0), color.filled())),
        )?
    } else {
        chart.draw_series(LineSeries::new(xy, style))?
    };
    if let Some(label) = label {
        let w = ctx.px(18.0) as i32;
        anno.label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + w, y)], style));
    }
    Ok(())
}

/// One chart of curves: a train metric (solid) and its eval metric (dashed, dots), each line in
/// its colour.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: &'static str,
    pub y_desc: &'static str,
    pub train: Option<&'static str>,
    pub eval: Option<&'static str>,
    /// A fixed y range (accuracies: 0 to 1).
    pub y_range: Option<(f64, f64)>,
}

/// Curves of several panels side by side (2 columns), one legend in the first.
pub struct Curves<'a> {
    pub runs: &'a [Run],
    pub lines: &'a [Line],
    pub panels: Vec<Panel>,
}

impl Curves<'_> {
    /// Whether any panel has a value to draw.
    pub fn has_data(&self) -> bool {
        self.panels.iter().any(|p| {
            self.lines.iter().any(|l| {
                p.train
                    .is_some_and(|m| !line_band(self.runs, l, false, m).is_empty())
                    || p.eval
                        .is_some_and(|m| !line_band(self.runs, l, true, m).is_empty())
            })
        })
    }

    fn grid(&self) -> (usize, usize) {
        let cols = if self.panels.len() > 1 { 2 } else { 1 };
        (self.panels.len().div_ceil(cols), cols)
    }

    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        p: &Panel,
        legend: bool,
        ctx: Ctx,
    ) -> Drawn<DB> {
        let bands: Vec<(Vec<BandPoint>, Vec<BandPoint>)> = self
            .lines
            .iter()
            .map(|l| {
                (
                    p.train
                        .map(|m| line_band(self.runs, l, false, m))
                        .unwrap_or_default(),
                    p.eval
                        .map(|m| line_band(self.runs, l, true, m))
                        .unwrap_or_default(),
                )
            })
            .collect();
        let all = || bands.iter().flat_map(|(a, b)| a.iter().chain(b));
        let x_max = all().map(|p| p.step).max().unwrap_or(1).max(1) as f64;
        let (y0, y1) = p
            .y_range
            .or_else(|| {
                padded_range(all().flat_map(|p| {
                    let s = p.std.unwrap_or(0.0);
                    [p.mean - s, p.mean + s]
                }))
            })
            .unwrap_or((0.0, 1.0));
        let mut chart = ChartBuilder::on(area)
            .caption(p.title, ctx.font(15.0))
            .margin(ctx.px(8.0))
            .x_label_area_size(ctx.px(36.0))
            .y_label_area_size(ctx.px(58.0))
            .build_cartesian_2d(0f64..x_max, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(p.y_desc)
            .label_style(ctx.font(11.0))
            .axis_desc_style(ctx.font(12.0))
            .x_label_formatter(&step_label)
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(226, 226, 226))
            .draw()?;
        let mut labelled = false;
        for (i, (l, (train, eval))) in self.lines.iter().zip(&bands).enumerate() {
            let c = line_color(i);
            let label = legend.then_some(l.label.as_str());
            draw_band(&mut chart, train, c, false, label, ctx)?;
            let label = if train.is_empty() { label } else { None };
            draw_band(&mut chart, eval, c, true, label, ctx)?;
            labelled |= legend && !(train.is_empty() && eval.is_empty());
        }
        if bands.iter().all(|(a, b)| a.is_empty() && b.is_empty()) {
            no_data(area, ctx)?;
        }
        if labelled {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(ctx.font(11.0))
                .legend_area_size(ctx.px(28.0))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(160, 160, 160))
                .draw()?;
        }
        Ok(())
    }
}

/// "no data" in the middle of an area.
fn no_data<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, ctx: Ctx) -> Drawn<DB> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        "no data",
        (w as i32 / 2 - ctx.px(20.0) as i32, h as i32 / 2),
        ctx.font(13.0).color(&RGBColor(120, 120, 120)),
    ))
}

/// The note under every curve figure: how to read train, eval and bands.
const CURVES_KEY: &str =
    "solid: train · dashed with dots: eval · band: ± 1 std over seeds (mean line)";

impl Figure for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        let (rows, cols) = self.grid();
        (if cols == 1 { 820 } else { 1100 }, (rows as u32) * 380 + 30)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, ctx: Ctx) -> Drawn<DB> {
        root.fill(&WHITE)?;
        let (_, h) = root.dim_in_pixel();
        let (body, foot) = root.split_vertically(h - ctx.px(30.0));
        foot.draw(&Text::new(
            CURVES_KEY,
            (ctx.px(12.0) as i32, ctx.px(8.0) as i32),
            ctx.font(12.0).color(&RGBColor(90, 90, 90)),
        ))?;
        let areas = body.split_evenly(self.grid());
        for (i, (area, p)) in areas.iter().zip(&self.panels).enumerate() {
            self.panel(area, p, i == 0, ctx)?;
        }
        Ok(())
    }
}

/// The judge metrics the gap chart can draw, in the order one is picked.
pub const JUDGE_METRICS: [&str; 2] = ["eval_judge/score", "eval_judge/rm_score"];

/// The gap chart: reward accuracy of the implicit reward (left axis) against how good the
/// policy's own generations are by the judge or reward model (right axis), at each eval.
pub struct Gap<'a> {
    pub runs: &'a [Run],
    pub lines: &'a [Line],
}

impl Gap<'_> {
    /// The judge metric of a line: the first of [`JUDGE_METRICS`] a member recorded.
    fn judge_metric(&self, line: &Line) -> Option<&'static str> {
        JUDGE_METRICS.into_iter().find(|m| {
            line.members
                .iter()
                .any(|&i| self.runs[i].eval.get(*m).is_some_and(|s| !s.is_empty()))
        })
    }

    pub fn has_data(&self) -> bool {
        self.lines.iter().any(|l| self.judge_metric(l).is_some())
    }

    /// The right axis' title: which judge metrics are drawn.
    pub fn judge_desc(&self) -> String {
        let mut used: Vec<&str> = self
            .lines
            .iter()
            .filter_map(|l| self.judge_metric(l))
            .collect();
        used.dedup();
        let names: Vec<&str> = used
            .iter()
            .map(|m| {
                if *m == JUDGE_METRICS[0] {
                    "judge score"
                } else {
                    "reward-model score"
                }
            })
            .collect();
        format!("{} (solid)", names.join(" / "))
    }
}

impl Figure for Gap<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 460)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, ctx: Ctx) -> Drawn<DB> {
        root.fill(&WHITE)?;
        let acc: Vec<Vec<BandPoint>> = self
            .lines
            .iter()
            .map(|l| line_band(self.runs, l, true, "eval_rewards/accuracies"))
            .collect();
        let judge: Vec<Vec<BandPoint>> = self
            .lines
            .iter()
            .map(|l| {
                self.judge_metric(l)
                    .map(|m| line_band(self.runs, l, true, m))
                    .unwrap_or_default()
            })
            .collect();
        let x_max = acc
            .iter()
            .chain(&judge)
            .flatten()
            .map(|p| p.step)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let (j0, j1) = padded_range(judge.iter().flatten().flat_map(|p| {
            let s = p.std.unwrap_or(0.0);
            [p.mean - s, p.mean + s]
        }))
        .unwrap_or((0.0, 1.0));
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Gap: reward accuracy vs judge score over evals",
                ctx.font(16.0),
            )
            .margin(ctx.px(10.0))
            .x_label_area_size(ctx.px(38.0))
            .y_label_area_size(ctx.px(60.0))
            .right_y_label_area_size(ctx.px(64.0))
            .build_cartesian_2d(0f64..x_max, UNIT_AXIS.0..UNIT_AXIS.1)?
            .set_secondary_coord(0f64..x_max, j0..j1);
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("reward accuracy (dashed, dots)")
            .x_label_formatter(&step_label)
            .label_style(ctx.font(11.0))
            .axis_desc_style(ctx.font(12.0))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(226, 226, 226))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc(self.judge_desc())
            .label_style(ctx.font(11.0))
            .axis_desc_style(ctx.font(12.0))
            .draw()?;
        for (i, l) in self.lines.iter().enumerate() {
            let c = line_color(i);
            let pts = &acc[i];
            let xy: Vec<(f64, f64)> = pts.iter().map(|p| (p.step as f64, p.mean)).collect();
            let style = ctx.stroke(c, 1.5);
            chart.draw_series(DashedLineSeries::new(
                xy.clone(),
                ctx.px(6.0),
                ctx.px(4.0),
                style,
            ))?;
            chart.draw_series(xy.iter().map(|&p| Circle::new(p, ctx.px(3.5), c.filled())))?;
            let j = &judge[i];
            if let Some(area) = std_band(j, c) {
                chart.draw_secondary_series(std::iter::once(area))?;
            }
            let style = ctx.stroke(c, 2.0);
            let w = ctx.px(18.0) as i32;
            chart
                .draw_secondary_series(LineSeries::new(
                    j.iter().map(|p| (p.step as f64, p.mean)),
                    style,
                ))?
                .label(l.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + w, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(ctx.font(11.0))
            .legend_area_size(ctx.px(28.0))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
        Ok(())
    }
}

/// ΔQ(k) of preference data against k (log scale): a curve with its ± stderr band per file,
/// a dashed level at its full-response ΔQ and a line at zero.
pub struct DeltaQ<'a> {
    pub gaps: &'a [PrefixGap],
}

impl DeltaQ<'_> {
    fn points(g: &PrefixGap) -> Vec<(f64, f64, f64)> {
        g.rows
            .iter()
            .filter_map(|r| match (r.k, r.delta) {
                (Some(k), Some(d)) if k > 0 && d.is_finite() => {
                    Some(((k as f64).log2(), d, r.stderr.unwrap_or(0.0)))
                }
                _ => None,
            })
            .collect()
    }
}

impl Figure for DeltaQ<'_> {
    fn size(&self) -> (u32, u32) {
        (860, 460)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, ctx: Ctx) -> Drawn<DB> {
        root.fill(&WHITE)?;
        let pts: Vec<Vec<(f64, f64, f64)>> = self.gaps.iter().map(Self::points).collect();
        let xs = || pts.iter().flatten().map(|p| p.0);
        let x0 = xs().fold(f64::INFINITY, f64::min);
        let x1 = xs().fold(f64::NEG_INFINITY, f64::max);
        let (x0, x1) = if x0 < x1 {
            (x0 - 0.2, x1 + 0.2)
        } else if x0.is_finite() {
            (x0 - 1.0, x0 + 1.0)
        } else {
            (0.0, 1.0)
        };
        let (y0, y1) = padded_range(
            pts.iter()
                .flatten()
                .flat_map(|p| [p.1 - p.2, p.1 + p.2])
                .chain(self.gaps.iter().filter_map(|g| g.full.delta))
                .chain([0.0]),
        )
        .unwrap_or((-1.0, 1.0));
        let mut chart = ChartBuilder::on(root)
            .caption(
                "ΔQ(k): chosen − rejected reward of k-token prefixes",
                ctx.font(16.0),
            )
            .margin(ctx.px(10.0))
            .x_label_area_size(ctx.px(38.0))
            .y_label_area_size(ctx.px(60.0))
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("k (response tokens, log scale)")
            .y_desc("ΔQ(k) ± stderr")
            .x_label_formatter(&|v| format!("{}", 2f64.powf(*v).round()))
            .label_style(ctx.font(11.0))
            .axis_desc_style(ctx.font(12.0))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(226, 226, 226))
            .draw()?;
        chart.draw_series(LineSeries::new(
            [(x0, 0.0), (x1, 0.0)],
            ctx.stroke(RGBColor(120, 120, 120), 1.0),
        ))?;
        for (i, (g, p)) in self.gaps.iter().zip(&pts).enumerate() {
            let c = line_color(i);
            if p.len() >= 2 {
                let upper = p.iter().map(|q| (q.0, q.1 + q.2));
                let lower = p.iter().rev().map(|q| (q.0, q.1 - q.2));
                chart.draw_series(std::iter::once(Polygon::new(
                    upper.chain(lower).collect::<Vec<_>>(),
                    c.mix(0.2).filled(),
                )))?;
            }
            if let Some(full) = g.full.delta.filter(|d| d.is_finite()) {
                chart.draw_series(DashedLineSeries::new(
                    [(x0, full), (x1, full)],
                    ctx.px(6.0),
                    ctx.px(4.0),
                    ctx.stroke(c, 1.2),
                ))?;
            }
            let style = ctx.stroke(c, 2.0);
            let w = ctx.px(18.0) as i32;
            chart
                .draw_series(LineSeries::new(p.iter().map(|q| (q.0, q.1)), style))?
                .label(format!(
                    "{} ({} pairs; dashed: full responses)",
                    g.label, g.pairs
                ))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + w, y)], style));
            chart.draw_series(
                p.iter()
                    .map(|q| Circle::new((q.0, q.1), ctx.px(3.0), c.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(ctx.font(11.0))
            .legend_area_size(ctx.px(28.0))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
        Ok(())
    }
}

/// A file name from a run's name (letters, digits, '-', '_', '.').
pub fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "run".into()
    } else {
        s
    }
}

/// Draws every figure the runs have data for into `opts.out`, noting those skipped.
pub fn draw_all(
    runs: &[Run],
    lines: &[Line],
    gaps: &[PrefixGap],
    opts: &Options,
    written: &mut Written,
) -> Result<()> {
    let ext = opts.format.ext();
    let path = |stem: &str| -> PathBuf { opts.out.join(format!("{stem}.{ext}")) };
    let mut put = |fig_path: PathBuf, what: String| written.figures.push((fig_path, what));
    let mut notes = Vec::new();

    let loss = Curves {
        runs,
        lines,
        panels: vec![Panel {
            title: "Loss",
            y_desc: "loss",
            train: Some("loss"),
            eval: Some("eval_loss"),
            y_range: None,
        }],
    };
    if loss.has_data() {
        save(&loss, &path("loss"), opts.format)?;
        put(
            path("loss"),
            "Training loss (solid) and eval loss (dashed, dots) against the optimizer step.".into(),
        );
    } else {
        notes.push("loss: no run recorded a loss".to_string());
    }

    let rewards = Curves {
        runs,
        lines,
        panels: vec![
            Panel {
                title: "Reward of the chosen responses",
                y_desc: "rewards/chosen",
                train: Some("rewards/chosen"),
                eval: Some("eval_rewards/chosen"),
                y_range: None,
            },
            Panel {
                title: "Reward of the rejected responses",
                y_desc: "rewards/rejected",
                train: Some("rewards/rejected"),
                eval: Some("eval_rewards/rejected"),
                y_range: None,
            },
            Panel {
                title: "Reward margin (chosen − rejected)",
                y_desc: "rewards/margins",
                train: Some("rewards/margins"),
                eval: Some("eval_rewards/margins"),
                y_range: None,
            },
            Panel {
                title: "Reward accuracy (share with margin > 0)",
                y_desc: "rewards/accuracies",
                train: Some("rewards/accuracies"),
                eval: Some("eval_rewards/accuracies"),
                y_range: Some(UNIT_AXIS),
            },
        ],
    };
    if rewards.has_data() {
        save(&rewards, &path("rewards"), opts.format)?;
        put(
            path("rewards"),
            "Implicit rewards of the chosen and rejected responses, their margin and the reward accuracy, train (solid) and eval (dashed, dots).".into(),
        );
    } else {
        notes.push("rewards: no run recorded implicit rewards".to_string());
    }

    let gap = Gap { runs, lines };
    if gap.has_data() {
        save(&gap, &path("gap"), opts.format)?;
        put(
            path("gap"),
            format!("The gap chart: at each eval, how often the implicit reward prefers the chosen response (eval reward accuracy, left axis, dashed) next to how good the policy's own greedy generations are ({}, right axis). A reward accuracy that climbs while the judge's score stays flat is the gap.", gap.judge_desc().replace(" (solid)", "")),
        );
    } else {
        notes.push(
            "gap chart: no run has judge scores (eval_judge/score or eval_judge/rm_score; set [judge] to record them)".to_string(),
        );
    }

    let heat = PrefixHeatmap::new(runs, lines);
    if heat.has_data() {
        save(&heat, &path("prefix_heatmap"), opts.format)?;
        put(
            path("prefix_heatmap"),
            "Prefix margin m(j) over training: for each eval (x) and prefix length j (y), the mean margin of the implicit reward over the first j response tokens of the eval pairs that reach j; blue: the chosen prefix is preferred, red: the rejected one.".into(),
        );
    } else {
        notes.push("prefix heatmap: no eval recorded a prefix curve".to_string());
    }

    for r in runs {
        match &r.token_view {
            Some((step, pairs)) => {
                let stem = format!("tokens-{}", file_stem(&r.name));
                save(
                    &TokenStrips::new(&r.name, *step, pairs),
                    &path(&stem),
                    opts.format,
                )?;
                put(
                    path(&stem),
                    format!("Token contributions of {} at step {step}: each response token coloured by its share of the implicit reward (blue: raises the response's reward, red: lowers it); the red bar marks POET's cut k, the black outline the first token where chosen and rejected differ; tokens after k are faded where the run trains with POET.", r.name),
                );
            }
            None => notes.push(format!(
                "token strips: {} has no token view (recorded before gaplab kept one, or with eval.token_view_pairs = 0)",
                r.name
            )),
        }
    }

    if !gaps.is_empty() {
        save(&DeltaQ { gaps }, &path("delta_q"), opts.format)?;
        put(
            path("delta_q"),
            "ΔQ(k): the mean reward-model score difference between the chosen and rejected k-token prefixes (± stderr), with the full responses' difference dashed.".into(),
        );
    }
    written.notes.extend(notes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_pad_and_survive_flat_or_empty_series() {
        assert_eq!(padded_range([0.0, 10.0]), Some((-0.5, 10.5)));
        assert_eq!(padded_range([2.0, 2.0, f64::NAN]), Some((1.0, 3.0)));
        assert_eq!(padded_range([f64::NAN]), None);
    }

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("dpo-poet (3 seeds)"), "dpo-poet__3_seeds_");
        assert_eq!(file_stem(""), "run");
    }
}
