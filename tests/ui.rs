//! The dashboard drawn into a test backend from recorded events: buffer snapshots of every pane
//! and of the whole app at common terminal sizes, plus tiny and zero sizes.
//!
//! tests/fixtures/ui-events.jsonl holds the events of the two variants of the tiny workspace
//! (times normalised so the snapshots do not depend on the machine). Re-record it with
//! `cargo test --release --test ui -- --ignored record_events`.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use gaplab::event::{Event, Observer};
use gaplab::ui::keymap::Action;
use gaplab::ui::state::{App, HeatMetric, HeatmapMode, Mode, Pane, Role};
use gaplab::ui::theme::{ColorDepth, ThemeFile, BUILTIN};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn events() -> Vec<(usize, Event)> {
    std::fs::read_to_string(common::fixture("ui-events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["source"].as_u64().unwrap() as usize,
                serde_json::from_value(v["event"].clone()).unwrap(),
            )
        })
        .collect()
}

fn app() -> App {
    let theme = ThemeFile::parse(BUILTIN[0].1, "default")
        .unwrap()
        .resolve(ColorDepth::C16);
    let mut app = App::new(Role::Owner, theme);
    for (source, ev) in events() {
        app.on_event(source, &ev);
    }
    app
}

fn render(app: &mut App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| gaplab::ui::view::draw(f, app)).unwrap();
    let buf = term.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width)
            .map(|x| buf[(x, y)].symbol().to_string())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn whole_app_at_common_sizes() {
    let mut a = app();
    insta::assert_snapshot!("app_80x24", render(&mut a, 80, 24));
    insta::assert_snapshot!("app_120x40", render(&mut a, 120, 40));
}

#[test]
fn each_pane_expanded() {
    for pane in [
        Pane::Loss,
        Pane::Rewards,
        Pane::Heatmap,
        Pane::Samples,
        Pane::Log,
    ] {
        let mut a = app();
        a.focus = pane;
        a.expanded = true;
        insta::assert_snapshot!(format!("pane_{pane:?}_80x24"), render(&mut a, 80, 24));
    }
}

/// With a judge (the demo task), the rewards pane's lower chart becomes the gap chart: reward
/// accuracy (dots) against the judge's score of the policy's generations (lines), per run.
#[test]
fn gap_chart_with_a_judge() {
    let theme = ThemeFile::parse(BUILTIN[0].1, "default")
        .unwrap()
        .resolve(ColorDepth::C16);
    let mut a = App::new(Role::Owner, theme);
    for (source, mut ev) in events() {
        if let Event::Eval(r) = &mut ev {
            // A judge score that falls while reward accuracy rises: the gap.
            let score = 0.8 - 0.05 * r.step as f64 - 0.1 * source as f64;
            r.metrics.insert("eval_judge/score".into(), score);
        }
        a.on_event(source, &ev);
    }
    a.focus = Pane::Rewards;
    a.expanded = true;
    let screen = render(&mut a, 80, 24);
    assert!(
        screen.contains("lines: judge score · dots: reward accuracy"),
        "{screen}"
    );
    insta::assert_snapshot!("rewards_gap_80x24", screen);
}

#[test]
fn views_switched_by_keys() {
    let mut a = app();
    a.focus = Pane::Heatmap;
    a.expanded = true;
    a.on_action(Action::HeatmapMetric);
    assert_eq!(a.heatmap.metric, HeatMetric::Accuracy);
    insta::assert_snapshot!("heatmap_accuracy", render(&mut a, 80, 24));
    a.on_action(Action::HeatmapMode);
    assert_eq!(a.heatmap.mode, HeatmapMode::PerPair);
    insta::assert_snapshot!("heatmap_per_pair", render(&mut a, 80, 24));

    let mut a = app();
    a.focus = Pane::Samples;
    a.expanded = true;
    a.on_action(Action::SwapCompare); // the other variant instead of the reference
    a.on_action(Action::PrevSampleStep);
    insta::assert_snapshot!("samples_vs_variant_earlier", render(&mut a, 100, 20));

    let mut a = app();
    a.on_action(Action::LogScale);
    a.on_action(Action::Outliers);
    a.on_action(Action::SmoothLess);
    a.focus = Pane::Loss;
    a.expanded = true;
    insta::assert_snapshot!("loss_log_outliers", render(&mut a, 80, 24));
}

#[test]
fn overlays_help_and_quit_question() {
    let mut a = app();
    a.engine_done = false;
    a.on_action(Action::Help);
    insta::assert_snapshot!("help_120x40", render(&mut a, 120, 40));
    // Taller than 80x24: it scrolls, down to its last line and no further.
    let top = render(&mut a, 80, 24);
    assert!(
        top.contains("keys 1/") && top.contains("focus next pane"),
        "{top}"
    );
    for _ in 0..40 {
        a.on_action(Action::ScrollDown);
    }
    assert!(
        matches!(a.mode, Mode::Help { .. }),
        "scrolling keeps the help open"
    );
    let bottom = render(&mut a, 80, 24);
    insta::assert_snapshot!("help_80x24_scrolled", bottom.clone());
    assert!(
        bottom.contains("quit (asks first while training runs)"),
        "{bottom}"
    );
    assert!(!bottom.contains("focus next pane"), "{bottom}");
    for dialog_key in ["answer yes: stop training and quit", "close the help"] {
        assert!(bottom.contains(dialog_key), "{bottom}");
    }
    a.on_action(Action::Help);
    a.on_action(Action::Quit);
    assert_eq!(a.mode, Mode::QuitQuestion);
    insta::assert_snapshot!("confirm_80x24", render(&mut a, 80, 24));
}

