//! The token view: its records checked against transformers' per-token log-probs
//! (tests/fixtures/pairs_expected.json, written by make_fixtures.py), recorded by a real run and
//! read back from its run directory, and drawn (snapshots of a pair, the cursor moved, the
//! alternatives, POET's cut, sanitised tokens, a sample) at 80x24 and 120x40.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use common::render_app as render;

use candle_core::{DType, Device};
use gaplab::data::TokenizedPair;
use gaplab::event::{
    Alternative, EvalReport, Event, Observer, PairTokens, RunState, Sample, TokenTrack,
};
use gaplab::model::io;
use gaplab::objective::{Loss, Objective};
use gaplab::train::token_view;
use gaplab::ui::keymap::Action;
use gaplab::ui::state::{App, Pane, Role};
use gaplab::ui::theme::{ColorDepth, ThemeFile, BUILTIN};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn expected() -> serde_json::Value {
    common::read_json(&common::fixture("pairs_expected.json"))
}

/// Log-probs, contributions and prefix margins of the recorded pairs are transformers' numbers;
/// the alternatives are the distribution's top tokens (the actual token's probability where it
/// is among them, and no less likely than it where it is not).
#[test]
fn records_match_transformers() {
    let exp = expected();
    let dev = Device::Cpu;
    let (policy, tok) = io::load_dir(&common::fixture("tiny-llama"), &dev, DType::F32).unwrap();
    let (reference, _) =
        io::load_dir(&common::fixture("tiny-llama-ref"), &dev, DType::F32).unwrap();
    let pairs: Vec<TokenizedPair> = exp["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| TokenizedPair {
            prompt: common::u32s(&p["prompt_ids"]),
            chosen: common::u32s(&p["chosen_ids"]),
            rejected: common::u32s(&p["rejected_ids"]),
        })
        .collect();
    let prompts: Vec<String> = exp["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["prompt"].as_str().unwrap().to_string())
        .collect();
    let beta = 0.1;
    for poet in [false, true] {
        let obj = Objective::single(Loss::Sigmoid, beta, poet);
        let max_tokens = 16;
        let rec = token_view::record(
            &obj,
            &tok,
            &dev,
            &policy,
            Some(&reference),
            None,
            &pairs,
            &prompts,
            max_tokens,
        )
        .unwrap();
        assert_eq!(rec.len(), pairs.len());
        for (i, (r, p)) in rec.iter().zip(exp["pairs"].as_array().unwrap()).enumerate() {
            let (pc, pr) = (
                common::f64s(&p["policy_chosen"]),
                common::f64s(&p["policy_rejected"]),
            );
            let (rc, rr) = (
                common::f64s(&p["ref_chosen"]),
                common::f64s(&p["ref_rejected"]),
            );
            let k = pc.len().min(pr.len());
            assert_eq!((r.pair, r.k, r.poet), (i, k, poet));
            assert_eq!(r.chosen_len, pc.len());
            assert_eq!(r.chosen.ids.len(), pc.len().min(max_tokens));
            assert_eq!(r.prompt, prompts[i]);
            for (track, want, want_ref) in [(&r.chosen, &pc, &rc), (&r.rejected, &pr, &rr)] {
                for t in 0..track.ids.len() {
                    assert!((track.logps[t] - want[t]).abs() < 2e-4, "pair {i} t{t}");
                    assert!((track.ref_logps[t] - want_ref[t]).abs() < 2e-4);
                    let share = beta * (want[t] - want_ref[t]);
                    assert!((track.contributions[t] - share).abs() < 1e-4);
                    let top = &track.policy_top[t];
                    assert_eq!(top.len(), token_view::TOP_K);
                    assert!(top.windows(2).all(|w| w[0].p >= w[1].p));
                    let actual = want[t].exp();
                    match top.iter().find(|a| a.id == track.ids[t]) {
                        Some(a) => assert!((a.p - actual).abs() < 1e-4),
                        None => assert!(top.iter().all(|a| a.p >= actual - 1e-6)),
                    }
                    assert_eq!(track.ref_top[t].len(), token_view::TOP_K);
                    if let Some(a) = track.ref_top[t].iter().find(|a| a.id == track.ids[t]) {
                        assert!((a.p - want_ref[t].exp()).abs() < 1e-4);
                    }
                }
            }
            for (j, m) in r.prefix_margin.iter().enumerate() {
                let sum = |v: &[f64]| v[..=j].iter().sum::<f64>();
                let want = beta * ((sum(&pc) - sum(&rc)) - (sum(&pr) - sum(&rr)));
                assert!((m - want).abs() < 1e-3, "pair {i} m({})", j + 1);
            }
            let (ci, ri) = (
                common::u32s(&p["chosen_ids"]),
                common::u32s(&p["rejected_ids"]),
            );
            let first = match ci.iter().zip(&ri).position(|(a, b)| a != b) {
                Some(t) => Some(t),
                None => (ci.len() != ri.len()).then_some(k),
            };
            assert_eq!(r.first_diff, first);
            // Pieces concatenate to the response's text.
            let text = tok.decode(&r.chosen.ids).unwrap();
            assert_eq!(r.chosen.pieces.concat().trim_end_matches("</s>"), text);
        }
    }
}

