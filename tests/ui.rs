//! The dashboard drawn into a test backend from recorded events: buffer snapshots of every pane
//! and of the whole app at common terminal sizes, plus tiny and zero sizes.
//!
//! tests/fixtures/ui-events.jsonl holds the events of the two variants of the tiny workspace
//! (times normalised so the snapshots do not depend on the machine). Re-record it with
//! `cargo test --release --test ui -- --ignored record_events`.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use common::render_app as render;

use std::path::Path;

use gaplab::event::{EvalReport, Event, Observer};
use gaplab::ui::keymap::Action;
use gaplab::ui::state::{App, HeatMetric, HeatmapMode, Mode, Pane, Role};
use gaplab::ui::theme::{ColorDepth, Ramp, ThemeFile, BUILTIN};
use ratatui::backend::TestBackend;
use ratatui::style::Color;
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

/// The recorded events with the first run's evals replaced by `evals(first eval)`.
fn app_with_evals(evals: impl Fn(&EvalReport) -> Vec<EvalReport>) -> App {
    let theme = ThemeFile::parse(BUILTIN[0].1, "default")
        .unwrap()
        .resolve(ColorDepth::C16);
    let mut app = App::new(Role::Owner, theme);
    let mut replaced = false;
    for (source, ev) in events() {
        match &ev {
            Event::Eval(r) if source == 0 => {
                if !replaced {
                    for r in evals(r) {
                        app.on_event(source, &Event::Eval(Box::new(r)));
                    }
                    replaced = true;
                }
            }
            _ => app.on_event(source, &ev),
        }
    }
    app
}

/// The recorded events with every eval changed by `map`.
fn app_mapping(map: impl Fn(&mut EvalReport)) -> App {
    let theme = ThemeFile::parse(BUILTIN[0].1, "default")
        .unwrap()
        .resolve(ColorDepth::C16);
    let mut app = App::new(Role::Owner, theme);
    for (source, mut ev) in events() {
        if let Event::Eval(r) = &mut ev {
            map(r);
        }
        app.on_event(source, &ev);
    }
    app
}

fn press(app: &mut App, action: Action, times: usize) {
    for _ in 0..times {
        app.on_action(action);
    }
}

/// Every heatmap view (over training: margin, accuracy, KL; per pair) in the dashboard at
/// 80x24 and expanded at 120x40, with the cell cursor moved off its start and its readout.
#[test]
fn heatmap_views_with_the_cell_cursor() {
    // The recorded run measured no KL profile: one that grows along the response and over
    // training, dipping below zero early on.
    let mut a = app_mapping(|r| {
        r.kl_profile = (0..12)
            .map(|t| 0.002 * (t as f64 + 1.0) * r.step as f64 - 0.004)
            .collect();
    });
    a.focus = Pane::Heatmap;
    for (name, metric_presses, mode) in [
        ("margin", 0, HeatmapMode::OverTraining),
        ("accuracy", 1, HeatmapMode::OverTraining),
        ("kl", 1, HeatmapMode::OverTraining),
        ("per_pair", 1, HeatmapMode::PerPair),
    ] {
        press(&mut a, Action::HeatmapMetric, metric_presses);
        if a.heatmap.mode != mode {
            a.on_action(Action::HeatmapMode);
        }
        press(&mut a, Action::CellLeft, 1);
        press(&mut a, Action::CellDown, 2);
        press(&mut a, Action::CellRight, 3);
        a.expanded = false;
        let small = render(&mut a, 80, 24);
        a.expanded = true;
        let big = render(&mut a, 120, 40);
        for screen in [&small, &big] {
            assert!(screen.contains('◆'), "{name}: the cursor\n{screen}");
        }
        insta::assert_snapshot!(format!("heatmap_{name}_80x24"), small);
        insta::assert_snapshot!(format!("heatmap_{name}_120x40"), big);
    }
    // The over-training readout names the step, j, the value and the pairs counted.
    let mut a = app();
    a.focus = Pane::Heatmap;
    a.on_action(Action::CellDown);
    let screen = render(&mut a, 120, 40);
    let run = a.selected_run().unwrap();
    let (&step, d) = run.diagnostics.iter().next_back().unwrap();
    let pairs = d.prefix.pairs[1];
    let want = format!("step {step} · j{} · margin", d.prefix.j[1]);
    assert!(screen.contains(&want), "{want}\n{screen}");
    assert!(screen.contains(&format!(" · {pairs} pairs")), "{screen}");
}

