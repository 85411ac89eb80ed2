//! Token-contribution strips: the token view as a figure. For each recorded eval pair, the
//! chosen and the rejected response as rows of text boxes, each coloured by the token's share
//! of its response's implicit reward, with POET's cut k and the first differing token marked.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::canvas::{diverging, Ctx, Drawn, Figure};
use super::font::FAMILY;
use crate::event::{PairTokens, TokenTrack};

const WIDTH: f64 = 1100.0;
const MARGIN: f64 = 16.0;
/// Where token boxes start (the track's name is left of it).
const TOKENS_X: f64 = 90.0;
const ROW_H: f64 = 22.0;
const GAP: f64 = 3.0;
const PAD: f64 = 4.0;
const TOKEN_FONT: f64 = 13.0;
const TITLE_H: f64 = 36.0;
const HEAD_H: f64 = 20.0;
const PROMPT_H: f64 = 18.0;
const PAIR_GAP: f64 = 16.0;
const FOOT_H: f64 = 70.0;

/// A token as shown: spaces, newlines and tabs made visible, control characters replaced.
pub fn visible(piece: &str) -> String {
    if piece.is_empty() {
        return "∅".into();
    }
    piece
        .chars()
        .map(|c| match c {
            ' ' => '·',
            '\n' => '↵',
            '\t' => '→',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// Places boxes of the given widths left to right from `x0`, wrapping before `x1`: each box's
/// (x, row). A box wider than the whole row gets a row of its own.
pub fn flow(widths: &[f64], x0: f64, x1: f64, gap: f64) -> Vec<(f64, usize)> {
    let mut out = Vec::with_capacity(widths.len());
    let (mut x, mut row) = (x0, 0);
    for &w in widths {
        if x > x0 && x + w > x1 {
            x = x0;
            row += 1;
        }
        out.push((x, row));
        x += w + gap;
    }
    out
}

/// One response laid out: its boxes' text, position, width and contribution.
struct Track {
    name: &'static str,
    boxes: Vec<TokenBox>,
    rows: usize,
    /// Tokens of the response beyond those recorded.
    cut: usize,
}

struct TokenBox {
    text: String,
    x: f64,
    row: usize,
    w: f64,
    contribution: f64,
}

struct PairLayout {
    head: String,
    prompt: String,
    k: usize,
    poet: bool,
    first_diff: Option<usize>,
    tracks: [Track; 2],
}

impl PairLayout {
    fn height(&self) -> f64 {
        HEAD_H
            + PROMPT_H
            + self
                .tracks
                .iter()
                .map(|t| t.rows as f64 * ROW_H + GAP * 2.0)
                .sum::<f64>()
            + PAIR_GAP
    }
}

pub struct TokenStrips {
    title: String,
    pairs: Vec<PairLayout>,
    /// |contribution| at which colours saturate (shared by all pairs).
    scale: f64,
}

/// The width of `text` at `size` in the bundled font (SVG scale).
fn text_width(text: &str, size: f64) -> f64 {
    (FAMILY, size)
        .into_font()
        .box_size(text)
        .map_or(text.chars().count() as f64 * size * 0.6, |(w, _)| w as f64)
}

/// `text` cut (with "…") to fit `width` at `size`.
fn fit(text: &str, size: f64, width: f64) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text_width(&one_line, size) <= width {
        return one_line;
    }
    let mut out = String::new();
    for c in one_line.chars() {
        out.push(c);
        if text_width(&out, size) > width - text_width("…", size) {
            out.pop();
            break;
        }
    }
    out + "…"
}

fn track(name: &'static str, t: &TokenTrack, full_len: usize) -> Track {
    let texts: Vec<String> = t.pieces.iter().map(|p| visible(p)).collect();
    let widths: Vec<f64> = texts
        .iter()
        .map(|s| (text_width(s, TOKEN_FONT) + 2.0 * PAD).max(14.0))
        .collect();
    let places = flow(&widths, TOKENS_X, WIDTH - MARGIN, GAP);
    let rows = places.last().map_or(1, |p| p.1 + 1);
    let boxes = texts
        .into_iter()
        .zip(widths)
        .zip(places)
        .enumerate()
        .map(|(i, ((text, w), (x, row)))| TokenBox {
            text,
            x,
            row,
            w,
            contribution: t.contributions.get(i).copied().unwrap_or(f64::NAN),
        })
        .collect();
    Track {
        name,
        boxes,
        rows,
        cut: full_len.saturating_sub(t.pieces.len()),
    }
}

impl TokenStrips {
    pub fn new(run: &str, step: usize, pairs: &[PairTokens]) -> Self {
        let scale = pairs
            .iter()
            .flat_map(|p| {
                p.chosen
                    .contributions
                    .iter()
                    .chain(&p.rejected.contributions)
            })
            .map(|c| c.abs())
            .filter(|c| c.is_finite())
            .fold(0.0, f64::max);
        let pairs = pairs
            .iter()
            .map(|p| {
                let mut head = format!("pair #{} · k = {}", p.pair + 1, p.k);
                if p.poet {
                    head += " (POET cut)";
                }
                match p.first_diff {
                    Some(d) => head += &format!(" · first difference at t{}", d + 1),
                    None => head += " · no differing token recorded",
                }
                if let Some(m) = p.k.checked_sub(1).and_then(|i| p.prefix_margin.get(i)) {
                    head += &format!(" · prefix margin m(k) = {m:.4}");
                }
                head += &format!(
                    " · chosen {} tokens, rejected {}",
                    p.chosen_len, p.rejected_len
                );
                PairLayout {
                    head,
                    prompt: fit(
                        &format!("prompt: {}", p.prompt.trim()),
                        11.0,
                        WIDTH - 2.0 * MARGIN,
                    ),
                    k: p.k,
                    poet: p.poet,
                    first_diff: p.first_diff,
                    tracks: [
                        track("chosen", &p.chosen, p.chosen_len),
                        track("rejected", &p.rejected, p.rejected_len),
                    ],
                }
            })
            .collect();
        Self {
            title: format!("Token contributions of {run} at step {step}"),
            pairs,
            scale: if scale > 0.0 { scale } else { 1.0 },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn draw_track<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        p: &PairLayout,
        t: &Track,
        y0: f64,
        ctx: Ctx,
    ) -> Drawn<DB> {
        let s = ctx.scale;
        let pt = |x: f64, y: f64| ((x * s).round() as i32, (y * s).round() as i32);
        root.draw(&Text::new(
            t.name,
            pt(MARGIN, y0 + ROW_H / 2.0),
            ctx.font(13.0)
                .pos(Pos::new(HPos::Left, VPos::Center))
                .color(&RGBColor(60, 60, 60)),
        ))?;
        for (i, b) in t.boxes.iter().enumerate() {
            let top = y0 + b.row as f64 * ROW_H;
            let faded = p.poet && i >= p.k;
            let t01 = b.contribution / self.scale;
            let fill = diverging(t01);
            let fill = if faded {
                fill.mix(0.35).filled()
            } else {
                fill.filled()
            };
            root.draw(&Rectangle::new(
                [pt(b.x, top + 1.0), pt(b.x + b.w, top + ROW_H - 2.0)],
                fill,
            ))?;
            if p.first_diff == Some(i) {
                root.draw(&Rectangle::new(
                    [pt(b.x, top + 1.0), pt(b.x + b.w, top + ROW_H - 2.0)],
                    BLACK.stroke_width(ctx.px(2.0)),
                ))?;
            }
            let ink = if faded {
                RGBColor(130, 130, 130)
            } else if t01.abs() > 0.65 {
                WHITE
            } else {
                BLACK
            };
            root.draw(&Text::new(
                b.text.clone(),
                pt(b.x + b.w / 2.0, top + ROW_H / 2.0),
                ctx.font(TOKEN_FONT)
                    .pos(Pos::new(HPos::Center, VPos::Center))
                    .color(&ink),
            ))?;
        }
        // POET's cut: a bar before token k (after the last token when k is the response's end).
        let at = match (t.boxes.get(p.k), t.boxes.last()) {
            (Some(b), _) => Some((b.x - GAP / 2.0, b.row)),
            (None, Some(b)) if p.k == t.boxes.len() => Some((b.x + b.w + GAP / 2.0, b.row)),
            _ => None,
        };
        if let Some((x, row)) = at {
            let top = y0 + row as f64 * ROW_H;
            root.draw(&Rectangle::new(
                [pt(x - 1.5, top - 2.0), pt(x + 1.5, top + ROW_H + 1.0)],
                RGBColor(200, 30, 30).filled(),
            ))?;
        }
        if t.cut > 0 {
            let last = t.boxes.last();
            let (x, row) = last.map_or((TOKENS_X, 0), |b| (b.x + b.w + 6.0, b.row));
            root.draw(&Text::new(
                format!("… +{}", t.cut),
                pt(x, y0 + row as f64 * ROW_H + ROW_H / 2.0),
                ctx.font(11.0)
                    .pos(Pos::new(HPos::Left, VPos::Center))
                    .color(&RGBColor(110, 110, 110)),
            ))?;
        }
        Ok(())
    }

    fn draw_key<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        y0: f64,
        ctx: Ctx,
    ) -> Drawn<DB> {
        let s = ctx.scale;
        let pt = |x: f64, y: f64| ((x * s).round() as i32, (y * s).round() as i32);
        let (bx, bw, by, bh) = (MARGIN, 240.0, y0 + 10.0, 14.0);
        let n = 48;
        for i in 0..n {
            let a = bx + bw * i as f64 / n as f64;
            let b = bx + bw * (i + 1) as f64 / n as f64;
            let t = -1.0 + 2.0 * (i as f64 + 0.5) / n as f64;
            root.draw(&Rectangle::new(
                [pt(a, by), pt(b + 0.5, by + bh)],
                diverging(t).filled(),
            ))?;
        }
        let grey = RGBColor(60, 60, 60);
        for (x, label, h) in [
            (bx, format!("{:.3}", -self.scale), HPos::Left),
            (bx + bw / 2.0, "0".to_string(), HPos::Center),
            (bx + bw, format!("{:.3}", self.scale), HPos::Right),
        ] {
            root.draw(&Text::new(
                label,
                pt(x, by + bh + 4.0),
                ctx.font(11.0).pos(Pos::new(h, VPos::Top)).color(&grey),
            ))?;
        }
        root.draw(&Text::new(
            "token contribution to the implicit reward (β·(log π − log π_ref), or SimPO's β·log π/|y|)",
            pt(bx + bw + 16.0, by),
            ctx.font(12.0).color(&grey),
        ))?;
        root.draw(&Text::new(
            "red bar: POET's cut k (faded tokens after it do not count under POET) · black outline: first differing token · “·” is a space",
            pt(bx + bw + 16.0, by + 20.0),
            ctx.font(12.0).color(&grey),
        ))?;
        Ok(())
    }
}

impl Figure for TokenStrips {
    fn size(&self) -> (u32, u32) {
        let h = TITLE_H + self.pairs.iter().map(PairLayout::height).sum::<f64>() + FOOT_H;
        (WIDTH as u32, h.ceil() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, ctx: Ctx) -> Drawn<DB> {
        root.fill(&WHITE)?;
        let s = ctx.scale;
        let pt = |x: f64, y: f64| ((x * s).round() as i32, (y * s).round() as i32);
        root.draw(&Text::new(
            self.title.clone(),
            pt(MARGIN, 10.0),
            ctx.font(17.0),
        ))?;
        let mut y = TITLE_H;
        for p in &self.pairs {
            root.draw(&Text::new(p.head.clone(), pt(MARGIN, y), ctx.font(13.0)))?;
            root.draw(&Text::new(
                p.prompt.clone(),
                pt(MARGIN, y + HEAD_H),
                ctx.font(11.0).color(&RGBColor(90, 90, 90)),
            ))?;
            let mut ty = y + HEAD_H + PROMPT_H;
            for t in &p.tracks {
                self.draw_track(root, p, t, ty, ctx)?;
                ty += t.rows as f64 * ROW_H + GAP * 2.0;
            }
            y += p.height();
        }
        self.draw_key(root, y, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_flow_and_wrap() {
        let places = flow(&[10.0, 10.0, 10.0, 50.0, 10.0], 0.0, 40.0, 2.0);
        assert_eq!(
            places,
            vec![(0.0, 0), (12.0, 0), (24.0, 0), (0.0, 1), (0.0, 2)]
        );
        assert!(flow(&[], 0.0, 10.0, 1.0).is_empty());
    }

    #[test]
    fn whitespace_is_made_visible() {
        assert_eq!(visible(" the"), "·the");
        assert_eq!(visible("a\n\t"), "a↵→");
        assert_eq!(visible(""), "∅");
        assert_eq!(visible("\u{7}"), "\u{FFFD}");
    }
}
