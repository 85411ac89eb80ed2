//! The prefix heatmap over training: for each line (a run, or the mean of a group of seeds), the
//! prefix margin m(j) at every eval step (x) and prefix length j (y), on one diverging colour
//! scale shared by all panels, with its colour bar.

use std::collections::{BTreeMap, BTreeSet};

use plotters::coord::types::{RangedCoordf64, RangedCoordusize};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::canvas::{diverging, Ctx, Drawn, Figure};
use super::stats::mean_std;
use super::{Line, Run};

/// One panel: its label, the eval steps, the prefix lengths and the margin per (step, j)
/// (mean over the line's runs).
struct Grid {
    label: String,
    steps: Vec<usize>,
    js: Vec<usize>,
    cells: BTreeMap<(usize, usize), f64>,
}

/// The left (lower) edge of cell `i` of `n` on a segmented axis; `n` is the far edge.
fn edge(i: usize, n: usize) -> SegmentValue<usize> {
    if i < n {
        SegmentValue::Exact(i)
    } else {
        SegmentValue::Last
    }
}

pub struct PrefixHeatmap {
    grids: Vec<Grid>,
    /// The colour scale: |m| at which colours saturate.
    scale: f64,
}

/// Mean prefix margin per (eval step, j) over the runs given (the label left empty).
fn grid(runs: &[&Run]) -> Grid {
    let mut values: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for r in runs {
        for (&step, curve) in &r.prefix {
            for (&j, &m) in curve.j.iter().zip(&curve.margin) {
                values.entry((step, j)).or_default().push(m);
            }
        }
    }
    let cells: BTreeMap<(usize, usize), f64> = values
        .into_iter()
        .filter_map(|(k, v)| mean_std(&v).map(|(m, _)| (k, m)))
        .collect();
    let steps: BTreeSet<usize> = cells.keys().map(|k| k.0).collect();
    let js: BTreeSet<usize> = cells.keys().map(|k| k.1).collect();
    Grid {
        label: String::new(),
        steps: steps.into_iter().collect(),
        js: js.into_iter().collect(),
        cells,
    }
}

impl PrefixHeatmap {
    pub fn new(runs: &[Run], lines: &[Line]) -> Self {
        let grids: Vec<Grid> = lines
            .iter()
            .map(|l| {
                let members: Vec<&Run> = l.members.iter().map(|&i| &runs[i]).collect();
                let mut g = grid(&members);
                g.label = if l.members.len() > 1 {
                    format!("{} · mean over seeds", l.label)
                } else {
                    l.label.clone()
                };
                g
            })
            .filter(|g| !g.cells.is_empty())
            .collect();
        let scale = grids
            .iter()
            .flat_map(|g| g.cells.values())
            .map(|v| v.abs())
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        Self {
            grids,
            scale: if scale > 0.0 { scale } else { 1.0 },
        }
    }

