//! Drawing: the dashboard is a pure function of the [`App`] state (plus the y-ranges it
//! remembers while they are locked).

mod charts;
mod heatmap;
mod samples;
mod tokens;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Clear, Paragraph, Wrap};
use ratatui::Frame;

use super::keymap;
use super::math;
use super::state::{state_name, App, Exit, Mode, Pane, Role};
use super::theme::Theme;
use crate::event::{Level, RunState};

/// Below this the dashboard shows a notice instead of panes.
pub const MIN_WIDTH: u16 = 50;
pub const MIN_HEIGHT: u16 = 12;

pub fn draw(f: &mut Frame, app: &mut App) {
    let area = f.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!(
            "terminal too small ({}x{}); gaplab needs {MIN_WIDTH}x{MIN_HEIGHT}",
            area.width, area.height
        );
        f.render_widget(
            Paragraph::new(text)
                .style(app.theme.warn)
                .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let [main, status] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(area);
    if app.expanded {
        pane(f, app, app.focus, main);
    } else {
        let [top, middle, bottom] = Layout::vertical([
            Constraint::Percentage(42),
            Constraint::Percentage(38),
            Constraint::Min(3),
        ])
        .areas(main);
        let [loss, rewards] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
        let [heat, samples] =
            Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)])
                .areas(middle);
        pane(f, app, Pane::Loss, loss);
        pane(f, app, Pane::Rewards, rewards);
        pane(f, app, Pane::Heatmap, heat);
        pane(f, app, Pane::Samples, samples);
        pane(f, app, Pane::Log, bottom);
    }
    status_bar(f, app, status);
    match app.mode {
        Mode::Dashboard => {}
        Mode::Help { scroll } => help(f, app, scroll, area),
        Mode::QuitQuestion => confirm(f, app, area),
    }
}

/// A bordered pane with its title; focus shows in the border.
fn pane(f: &mut Frame, app: &mut App, which: Pane, area: Rect) {
    let focused = app.focus == which;
    let th = &app.theme;
    // Inside the corners, with a space either side.
    let room = area.width.saturating_sub(4) as usize;
    let title = match which {
        Pane::Loss => charts::loss_title(app, room),
        Pane::Heatmap if app.tokens.open => tokens::title(app, room),
        Pane::Heatmap => heatmap::title(app, room),
        _ => which.title().to_string(),
    };
    let block = Block::bordered()
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Plain
        })
        .border_style(if focused {
            th.border_focused
        } else {
            th.border
        })
        .title(Span::styled(
            format!(" {title} "),
            if focused { th.title_focused } else { th.title },
        ));
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    match which {
        Pane::Loss => charts::loss(f, app, inner),
        Pane::Rewards => charts::rewards(f, app, inner),
        Pane::Heatmap if app.tokens.open => tokens::draw(f, app, inner),
        Pane::Heatmap => heatmap::draw(f, app, inner),
        Pane::Samples => samples::draw(f, app, inner),
        Pane::Log => log(f, app, inner),
    }
}

fn level_style(app: &App, level: Level) -> Style {
    match level {
        Level::Info => app.theme.text,
        Level::Warn => app.theme.warn,
        Level::Error => app.theme.error,
    }
}

fn log(f: &mut Frame, app: &App, area: Rect) {
    let h = area.height as usize;
    let end = app.log.lines.len().saturating_sub(app.log.scroll as usize);
    let start = end.saturating_sub(h);
    let lines: Vec<Line> = app
        .log
        .lines
        .range(start..end)
        .map(|l| {
            Line::from(vec![
                Span::styled(format!("{:>6} ", l.step), app.theme.dim),
                Span::styled(format!("{} ", l.run), app.theme.dim),
                Span::styled(
                    math::sanitize(&l.text).replace('\n', " "),
                    level_style(app, l.level),
                ),
            ])
        })
        .collect();
    if lines.is_empty() {
        f.render_widget(
            Paragraph::new("waiting for the first events…").style(app.theme.dim),
            area,
        );
    } else {
        f.render_widget(Paragraph::new(lines), area);
    }
}

fn human_bytes(b: u64) -> String {
    let mb = b as f64 / (1024.0 * 1024.0);
    if mb >= 1024.0 {
        format!("{:.1} GB", mb / 1024.0)
    } else {
        format!("{mb:.0} MB")
    }
}

fn status_bar(f: &mut Frame, app: &App, area: Rect) {
    let th = &app.theme;
    let help = " ? help ";
    // A narrow terminal drops the throughput figures before anything is cut.
    let full = status_spans(app, false);
    let width = |spans: &[Span]| spans.iter().map(Span::width).sum::<usize>();
    let spans = if width(&full) + help.len() > area.width as usize {
        status_spans(app, true)
    } else {
        full
    };
    let mut line = Line::from(cut(spans, (area.width as usize).saturating_sub(help.len())));
    let used: usize = line.width();
    let fill = (area.width as usize).saturating_sub(used + help.len());
    line.push_span(Span::styled(" ".repeat(fill), th.status));
    line.push_span(Span::styled(help, th.status_accent));
    f.render_widget(Paragraph::new(line).style(th.status), area);
}