/// Per pair, a row longer than the pane scrolls with the cursor, and the axis says which
/// positions are on screen.
#[test]
fn the_per_pair_view_scrolls_with_the_cursor() {
    let mut a = app_with_evals(|r| {
        let mut r = r.clone();
        for (i, row) in r.token_diffs.iter_mut().enumerate() {
            row.values = (0..100).map(|t| ((t + i) as f64 / 7.0).sin()).collect();
        }
        vec![r]
    });
    a.focus = Pane::Heatmap;
    a.expanded = true;
    a.on_action(Action::HeatmapMode);
    let first = render(&mut a, 80, 24);
    assert!(
        first.contains("t1 ") && first.contains("t75 of 100"),
        "{first}"
    );
    press(&mut a, Action::CellRight, 90);
    let moved = render(&mut a, 80, 24);
    assert!(moved.contains("t91 · Δreward"), "{moved}");
    assert!(
        moved.contains("t17 ") && moved.contains("t91 of 100"),
        "the cursor's column is the last shown\n{moved}"
    );
    insta::assert_snapshot!("heatmap_per_pair_scrolled_80x24", moved);
    press(&mut a, Action::CellLeft, 5);
    let back = render(&mut a, 80, 24);
    assert!(
        back.contains("t91 of 100"),
        "moving inside the window keeps it\n{back}"
    );
    press(&mut a, Action::CellRight, 500);
    let end = render(&mut a, 80, 24);
    assert!(
        end.contains("t100 of 100") && end.contains("t100 · Δreward"),
        "{end}"
    );
}

/// The cells of the row labelled `label` in the expanded heatmap (80x24), one per value of a
/// grid `n` values wide: (symbol, fg, bg) of each value's first cell (the cursor sits in
/// the middle of wide cells).
fn row_cells(app: &mut App, label: &str, n: usize) -> Vec<(String, Color, Color)> {
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    term.draw(|f| gaplab::ui::view::draw(f, app)).unwrap();
    let buf = term.backend().buffer().clone();
    let symbol = |x: u16, y: u16| buf[(x, y)].symbol().to_string();
    let (y, x) = (0..24u16)
        .flat_map(|y| (0..78u16).map(move |x| (y, x)))
        .find(|&(y, x)| symbol(x, y) + &symbol(x + 1, y) == label)
        .unwrap();
    // Labels are padded to the widest plus one; the pane's right border ends the row.
    let x0 = x + label.chars().count() as u16 + 1;
    let width = 79 - x0;
    let per = width / n as u16;
    (0..n as u16)
        .map(|k| {
            let c = &buf[(x0 + k * per, y)];
            (c.symbol().to_string(), c.fg, c.bg)
        })
        .collect()
}

