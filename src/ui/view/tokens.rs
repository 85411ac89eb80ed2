//! The token view: where in a response the margin is made, token by token. For an eval pair,
//! the chosen and the rejected response one above the other, each token on its contribution's
//! colour (diverging, zero neutral), POET's cut at k and the first differing token marked; for
//! a sample, the policy's tokens on log pi - log pi_ref (where it departs from the reference).
//! A detail block reads out the token under the cursor and, for pairs, what the policy and the
//! reference would have said there instead.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::event::{Alternative, PairTokens, Sample, TokenTrack};
use crate::ui::math;
use crate::ui::state::{App, TokenSource};
use crate::ui::theme::{self, Theme};

/// The title, cut to `room` columns.
pub fn title(app: &App, room: usize) -> String {
    let full = full_title(app);
    if full.chars().count() <= room {
        return full;
    }
    full.chars()
        .take(room.saturating_sub(1))
        .collect::<String>()
        + "…"
}

fn full_title(app: &App) -> String {
    let run = app
        .selected_run()
        .map_or(String::new(), |r| format!(" · {}", r.name));
    match app.tokens.source {
        TokenSource::Pair => match current_pair(app) {
            Some((step, p)) => format!(
                "Tokens: pair #{} · step {step} · k={}{}{run}",
                p.pair + 1,
                p.k,
                if p.poet { " (POET)" } else { "" }
            ),
            None => format!("Tokens{run}"),
        },
        TokenSource::Sample => match current_sample(app) {
            Some(s) => format!(
                "Tokens: sample, prompt {} · step {}{run}",
                s.prompt_id + 1,
                s.step
            ),
            None => format!("Tokens: sample{run}"),
        },
    }
}

/// The pair the view shows, with its eval step.
fn current_pair(app: &App) -> Option<(usize, &PairTokens)> {
    let run = app.selected_run()?;
    let (step, pairs) = run.token_view_at(app.tokens.step)?;
    let p = pairs.get(app.tokens.pair.min(pairs.len().saturating_sub(1)))?;
    Some((step, p))
}

fn current_sample(app: &App) -> Option<&Sample> {
    let run = app.selected_run()?;
    let step = app.samples.step.unwrap_or(usize::MAX);
    run.sample_at("policy", app.samples.prompt, step)
}

/// A token as drawn: sanitised, its leading space shown as '·' and a line break as '↵', so
/// that a token made of whitespace is still seen.
pub fn shown(piece: &str) -> String {
    let mut out = String::new();
    for (i, c) in piece.chars().enumerate() {
        match c {
            ' ' if i == 0 => out.push('·'),
            '\n' => out.push('↵'),
            c => out.push(c),
        }
    }
    let out = math::sanitize(&out);
    if out.is_empty() {
        "∅".into()
    } else {
        out
    }
}

/// Text colour readable on `bg`: dark on light backgrounds, light on dark ones, the
/// terminal's own where the background's brightness is not known.
fn text_on(bg: Color) -> Color {
    let rgb = match bg {
        Color::Rgb(r, g, b) => Some((r, g, b)),
        // The cube and the grey ramp are fixed; indices 0-15 follow the user's palette.
        Color::Indexed(i) if i >= 16 => {
            let [r, g, b] = theme::xterm_rgb(i);
            Some((r, g, b))
        }
        Color::White | Color::Gray | Color::LightYellow | Color::LightCyan => Some((230, 230, 230)),
        Color::Black | Color::Blue | Color::Red | Color::DarkGray | Color::Magenta => {
            Some((20, 20, 20))
        }
        _ => None,
    };
    match rgb {
        Some((r, g, b)) => {
            let luma = 0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64;
            if luma > 140.0 {
                Color::Black
            } else {
                Color::White
            }
        }
        None => Color::Reset,
    }
}

/// Largest |v| among finite values (1 when none is above zero), the colour scale's end.
fn scale_of<'a>(values: impl Iterator<Item = &'a f64>) -> f64 {
    let m = values
        .filter(|v| v.is_finite())
        .fold(0.0f64, |a, v| a.max(v.abs()));
    if m > 0.0 {
        m
    } else {
        1.0
    }
}

/// What one drawn response needs: its tokens' texts and values, and the marks on it.
struct Strip<'a> {
    pieces: &'a [String],
    values: &'a [f64],
    /// Tokens from here on do not count under POET (drawn dim after a rule).
    cut: Option<usize>,
    first_diff: Option<usize>,
    cursor: Option<usize>,
}