/// The rows inside the help's border, trimmed at the end.
fn help_rows(screen: &str) -> Vec<String> {
    let lines: Vec<&str> = screen.lines().collect();
    let top = lines
        .iter()
        .position(|l| l.contains("┌ keys"))
        .expect("the help");
    let corner = |line: &str, s: &str| line[..line.find(s).unwrap()].chars().count();
    let left = corner(lines[top], "┌ keys");
    let right = left + corner(&lines[top][lines[top].find("┌ keys").unwrap()..], "┐");
    lines[top + 1..]
        .iter()
        .map(|l| l.chars().collect::<Vec<char>>())
        .take_while(|l| l.get(left) != Some(&'└'))
        .map(|l| {
            l[left + 1..right.min(l.len())]
                .iter()
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect()
}

/// Blank lines set the help's sections apart where they fit; where they do not, they go first,
/// before the help has to scroll.
#[test]
fn help_sections_are_spaced_where_they_fit() {
    let mut a = app();
    a.on_action(Action::Help);
    let tall = help_rows(&render(&mut a, 120, 90));
    // Just tall enough for the lines without blanks between the groups (and the border).
    let n = tall.iter().filter(|r| !r.is_empty()).count();
    let fitted = help_rows(&render(&mut a, 120, n as u16 + 2));
    assert!(tall.iter().any(|r| r.is_empty()), "{tall:#?}");
    assert!(fitted.iter().all(|r| !r.is_empty()), "{fitted:#?}");
    assert_eq!(
        tall.into_iter()
            .filter(|r| !r.is_empty())
            .collect::<Vec<_>>(),
        fitted,
        "the same lines"
    );
}

#[test]
fn tiny_and_zero_sizes_never_panic() {
    let mut a = app();
    insta::assert_snapshot!("too_small_40x10", render(&mut a, 40, 10));
    for (w, h) in [
        (0, 0),
        (1, 1),
        (0, 10),
        (10, 0),
        (50, 12),
        (200, 3),
        (3, 200),
    ] {
        render(&mut a, w, h);
    }
    // Every pane at the smallest size that shows panes.
    for pane in [
        Pane::Loss,
        Pane::Rewards,
        Pane::Heatmap,
        Pane::Samples,
        Pane::Log,
    ] {
        a.focus = pane;
        a.expanded = true;
        render(&mut a, 50, 12);
        a.expanded = false;
    }
    // An empty dashboard (nothing received yet).
    let theme = ThemeFile::parse(BUILTIN[0].1, "default")
        .unwrap()
        .resolve(ColorDepth::Mono);
    let mut empty = App::new(
        Role::Attached {
            controllable: false,
        },
        theme,
    );
    insta::assert_snapshot!("empty_80x24", render(&mut empty, 80, 24));
}

#[test]
fn every_theme_and_depth_draws() {
    let mut a = app();
    for (name, text) in BUILTIN {
        for depth in [
            ColorDepth::TrueColor,
            ColorDepth::C256,
            ColorDepth::C16,
            ColorDepth::Mono,
        ] {
            a.theme = ThemeFile::parse(text, name).unwrap().resolve(depth);
            a.charts.braille = depth != ColorDepth::Mono;
            render(&mut a, 120, 40);
        }
    }
}

/// Records the events of the tiny workspace's two variants into the fixture.
#[test]
#[ignore]
fn record_events() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = common::fixture("ws-tiny");
    let out = common::gaplab(&[
        "train",
        ws.to_str().unwrap(),
        "--headless",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mut runs: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.toml").exists())
        .collect();
    runs.sort();
    let mut lines = Vec::new();
    for (source, run) in runs.iter().enumerate() {
        for ev in gaplab::runlog::tail::replay(run).unwrap() {
            let mut v = serde_json::to_value(&ev).unwrap();
            normalise(&mut v, Path::new(run), source);
            lines.push(serde_json::json!({"source": source, "event": v}).to_string());
        }
    }
    std::fs::write(common::fixture("ui-events.jsonl"), lines.join("\n") + "\n").unwrap();
}

/// Machine-independent times, throughput and paths.
fn normalise(v: &mut serde_json::Value, run: &Path, source: usize) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(step) = m.get("step").and_then(|s| s.as_f64()) {
                if m.contains_key("time") {
                    m.insert("time".into(), (1000.0 * source as f64 + step).into());
                }
            }
            if let Some(t) = m.get_mut("tokens_per_s") {
                *t = 10000.0.into();
            }
            for (_, x) in m.iter_mut() {
                normalise(x, run, source);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| normalise(x, run, source)),
        serde_json::Value::String(s) => {
            let from = run.parent().unwrap().to_string_lossy().into_owned();
            if s.contains(&from) {
                *s = s.replace(&from, "/runs");
            }
            let ws = common::fixture("").to_string_lossy().into_owned();
            if s.contains(&ws) {
                *s = s.replace(&ws, "/fixtures/");
            }
        }
        _ => {}
    }
}

/// How long a frame takes to draw (printed; not asserted).
#[test]
#[ignore]
fn frame_cost() {
    let mut a = app();
    // Stretch the recorded run to 3000 steps of train metrics.
    for s in 7..3000 {
        a.on_event(
            0,
            &Event::Step(gaplab::event::StepMetrics {
                step: s,
                time: s as f64,
                metrics: [
                    ("loss".to_string(), 1.0 / s as f64),
                    ("rewards/margins".to_string(), (s as f64).sin()),
                    ("rewards/accuracies".to_string(), 0.5),
                ]
                .into_iter()
                .collect(),
            }),
        );
    }
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..50 {
        term.draw(|f| gaplab::ui::view::draw(f, &mut a)).unwrap();
    }
    eprintln!(
        "draw 120x40: {:.2} ms per frame",
        t.elapsed().as_secs_f64() * 1000.0 / 50.0
    );
}