    pub fn has_data(&self) -> bool {
        !self.grids.is_empty()
    }

    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        g: &Grid,
        ctx: Ctx,
    ) -> Drawn<DB> {
        let (nx, ny) = (g.steps.len(), g.js.len());
        let mut chart = ChartBuilder::on(area)
            .caption(&g.label, ctx.font(14.0))
            .margin(ctx.px(6.0))
            .x_label_area_size(ctx.px(36.0))
            .y_label_area_size(ctx.px(56.0))
            .build_cartesian_2d((0..nx - 1).into_segmented(), (0..ny - 1).into_segmented())?;
        let steps = &g.steps;
        let js = &g.js;
        let x_fmt = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => steps.get(*i).map(|s| s.to_string()).unwrap_or_default(),
            _ => String::new(),
        };
        let y_fmt = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => js.get(*i).map(|s| s.to_string()).unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("eval step")
            .y_desc("prefix length j")
            .x_labels(nx.min(12))
            .y_labels(ny.min(12))
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style(ctx.font(11.0))
            .axis_desc_style(ctx.font(12.0))
            .draw()?;
        let cells = g
            .steps
            .iter()
            .enumerate()
            .flat_map(|(xi, s)| g.js.iter().enumerate().map(move |(yi, j)| (xi, yi, *s, *j)));
        chart.draw_series(cells.map(|(xi, yi, s, j)| {
            let color = match g.cells.get(&(s, j)) {
                Some(m) => diverging(m / self.scale),
                // An eval that did not reach this j (an edited prefix_lengths).
                None => RGBColor(255, 255, 255),
            };
            Rectangle::new(
                [
                    (edge(xi, nx), edge(yi, ny)),
                    (edge(xi + 1, nx), edge(yi + 1, ny)),
                ],
                color.filled(),
            )
        }))?;
        Ok(())
    }

    fn colour_bar<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, ctx: Ctx) -> Drawn<DB> {
        let s = self.scale;
        let mut chart: ChartContext<'_, DB, Cartesian2d<RangedCoordusize, RangedCoordf64>> =
            ChartBuilder::on(area)
                .margin_top(ctx.px(40.0))
                .margin_bottom(ctx.px(50.0))
                .margin_right(ctx.px(6.0))
                .y_label_area_size(ctx.px(70.0))
                .build_cartesian_2d(0usize..1usize, -s..s)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_desc("prefix margin m(j)")
            .label_style(ctx.font(11.0))
            .axis_desc_style(ctx.font(12.0))
            .draw()?;
        let n = 64;
        chart.draw_series((0..n).map(|i| {
            let lo = -s + 2.0 * s * i as f64 / n as f64;
            let hi = -s + 2.0 * s * (i + 1) as f64 / n as f64;
            Rectangle::new([(0, lo), (1, hi)], diverging((lo + hi) / 2.0 / s).filled())
        }))?;
        Ok(())
    }
}

impl Figure for PrefixHeatmap {
    fn size(&self) -> (u32, u32) {
        (900, 34 + 300 * self.grids.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, ctx: Ctx) -> Drawn<DB> {
        root.fill(&WHITE)?;
        let (top, root) = root.split_vertically(ctx.px(34.0));
        let (w, _) = top.dim_in_pixel();
        top.draw(&Text::new(
            "Prefix margin m(j) at each eval (blue: chosen prefix preferred)",
            (w as i32 / 2, ctx.px(20.0) as i32),
            ctx.font(16.0).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Center,
            )),
        ))?;
        let (panels, bar) = root.split_horizontally(w - ctx.px(130.0));
        let areas = panels.split_evenly((self.grids.len(), 1));
        for (area, g) in areas.iter().zip(&self.grids) {
            self.panel(area, g, ctx)?;
        }
        self.colour_bar(&bar, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::PrefixCurve;

    #[test]
    fn cells_average_the_seeds_at_each_step_and_length() {
        let mut a = crate::report::tests_support::run("a");
        let mut b = crate::report::tests_support::run("b");
        let curve = |m: Vec<f64>| PrefixCurve {
            j: vec![1, 2, 4],
            margin: m,
            accuracy: vec![0.5; 3],
            pairs: vec![4; 3],
        };
        a.prefix.insert(0, curve(vec![0.0, 0.1, 0.2]));
        a.prefix.insert(5, curve(vec![0.2, 0.4, 0.6]));
        b.prefix.insert(5, curve(vec![0.4, 0.6, f64::NAN]));
        let Grid {
            steps, js, cells, ..
        } = grid(&[&a, &b]);
        assert_eq!(steps, [0, 5]);
        assert_eq!(js, [1, 2, 4]);
        assert!((cells[&(5, 1)] - 0.3).abs() < 1e-12);
        // A NaN margin of one seed leaves the other's.
        assert!((cells[&(5, 4)] - 0.6).abs() < 1e-12);
        assert_eq!(cells[&(0, 2)], 0.1);
        let runs = [a, b];
        let lines = [Line {
            label: "x (2 seeds)".into(),
            members: vec![0, 1],
        }];
        let h = PrefixHeatmap::new(&runs, &lines);
        assert!(h.has_data());
        assert!((h.scale - 0.6).abs() < 1e-12);
    }
}