/// At 16 colours, distinct values spread over the range get distinct cells, in the theme's
/// order of levels: diverging (the per-token reward difference) and sequential (accuracy).
#[test]
fn sixteen_colours_tell_values_apart() {
    let levels = 17;
    let spread = |k: usize| k as f64 / (levels - 1) as f64;
    // Diverging: one pair whose differences run from -1 to 1.
    let mut a = app_with_evals(|r| {
        let mut r = r.clone();
        r.token_diffs.truncate(1);
        r.token_diffs[0].values = (0..levels).map(|k| 2.0 * spread(k) - 1.0).collect();
        vec![r]
    });
    a.focus = Pane::Heatmap;
    a.expanded = true;
    a.on_action(Action::HeatmapMode);
    let cells = row_cells(&mut a, "#1", levels);
    check_distinct_and_ordered(&a, Ramp::Diverging, &cells);
    // Sequential: prefix accuracy at j1 from 0 to 1 over 17 evals.
    let mut a = app_with_evals(|r| {
        (0..levels)
            .map(|k| {
                let mut r = r.clone();
                r.step = k;
                r.prefix.j = vec![1];
                r.prefix.accuracy = vec![spread(k)];
                r.prefix.margin = vec![spread(k)];
                r.prefix.pairs = vec![4];
                r
            })
            .collect()
    });
    a.focus = Pane::Heatmap;
    a.expanded = true;
    a.on_action(Action::HeatmapMetric);
    let cells = row_cells(&mut a, "j1", levels);
    check_distinct_and_ordered(&a, Ramp::Sequential, &cells);
}

fn check_distinct_and_ordered(a: &App, ramp: Ramp, cells: &[(String, Color, Color)]) {
    for (i, x) in cells.iter().enumerate() {
        for y in &cells[i + 1..] {
            assert_ne!(x, y, "{ramp:?}: {cells:?}");
        }
    }
    // Each cell is the theme's level for its value, levels in order.
    let theme_levels: Vec<(String, Color, Color)> = a
        .theme
        .heat_cells(ramp)
        .iter()
        .map(|(symbol, style)| {
            (
                symbol.to_string(),
                style.fg.unwrap_or(Color::Reset),
                style.bg.unwrap_or(Color::Reset),
            )
        })
        .collect();
    let order: Vec<usize> = cells
        .iter()
        .map(|c| theme_levels.iter().position(|l| l == c).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{ramp:?}: {order:?}");
    assert!(cells.len() >= 9);
}

/// The legend under the heatmap: the ramp with symmetric ticks around 0 for margins, and
/// 0 / 0.5 / 1 for accuracy.
#[test]
fn the_legend_has_ticks() {
    let mut a = app();
    a.focus = Pane::Heatmap;
    a.expanded = true;
    let screen = render(&mut a, 80, 24);
    let run = a.selected_run().unwrap();
    let max = run
        .diagnostics
        .values()
        .flat_map(|d| d.prefix.margin.iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let max = gaplab::ui::math::sig3(max);
    let max = if max.contains('.') {
        max.trim_end_matches('0').trim_end_matches('.')
    } else {
        &max
    };
    let legend = screen
        .lines()
        .find(|l| l.contains(&format!("-{max} ")) && l.contains(&format!(" {max}")))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(legend.contains(" 0 "), "{legend}");
    assert!(legend.contains('░') && legend.contains('█'), "{legend}");
    a.on_action(Action::HeatmapMetric);
    let screen = render(&mut a, 80, 24);
    assert!(
        screen
            .lines()
            .any(|l| l.contains("┃0 ") && l.contains(" 0.5 ") && l.contains(" 1 ")),
        "{screen}"
    );
}

/// A long status (a config reload message) at 80 columns: the throughput figures go first,
/// then the message is cut with an ellipsis; the help hint stays.
#[test]
fn the_status_bar_fits_80_columns() {
    let mut a = app();
    a.status.reload = Some((true, "config applied: train.beta 0.1 -> 0.2".into()));
    let screen = render(&mut a, 80, 24);
    let status = screen.lines().nth(23).unwrap();
    assert!(status.ends_with("? help"), "{status}");
    assert!(
        status.contains("train.beta") && !status.contains("tok/s"),
        "{status}"
    );
    a.status.reload = Some((true, "x".repeat(200)));
    let status = render(&mut a, 80, 24).lines().nth(23).unwrap().to_string();
    assert!(status.ends_with("x… ? help"), "{status}");
    assert_eq!(
        status.chars().count(),
        79,
        "80 columns less the trailing blank"
    );
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