/// The strip's tokens wrapped into lines of `width` cells; returns the lines and the line
/// holding the cursor.
fn wrap_strip(
    strip: &Strip,
    theme: &Theme,
    scale: f64,
    width: usize,
) -> (Vec<Line<'static>>, usize) {
    let mut lines: Vec<Line> = Vec::new();
    let mut line: Vec<Span> = Vec::new();
    let mut used = 0usize;
    let mut cursor_line = 0;
    let push = |lines: &mut Vec<Line<'static>>, line: &mut Vec<Span<'static>>, used: &mut usize| {
        lines.push(Line::from(std::mem::take(line)));
        *used = 0;
    };
    for (t, piece) in strip.pieces.iter().enumerate() {
        let mut spans: Vec<Span> = Vec::new();
        if strip.cut == Some(t) {
            spans.push(Span::styled("┃", theme.warn.add_modifier(Modifier::BOLD)));
        }
        let v = strip.values.get(t).copied().unwrap_or(f64::NAN);
        let bg = theme.diverging((v / scale).clamp(-1.0, 1.0));
        let mut style = if v.is_finite() {
            Style::new().bg(bg).fg(text_on(bg))
        } else {
            theme.dim
        };
        if strip.cut.is_some_and(|k| t >= k) {
            style = style.add_modifier(Modifier::DIM);
        }
        if strip.first_diff == Some(t) {
            style = style.add_modifier(Modifier::UNDERLINED | Modifier::BOLD);
        }
        if strip.cursor == Some(t) {
            style = style.add_modifier(Modifier::REVERSED | Modifier::BOLD);
        }
        let mut text = shown(piece);
        // A token wider than the line is cut to it.
        if text.chars().count() > width.saturating_sub(1).max(1) {
            text = text
                .chars()
                .take(width.saturating_sub(2).max(1))
                .collect::<String>()
                + "…";
        }
        spans.push(Span::styled(text, style));
        let w: usize = spans.iter().map(|s| s.width()).sum();
        if used + w > width && used > 0 {
            push(&mut lines, &mut line, &mut used);
        }
        if strip.cursor == Some(t) {
            cursor_line = lines.len();
        }
        used += w;
        line.extend(spans);
    }
    if strip.cut == Some(strip.pieces.len()) {
        line.push(Span::styled("┃", theme.warn.add_modifier(Modifier::BOLD)));
    }
    if !line.is_empty() || lines.is_empty() {
        push(&mut lines, &mut line, &mut used);
    }
    (lines, cursor_line)
}

/// At most `height` of `lines`, scrolled so that line `keep` shows.
fn window(lines: Vec<Line<'static>>, keep: usize, height: usize) -> Vec<Line<'static>> {
    if lines.len() <= height {
        return lines;
    }
    let start = keep
        .saturating_sub(height.saturating_sub(1) / 2)
        .min(lines.len() - height);
    lines.into_iter().skip(start).take(height).collect()
}

/// "-0.12 ███ 0 ███ +0.12 label": the diverging ramp with its ends and zero.
fn legend(theme: &Theme, scale: f64, label: &str, width: usize) -> Line<'static> {
    let mut spans = vec![Span::styled(
        format!("{} ", math::compact(-scale)),
        theme.dim,
    )];
    let half = 4;
    for i in 0..=2 * half {
        let v = (i as f64 - half as f64) / half as f64;
        if i == half {
            spans.push(Span::styled(
                "0",
                Style::new()
                    .bg(theme.diverging(0.0))
                    .fg(text_on(theme.diverging(0.0))),
            ));
        } else {
            spans.push(Span::styled(" ", Style::new().bg(theme.diverging(v))));
        }
    }
    spans.push(Span::styled(
        format!(" +{} ", math::compact(scale)),
        theme.dim,
    ));
    let used: usize = spans.iter().map(|s| s.width()).sum();
    spans.push(Span::styled(
        label
            .chars()
            .take(width.saturating_sub(used))
            .collect::<String>(),
        theme.dim,
    ));
    Line::from(spans)
}

fn signed(v: f64) -> String {
    if v.is_finite() {
        format!("{v:+.4}")
    } else {
        "—".into()
    }
}

fn alternatives_line(
    theme: &Theme,
    who: &str,
    alts: Option<&Vec<Alternative>>,
    why_none: &str,
) -> Line<'static> {
    let mut spans = vec![Span::styled(format!("{who:<7}"), theme.dim)];
    match alts {
        Some(alts) if !alts.is_empty() => {
            for (i, a) in alts.iter().enumerate() {
                if i > 0 {
                    spans.push(Span::styled(" │ ", theme.dim));
                }
                spans.push(Span::styled(
                    shown(&a.piece),
                    theme.text.add_modifier(Modifier::BOLD),
                ));
                spans.push(Span::styled(format!(" {:.0}%", 100.0 * a.p), theme.dim));
            }
        }
        _ => spans.push(Span::styled(why_none.to_string(), theme.dim)),
    }
    Line::from(spans)
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    match app.tokens.source {
        TokenSource::Pair => draw_pair(f, app, area),
        TokenSource::Sample => draw_sample(f, app, area),
    }
}