/// A real run records the token view at each eval and its run directory gives it back (what
/// an attached dashboard reads), with the policy samples' log-probs.
#[test]
fn a_run_records_the_token_view_and_its_run_directory_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = common::tiny_workspace(tmp.path(), |t| {
        t.replace("steps = 6", "steps = 2").replace(
            "interval = 3\npairs = 4",
            "interval = 3\npairs = 4\ntoken_view_pairs = 2\ntoken_view_tokens = 5",
        )
    });
    let out = common::gaplab(&[
        "train",
        ws.to_str().unwrap(),
        "--variant",
        "dpo-poet",
        "--headless",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let run = common::runs(&ws.join("runs")).pop().unwrap();
    let events = gaplab::runlog::tail::replay(&run).unwrap();
    let evals: Vec<&EvalReport> = events
        .iter()
        .filter_map(|e| match e {
            Event::Eval(r) => Some(r.as_ref()),
            _ => None,
        })
        .collect();
    assert!(evals.len() >= 2, "an eval at the start and at the end");
    for r in &evals {
        assert_eq!(r.token_view.len(), 2);
        let p = &r.token_view[0];
        assert!(p.poet && p.chosen.ids.len() <= 5 && p.chosen_len >= p.chosen.ids.len());
        assert_eq!(p.chosen.policy_top.len(), p.chosen.ids.len());
        assert_eq!(p.chosen.ref_top.len(), p.chosen.ids.len());
        // The heatmap's row of the same pair is the difference of the log-ratios, which the
        // contributions scale by beta (0.1 in the tiny workspace).
        let row = &r.token_diffs[0].values;
        let k = p.chosen.ids.len().min(p.rejected.ids.len());
        for (t, want) in row.iter().enumerate().take(k) {
            let d = (p.chosen.contributions[t] - p.rejected.contributions[t]) / 0.1;
            assert!((d - want).abs() < 1e-4, "{d} vs {want}");
        }
    }
    let policy_samples: Vec<&Sample> = events
        .iter()
        .filter_map(|e| match e {
            Event::Samples { samples, .. } => Some(samples),
            _ => None,
        })
        .flatten()
        .filter(|s| s.source == "policy")
        .collect();
    assert!(!policy_samples.is_empty());
    for s in policy_samples {
        assert_eq!(s.logps.len(), s.token_ids.len());
        assert_eq!(s.ref_logps.len(), s.token_ids.len());
    }
}

fn alt(id: u32, piece: &str, p: f64) -> Alternative {
    Alternative {
        id,
        piece: piece.into(),
        p,
    }
}

fn track(pieces: &[&str], contributions: &[f64]) -> TokenTrack {
    let n = pieces.len();
    TokenTrack {
        ids: (0..n as u32).map(|i| 100 + i).collect(),
        pieces: pieces.iter().map(|s| s.to_string()).collect(),
        logps: (0..n).map(|i| -0.5 - 0.25 * i as f64).collect(),
        ref_logps: (0..n).map(|i| -0.75 - 0.1 * i as f64).collect(),
        contributions: contributions.to_vec(),
        policy_top: (0..n)
            .map(|_| {
                vec![
                    alt(7, " Paris", 0.61),
                    alt(8, " the", 0.2),
                    alt(9, "\n", 0.1),
                    alt(10, ",", 0.05),
                    alt(1, "</s>", 0.01),
                ]
            })
            .collect(),
        ref_top: (0..n)
            .map(|_| vec![alt(8, " the", 0.4), alt(7, " Paris", 0.3)])
            .collect(),
    }
}

/// A run with one eval of two token-view pairs and one policy sample with log-probs.
fn app(depth: ColorDepth) -> App {
    let theme = ThemeFile::parse(BUILTIN[0].1, "default")
        .unwrap()
        .resolve(depth);
    let mut app = App::new(Role::Owner, theme);
    let started = Event::Started {
        variant: "dpo-poet".into(),
        run_dir: "runs/dpo-poet".into(),
        start_step: 0,
        total_steps: 10,
        device: "cpu".into(),
        params: 1000,
        lora: None,
        config: Box::new(serde_json::json!({})),
    };
    let pair = |i: usize| PairTokens {
        pair: i,
        prompt: format!("Question {i}: what is the capital of france?\nAnswer:"),
        k: 5,
        poet: true,
        first_diff: Some(1),
        prefix_margin: vec![0.0, 0.12, 0.1, 0.31, 0.25],
        chosen_len: 8,
        rejected_len: 5,
        chosen: track(
            &[
                " The",
                " capital",
                " is",
                " Paris",
                ".",
                "\u{1b}[2J",
                "\n",
                "</s>",
            ],
            &[0.01, 0.09, -0.02, 0.2, -0.04, 0.3, -0.3, 0.0],
        ),
        rejected: track(
            &[" The", " answer", " is", " no", "</s>"],
            &[0.01, -0.03, 0.0, -0.01, 0.02],
        ),
    };
    let eval = EvalReport {
        step: 4,
        time: 1.0,
        metrics: Default::default(),
        prefix: Default::default(),
        token_diffs: vec![],
        entropy: vec![],
        cross_entropy: vec![],
        kl_profile: vec![],
        token_view: vec![pair(0), pair(1)],
    };
    let sample = Sample {
        step: 4,
        prompt_id: 0,
        prompt: "Question: what is the capital of france?\nAnswer:".into(),
        source: "policy".into(),
        text: " Paris is the capital.".into(),
        token_ids: vec![7, 20, 8, 21, 22],
        pieces: vec![" Paris", " is", " the", " capital", "."]
            .into_iter()
            .map(String::from)
            .collect(),
        logps: vec![-0.2, -1.0, -0.4, -2.0, -0.1],
        ref_logps: vec![-1.2, -0.9, -0.5, -0.7, -0.1],
    };
    for ev in [
        started,
        Event::Eval(Box::new(eval)),
        Event::Samples {
            step: 4,
            samples: vec![sample],
        },
        Event::State {
            step: 4,
            state: RunState::Running,
        },
    ] {
        app.on_event(0, &ev);
    }
    app
}

#[test]
fn a_pair_token_by_token() {
    for (w, h) in [(80, 24), (120, 40)] {
        let mut a = app(ColorDepth::C16);
        a.on_action(Action::TokenView);
        assert!(a.tokens.open && a.expanded && a.focus == Pane::Heatmap);
        let screen = render(&mut a, w, h);
        // The tokens with their leading-space marker, the escape sequence made visible, the
        // POET cut, the detail of the first token and both models' alternatives.
        for want in [
            "Tokens: pair #1 · step 4 · k=5 (POET)",
            "▶ chosen",
            "·The·capital·is·Paris.┃␛[2J↵</s>",
            "·The·answer·is·no</s>",
            "t1 \"·The\" id 100",
            "prefix margin m(t) +0.0000",
            "·Paris 61%",
            "·the 40%",
        ] {
            assert!(screen.contains(want), "{want:?} missing:\n{screen}");
        }
        insta::assert_snapshot!(format!("tokens_pair_{w}x{h}"), screen);
    }
}

#[test]
fn the_cursor_moves_and_switches_response_and_pair() {
    let mut a = app(ColorDepth::C16);
    a.on_action(Action::TokenView);
    for _ in 0..3 {
        a.on_action(Action::TokenNext);
    }
    let screen = render(&mut a, 80, 24);
    assert!(screen.contains("t4 \"·Paris\" id 103"), "{screen}");
    assert!(screen.contains("prefix margin m(t) +0.3100"), "{screen}");
    insta::assert_snapshot!("tokens_cursor_moved_80x24", screen);
    // Past the end it stops at the last token; beyond k the margin is not defined.
    for _ in 0..20 {
        a.on_action(Action::TokenNext);
    }
    let screen = render(&mut a, 80, 24);
    assert!(
        screen.contains("t8 \"</s>\"") && screen.contains("beyond k=5"),
        "{screen}"
    );
    a.on_action(Action::OtherResponse);
    let screen = render(&mut a, 80, 24);
    assert!(
        screen.contains("▶ rejected") && screen.contains("t5 \"</s>\""),
        "{screen}"
    );
    a.on_action(Action::NextPair);
    let screen = render(&mut a, 80, 24);
    assert!(
        screen.contains("Tokens: pair #2") && screen.contains("t1 \""),
        "{screen}"
    );
    a.on_action(Action::NextPair);
    assert!(render(&mut a, 80, 24).contains("Tokens: pair #1"));
    a.on_action(Action::Close);
    assert!(!a.tokens.open && !a.expanded);
}

#[test]
fn a_sample_token_by_token() {
    let mut a = app(ColorDepth::C256);
    a.focus = Pane::Samples;
    a.on_action(Action::TokenView);
    a.on_action(Action::TokenNext);
    let screen = render(&mut a, 80, 24);
    for want in [
        "Tokens: sample, prompt 1 · step 4",
        "·Paris·is·the·capital.",
        "t2 \"·is\" id 20 · logπ -1.0000 · logπref -0.9000 · diff -0.1000",
        "sum of logπ − logπref up to here +0.9000",
    ] {
        assert!(screen.contains(want), "{want:?} missing:\n{screen}");
    }
    insta::assert_snapshot!("tokens_sample_80x24", screen);
}

/// Each token's background follows its contribution: opposite signs get different colours,
/// and the legend shows the scale's ends.
#[test]
fn contributions_colour_the_tokens() {
    let mut a = app(ColorDepth::TrueColor);
    a.on_action(Action::TokenView);
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    term.draw(|f| gaplab::ui::view::draw(f, &mut a)).unwrap();
    let buf = term.backend().buffer().clone();
    let find = |text: &str| {
        (0..buf.area.height).find_map(|y| {
            let line: String = (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect();
            line.find(text)
                .map(|i| (line[..i].chars().count() as u16, y))
        })
    };
    let (x_esc, y) = find("␛[2J").unwrap();
    let (x_nl, _) = find("↵").unwrap();
    let (pos, neg) = (buf[(x_esc, y)].bg, buf[(x_nl, y)].bg);
    assert_ne!(pos, neg, "+0.3 and -0.3 share a colour");
    let screen = render(&mut a, 80, 24);
    assert!(
        screen.contains("-0.3") && screen.contains("+0.3"),
        "{screen}"
    );
}