/// `spans` in at most `width` columns, the last one shown ending in `…` when cut.
fn cut(spans: Vec<Span<'static>>, width: usize) -> Vec<Span<'static>> {
    let mut out = Vec::new();
    let mut used = 0;
    for span in spans {
        let w = span.width();
        if used + w <= width {
            used += w;
            out.push(span);
            continue;
        }
        let room = width.saturating_sub(used);
        if room > 0 {
            let text: String = span.content.chars().take(room - 1).collect();
            out.push(Span::styled(text + "…", span.style));
        }
        break;
    }
    out
}

/// The status bar's parts; `brief` leaves out ETA, tokens/s, device and memory.
fn status_spans(app: &App, brief: bool) -> Vec<Span<'static>> {
    let th = &app.theme;
    let sep = Span::styled(" │ ", th.status);
    let mut spans = Vec::new();
    match app.selected_run() {
        Some(r) => {
            spans.push(Span::styled(format!(" {} ", r.name), th.status_accent));
            spans.push(Span::styled(
                format!(" step {}/{}", r.step, r.total_steps),
                th.status,
            ));
            spans.push(sep.clone());
            if !brief {
                spans.push(Span::styled(
                    format!("ETA {}", math::duration(r.eta())),
                    th.status,
                ));
                spans.push(sep.clone());
                let tps = if r.tokens_per_s.is_finite() {
                    format!("{:.0} tok/s", r.tokens_per_s)
                } else {
                    "- tok/s".into()
                };
                spans.push(Span::styled(tps, th.status));
                spans.push(sep.clone());
                let dev = if r.device.is_empty() { "-" } else { &r.device };
                spans.push(Span::styled(dev.to_string(), th.status));
                spans.push(sep.clone());
            }
            if let Some(l) = &r.lora {
                spans.push(Span::styled(l.label(r.params), th.status));
                spans.push(sep.clone());
            }
            if !brief {
                let mem = app.status.memory.map_or("mem -".to_string(), human_bytes);
                spans.push(Span::styled(mem, th.status));
                spans.push(sep.clone());
            }
            let (text, style) = if app.exit == Exit::Stopping && !r.state.is_over() {
                ("stopping…".to_string(), th.warn)
            } else {
                match &r.state {
                    RunState::Running => ("● running".into(), th.ok),
                    RunState::Paused => ("❚❚ paused".into(), th.warn),
                    RunState::Failed(_) => ("✖ failed".into(), th.error),
                    s => (state_name(s).to_string(), th.status),
                }
            };
            spans.push(Span::styled(
                text,
                style.patch(Style::default().bg(th.status.bg.unwrap_or_default())),
            ));
        }
        None => spans.push(Span::styled(" waiting for a run… ", th.status)),
    }
    if let Some((step, text)) = app.selected_run().and_then(|r| r.alert.as_ref()) {
        spans.push(sep.clone());
        spans.push(Span::styled(
            format!("⚠ @{step} {}", math::sanitize(text).replace('\n', " ")),
            th.warn
                .patch(Style::default().bg(th.status.bg.unwrap_or_default())),
        ));
    }
    if let Some((ok, msg)) = &app.status.reload {
        spans.push(sep.clone());
        let style = if *ok { th.status } else { th.error };
        spans.push(Span::styled(math::sanitize(msg).replace('\n', " "), style));
    }
    if let Role::Attached {
        controllable: false,
    } = app.role
    {
        spans.push(sep.clone());
        spans.push(Span::styled("read-only", th.status));
    }
    spans
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// The help's lines: each group under its heading, after a blank line when `spaced`.
fn help_lines(
    entries: &[(&'static str, String, &'static str)],
    key_w: usize,
    spaced: bool,
    th: &Theme,
) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let mut group = "";
    for (g, keys, text) in entries {
        if *g != group {
            if spaced && !group.is_empty() {
                lines.push(Line::raw(""));
            }
            lines.push(Line::styled(g.to_string(), th.title_focused));
            group = g;
        }
        lines.push(Line::from(vec![
            Span::styled(format!("  {keys:<key_w$}  "), th.key),
            Span::styled(text.to_string(), th.text),
        ]));
    }
    lines
}

fn help(f: &mut Frame, app: &App, scroll: u16, area: Rect) {
    let th = &app.theme;
    let entries = keymap::help_entries();
    let key_w = entries
        .iter()
        .map(|e| e.1.chars().count())
        .max()
        .unwrap_or(0);
    // Blank lines between the groups only while everything fits with them (inside the border).
    let mut lines = help_lines(&entries, key_w, true, th);
    if lines.len() + 2 > area.height as usize {
        lines = help_lines(&entries, key_w, false, th);
    }
    let text_w = entries
        .iter()
        .map(|e| e.2.chars().count())
        .max()
        .unwrap_or(0);
    let w = (key_w + text_w + 7).max(key_w + 52) as u16;
    let h = lines.len() as u16 + 2;
    let r = centered(area, w, h);
    // Taller than the terminal: j/k scroll, and the title says so.
    let overflow = (lines.len() as u16).saturating_sub(r.height.saturating_sub(2));
    let scroll = scroll.min(overflow);
    let title = if overflow > 0 {
        format!(
            " keys {}/{} (j/k scroll, other keys close) ",
            scroll + 1,
            overflow + 1
        )
    } else {
        " keys (any key closes) ".to_string()
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).scroll((scroll, 0)).block(
            Block::bordered()
                .border_style(th.border_focused)
                .title(Span::styled(title, th.title_focused)),
        ),
        r,
    );
}

fn confirm(f: &mut Frame, app: &App, area: Rect) {
    let th = &app.theme;
    let r = centered(area, 58, 5);
    f.render_widget(Clear, r);
    let text = vec![
        Line::styled("Stop training and quit?", th.title_focused),
        Line::styled(
            "The current step finishes and a checkpoint is written.",
            th.text,
        ),
        Line::from(vec![
            Span::styled(" y ", th.status_accent),
            Span::styled(" stop and quit   ", th.text),
            Span::styled(" n ", th.status_accent),
            Span::styled(" keep training", th.text),
        ]),
    ];
    f.render_widget(
        Paragraph::new(text)
            .block(Block::bordered().border_style(th.warn.add_modifier(Modifier::BOLD))),
        r,
    );
}