fn empty(f: &mut Frame, app: &App, area: Rect, text: &str) {
    f.render_widget(Paragraph::new(text.to_string()).style(app.theme.dim), area);
}

fn draw_pair(f: &mut Frame, app: &App, area: Rect) {
    let th = &app.theme;
    let Some((_, p)) = current_pair(app) else {
        return empty(
            f,
            app,
            area,
            "no token view yet: it is recorded at each eval (eval.token_view_pairs > 0)",
        );
    };
    let width = area.width as usize;
    let which = app.tokens.response.min(1);
    let tracks = [&p.chosen, &p.rejected];
    let track = tracks[which];
    let cursor = app.tokens.cursor.min(track.ids.len().saturating_sub(1));
    let scale = scale_of(
        p.chosen
            .contributions
            .iter()
            .chain(&p.rejected.contributions),
    );
    // Rows: prompt, two labelled strips, legend and marks, detail (4); strips share the rest.
    let detail_rows = 4usize;
    let fixed = 1 + 2 + 2 + detail_rows;
    let strips_h = (area.height as usize).saturating_sub(fixed).max(2);
    let per = [strips_h / 2, strips_h - strips_h / 2];
    let mut lines: Vec<Line> = vec![Line::from(vec![
        Span::styled("prompt ", th.dim),
        // A long prompt keeps its end: the words the responses continue from.
        Span::styled(
            math::sanitize(&p.prompt)
                .replace('\n', " ")
                .chars()
                .rev()
                .take(width.saturating_sub(8))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>(),
            th.text,
        ),
    ])];
    for (r, t) in tracks.iter().enumerate() {
        let len = if r == 0 { p.chosen_len } else { p.rejected_len };
        let reward: f64 = t
            .contributions
            .iter()
            .take(if p.poet { p.k } else { len })
            .sum();
        let cut_note = if t.ids.len() < len {
            format!(", first {} shown", t.ids.len())
        } else {
            String::new()
        };
        let name = if r == 0 { "chosen" } else { "rejected" };
        let marker = if r == which { "▶ " } else { "  " };
        lines.push(Line::from(vec![
            Span::styled(marker.to_string(), th.title_focused),
            Span::styled(
                name.to_string(),
                if r == which {
                    th.title_focused
                } else {
                    th.title
                },
            ),
            Span::styled(
                format!(" {len} tokens{cut_note}, reward {}", signed(reward)),
                th.dim,
            ),
        ]));
        let strip = Strip {
            pieces: &t.pieces,
            values: &t.contributions,
            cut: (p.k < len).then_some(p.k),
            first_diff: p.first_diff,
            cursor: (r == which).then_some(cursor),
        };
        let (wrapped, at) = wrap_strip(&strip, th, scale, width);
        let keep = if r == which { at } else { 0 };
        lines.extend(window(wrapped, keep, per[r].saturating_sub(1).max(1)));
    }
    let what = if p.chosen.ref_logps.is_empty() {
        "β·logπ/|y|"
    } else {
        "β(logπ−logπref)"
    };
    lines.push(legend(th, scale, what, width));
    let cut = if p.poet {
        "POET's cut"
    } else {
        "k (POET's cut)"
    };
    let marks = format!("┃ {cut} · underlined: first difference · reversed: cursor");
    lines.push(Line::from(Span::styled(
        marks.chars().take(width).collect::<String>(),
        th.dim,
    )));
    lines.extend(pair_detail(th, p, track, cursor));
    f.render_widget(Paragraph::new(lines), area);
}

