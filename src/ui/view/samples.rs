//! Samples side by side: the selected run's policy against the reference or another variant,
//! for the same prompt and step, wrapped and scrolled together, the first differing token
//! highlighted.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;

use crate::event::Sample;
use crate::ui::math;
use crate::ui::state::{App, Compare};

/// Styled text of a sample with token `highlight` marked (by token pieces when the sample has
/// them, else from the first differing character `char_at`).
fn styled(
    sample: &Sample,
    highlight: Option<usize>,
    char_at: Option<usize>,
    base: Style,
    mark: Style,
) -> Text<'static> {
    let mut spans: Vec<Span> = Vec::new();
    let pieces_ok = sample.pieces.len() == sample.token_ids.len() && !sample.pieces.is_empty();
    if let (true, Some(h)) = (pieces_ok, highlight) {
        let before: String = sample.pieces[..h.min(sample.pieces.len())].concat();
        spans.push(Span::styled(math::sanitize(&before), base));
        if h < sample.pieces.len() {
            let piece = math::sanitize(&sample.pieces[h]);
            // An empty or whitespace-only token still shows where generations part.
            let shown = if piece.trim().is_empty() {
                format!("{piece}▏")
            } else {
                piece
            };
            spans.push(Span::styled(shown, mark));
            spans.push(Span::styled(
                math::sanitize(&sample.pieces[h + 1..].concat()),
                base,
            ));
        } else {
            spans.push(Span::styled("▏(ends)".to_string(), mark));
        }
    } else if let Some(c) = char_at {
        let chars: Vec<char> = sample.text.chars().collect();
        let c = c.min(chars.len());
        spans.push(Span::styled(
            math::sanitize(&chars[..c].iter().collect::<String>()),
            base,
        ));
        if c < chars.len() {
            spans.push(Span::styled(math::sanitize(&chars[c].to_string()), mark));
            spans.push(Span::styled(
                math::sanitize(&chars[c + 1..].iter().collect::<String>()),
                base,
            ));
        }
    } else {
        spans.push(Span::styled(math::sanitize(&sample.text), base));
    }
    // Split on line breaks so wrapping keeps them.
    let mut lines: Vec<Line> = vec![Line::default()];
    for span in spans {
        let style = span.style;
        let mut parts = span.content.split('\n').peekable();
        while let Some(part) = parts.next() {
            // `lines` always has a last line: it starts with one and only grows.
            if let Some(line) = lines.last_mut() {
                if !part.is_empty() {
                    line.push_span(Span::styled(part.to_string(), style));
                }
                if parts.peek().is_some() {
                    line.push_span(Span::styled("↵", Style::default()));
                }
            }
            if parts.peek().is_some() {
                lines.push(Line::default());
            }
        }
    }
    Text::from(lines)
}

fn first_char_difference(a: &str, b: &str) -> Option<usize> {
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    (common < a.chars().count().max(b.chars().count())).then_some(common)
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let th = &app.theme;
    let Some(run) = app.selected_run() else {
        return;
    };
    let steps = run.sample_steps();
    let Some(&latest) = steps.last() else {
        f.render_widget(Paragraph::new("no samples yet").style(th.dim), area);
        return;
    };
    let pane = &app.samples;
    let step = pane.step.unwrap_or(latest);
    let prompt = pane.prompt.min(app.prompt_count().saturating_sub(1));
    let left = run.sample_at("policy", prompt, step);
    let (right, right_name) = match pane.compare {
        Compare::Reference => (
            run.sample_at("reference", prompt, 0),
            "reference".to_string(),
        ),
        Compare::Run(i) => match app.runs.get(i) {
            Some(other) => (
                other.sample_at("policy", prompt, step),
                format!("{} @ {step}", other.name),
            ),
            None => (None, "-".to_string()),
        },
    };
    let [header, body] = Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(area);
    let prompt_text = left.or(right).map_or(String::new(), |s| {
        math::sanitize(&s.prompt).replace('\n', " ↵ ")
    });
    let which = if pane.step.is_none() { " (latest)" } else { "" };
    let (n, count) = (prompt + 1, app.prompt_count().max(1));
    let versus = format!("{} vs {right_name}", run.name);
    // Narrow panes get the short form, so the names compared stay on screen.
    let mut where_ = format!("prompt {n}/{count} · step {step}{which} · ");
    if where_.chars().count() + versus.chars().count() > area.width as usize {
        where_ = format!("{n}/{count} · @{step} · ");
    }
    let head = vec![
        Line::from(vec![
            Span::styled(where_, th.dim),
            Span::styled(versus, th.text),
        ]),
        Line::styled(format!("› {prompt_text}"), th.dim),
    ];
    f.render_widget(Paragraph::new(head), header);
    let [l, r] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
    let tokens = match (left, right) {
        (Some(a), Some(b)) => math::first_difference(&a.token_ids, &b.token_ids),
        _ => None,
    };
    let chars = match (left, right) {
        (Some(a), Some(b)) => first_char_difference(&a.text, &b.text),
        _ => None,
    };
    for (area, sample, name, border) in [
        (
            l,
            left,
            format!("{} @ {}", run.name, left.map_or(step, |s| s.step)),
            Borders::RIGHT,
        ),
        (r, right, right_name.clone(), Borders::NONE),
    ] {
        let block = Block::default().borders(border).border_style(th.border);
        let inner = block.inner(area);
        f.render_widget(block, area);
        let [title, text] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(inner);
        f.render_widget(Paragraph::new(Line::styled(name, th.title)), title);
        let content = match sample {
            Some(s) => styled(s, tokens, chars, th.text, th.highlight),
            None => Text::styled("(no sample)", th.dim),
        };
        f.render_widget(
            Paragraph::new(content)
                .wrap(Wrap { trim: false })
                .scroll((pane.scroll, 0)),
            text,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ids: &[u32], pieces: &[&str]) -> Sample {
        Sample {
            step: 1,
            prompt_id: 0,
            prompt: "p".into(),
            source: "policy".into(),
            text: pieces.concat(),
            token_ids: ids.to_vec(),
            pieces: pieces.iter().map(|s| s.to_string()).collect(),
            logps: vec![],
            ref_logps: vec![],
        }
    }

    #[test]
    fn the_first_differing_token_is_marked() {
        let s = sample(&[1, 2, 3], &["the", " cat", "\tsat"]);
        let mark = Style::default().bg(ratatui::style::Color::Yellow);
        let t = styled(&s, Some(1), None, Style::default(), mark);
        let spans: Vec<(String, bool)> = t.lines[0]
            .spans
            .iter()
            .map(|s| (s.content.to_string(), s.style == mark))
            .collect();
        assert_eq!(
            spans,
            vec![
                ("the".into(), false),
                (" cat".into(), true),
                ("⇥sat".into(), false)
            ]
        );
    }

    #[test]
    fn line_breaks_are_kept_and_marked() {
        let s = sample(&[1, 2], &["a\nb", "c"]);
        let t = styled(&s, None, None, Style::default(), Style::default());
        assert_eq!(t.lines.len(), 2);
        assert_eq!(first_char_difference("abc", "abd"), Some(2));
    }
}