fn pair_detail(th: &Theme, p: &PairTokens, t: &TokenTrack, at: usize) -> Vec<Line<'static>> {
    let Some(&id) = t.ids.get(at) else {
        return vec![Line::from(Span::styled("(empty response)", th.dim))];
    };
    let logp = t.logps.get(at).copied().unwrap_or(f64::NAN);
    let ref_logp = t.ref_logps.get(at).copied().unwrap_or(f64::NAN);
    let contribution = t.contributions.get(at).copied().unwrap_or(f64::NAN);
    let cum = p
        .prefix_margin
        .get(at)
        .map_or_else(|| format!("beyond k={}", p.k), |m| signed(*m));
    let head = Line::from(vec![
        Span::styled(format!("t{} ", at + 1), th.dim),
        Span::styled(
            format!("\"{}\"", shown(&t.pieces[at])),
            th.text.add_modifier(Modifier::BOLD),
        ),
        Span::styled(
            format!(
                " id {id} · logπ {} · logπref {} · contrib {}",
                signed(logp),
                signed(ref_logp),
                signed(contribution)
            ),
            th.text,
        ),
    ]);
    let margin = Line::from(vec![
        Span::styled("prefix margin m(t) ", th.dim),
        Span::styled(cum, th.text.add_modifier(Modifier::BOLD)),
        Span::styled(
            format!(
                " · p={:.0}% (ref {})",
                100.0 * logp.exp(),
                if ref_logp.is_finite() {
                    format!("{:.0}%", 100.0 * ref_logp.exp())
                } else {
                    "—".into()
                }
            ),
            th.dim,
        ),
    ]);
    let why_ref = if t.ref_logps.is_empty() {
        "no reference (reference-free objective)"
    } else {
        "not recorded (reference log-probs were precomputed)"
    };
    vec![
        head,
        margin,
        alternatives_line(th, "policy", t.policy_top.get(at), "not recorded"),
        alternatives_line(th, "ref", t.ref_top.get(at), why_ref),
    ]
}

fn draw_sample(f: &mut Frame, app: &App, area: Rect) {
    let th = &app.theme;
    let Some(s) = current_sample(app) else {
        return empty(f, app, area, "no policy sample yet (g samples now)");
    };
    if s.logps.is_empty() || s.pieces.len() != s.token_ids.len() {
        return empty(
            f,
            app,
            area,
            "this sample has no token log-probs (recorded by newer gaplab versions)",
        );
    }
    let width = area.width as usize;
    let diffs: Vec<f64> = if s.ref_logps.len() == s.logps.len() {
        s.logps
            .iter()
            .zip(&s.ref_logps)
            .map(|(a, b)| a - b)
            .collect()
    } else {
        vec![f64::NAN; s.logps.len()]
    };
    let cursor = app.tokens.cursor.min(s.token_ids.len().saturating_sub(1));
    let scale = scale_of(diffs.iter());
    let detail_rows = 2usize;
    let strip_h = (area.height as usize)
        .saturating_sub(2 + 1 + detail_rows)
        .max(1);
    let mut lines: Vec<Line> = vec![
        Line::from(vec![
            Span::styled("prompt ", th.dim),
            Span::styled(math::sanitize(&s.prompt).replace('\n', " "), th.text),
        ]),
        Line::from(Span::styled(
            format!("policy sample, {} tokens", s.token_ids.len()),
            th.title_focused,
        )),
    ];
    let strip = Strip {
        pieces: &s.pieces,
        values: &diffs,
        cut: None,
        first_diff: None,
        cursor: Some(cursor),
    };
    let (wrapped, at) = wrap_strip(&strip, th, scale, width);
    lines.extend(window(wrapped, at, strip_h));
    let label = if s.ref_logps.is_empty() {
        "no reference log-probs for this run"
    } else {
        "logπ − logπref: where the policy departs"
    };
    lines.push(legend(th, scale, label, width));
    let t = cursor;
    let cum: f64 = diffs[..=t.min(diffs.len().saturating_sub(1))].iter().sum();
    lines.push(Line::from(vec![
        Span::styled(format!("t{} ", t + 1), th.dim),
        Span::styled(
            format!("\"{}\"", shown(&s.pieces[t])),
            th.text.add_modifier(Modifier::BOLD),
        ),
        Span::styled(
            format!(
                " id {} · logπ {} · logπref {} · diff {}",
                s.token_ids[t],
                signed(s.logps[t]),
                signed(s.ref_logps.get(t).copied().unwrap_or(f64::NAN)),
                signed(diffs[t])
            ),
            th.text,
        ),
    ]));
    lines.push(Line::from(vec![
        Span::styled("sum of logπ − logπref up to here ", th.dim),
        Span::styled(signed(cum), th.text.add_modifier(Modifier::BOLD)),
    ]));
    f.render_widget(Paragraph::new(lines), area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_show_their_leading_space_and_control_characters() {
        assert_eq!(shown(" the"), "·the");
        assert_eq!(shown("a b"), "a b");
        assert_eq!(shown("\n"), "↵");
        assert_eq!(shown("\u{1b}[31m"), "␛[31m");
        assert_eq!(shown(""), "∅");
    }

    #[test]
    fn text_stays_readable_on_its_background() {
        assert_eq!(text_on(Color::Rgb(250, 250, 250)), Color::Black);
        assert_eq!(text_on(Color::Rgb(30, 30, 120)), Color::White);
        assert_eq!(text_on(Color::Reset), Color::Reset);
    }
}
