//! `gaplab report` through the real binary: figures and report.md of tiny training runs (two
//! seeds of one experiment and another variant), PNG output, token strips from a recorded token
//! view, ΔQ(k) files, and the errors of bad input.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, gaplab, runs, stderr, stdout, tiny_workspace};
use gaplab::event::{
    Alternative, EvalReport, Event, PairTokens, PrefixCurve, RunState, StepMetrics, TokenTrack,
};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Trains the tiny workspace as three variants (seeds 1 and 2 of DPO, and DPO+POET), judged by
/// the tiny reward model at every eval, and returns their run directories (sorted by name:
/// dpo-poet, dpo-s1, dpo-s2).
fn trained(dir: &Path) -> Vec<PathBuf> {
    let rm = format!("{:?}", fixture("tiny-llama-rm"));
    let ws = tiny_workspace(dir, |t| {
        let t = t.replace(
            "[[variant]]\nname = \"dpo\"\n",
            "[[variant]]\nname = \"dpo-s1\"\nseed = 1\n\n[[variant]]\nname = \"dpo-s2\"\nseed = 2\n",
        );
        assert!(t.contains("dpo-s2"));
        format!("{t}\n[judge]\nreward_model = {rm}\nprompts = 2\nsamples = 0\nmax_new_tokens = 4\nprefix_lengths = [1, 2]\n")
    });
    let o = gaplab(&["train", ws.to_str().unwrap(), "--headless"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = runs(&ws.join("runs"));
    assert_eq!(r.len(), 3, "{r:?}");
    r
}

fn report(args: &[&str]) -> String {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let o = gaplab(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// The PNG's width and height (from its IHDR chunk), after checking its signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn seeds_are_one_line_next_to_another_variant() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = trained(tmp.path());
    let out = tmp.path().join("fig");
    let dir_args: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
    let mut args = dir_args.clone();
    args.extend(["--out", out.to_str().unwrap()]);
    let said = report(&args);
    assert!(said.contains(&format!("to {}", out.display())), "{said}");

    for (name, texts) in [
        ("loss.svg", vec!["step", "loss", "Loss"]),
        (
            "rewards.svg",
            vec![
                "rewards/chosen",
                "rewards/rejected",
                "rewards/margins",
                "rewards/accuracies",
            ],
        ),
        ("gap.svg", vec!["reward accuracy", "judge score", "step"]),
        (
            "prefix_heatmap.svg",
            vec!["eval step", "prefix length j", "prefix margin m(j)"],
        ),
    ] {
        let svg = read(&out.join(name));
        assert!(svg.starts_with("<svg"), "{name}");
        for t in texts.iter().chain(&["dpo (2 seeds)", "dpo-poet"]) {
            assert!(svg.contains(t), "{name} lacks {t:?}");
        }
        // The two seeds are one line, not two.
        assert!(!svg.contains(">dpo-s1<"), "{name}");
    }
    // A run either has its token strips or report.md says why not.
    let md = read(&out.join("report.md"));
    for v in ["dpo-poet", "dpo-s1", "dpo-s2"] {
        assert!(
            out.join(format!("tokens-{v}.svg")).is_file()
                || md.contains(&format!("{v} has no token view")),
            "{md}"
        );
    }

    // report.md: the runs, the fields that differ, and the metric table with mean ± std.
    for d in &dirs {
        assert!(md.contains(&format!("`{}`", d.display())), "{md}");
    }
    assert!(
        md.contains("| dpo-s1 | dpo-s1 | dpo (2 seeds) | 1 | 6 / 6 | 3 |"),
        "{md}"
    );
    assert!(
        md.contains("| dpo-poet | dpo-poet | dpo-poet | 3 | 6 / 6 | 3 |"),
        "{md}"
    );
    assert!(md.contains("| `train.seed` | 3 | 1 | 2 |"), "{md}");
    assert!(md.contains("| `train.poet` |"), "{md}");
    assert!(
        md.contains("| line | runs | step | eval_loss | eval_rewards/accuracies"),
        "{md}"
    );
    let group_row = md
        .lines()
        .find(|l| l.starts_with("| dpo (2 seeds) | 2 | 6 |"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(group_row.contains(" ± "), "{group_row}");
    assert!(md.contains("eval_judge/score"), "{md}");
    assert!(md.contains("![gap.svg](gap.svg)"), "{md}");

    // Ungrouped, each seed has its own line.
    let out2 = tmp.path().join("fig2");
    let mut args = dir_args.clone();
    args.extend(["--out", out2.to_str().unwrap(), "--no-group"]);
    report(&args);
    let svg = read(&out2.join("loss.svg"));
    assert!(svg.contains("dpo-s1") && svg.contains("dpo-s2") && !svg.contains("(2 seeds)"));

    // PNG: the same figures as images, drawn at twice the SVG's size.
    let out3 = tmp.path().join("png");
    report(&[
        dir_args[0],
        "--out",
        out3.to_str().unwrap(),
        "--format",
        "png",
    ]);
    let bytes = std::fs::read(out3.join("loss.png")).unwrap();
    assert_eq!(png_size(&bytes), (1640, 820));
    assert!(bytes.len() > 5_000, "{} bytes", bytes.len());
    assert!(read(&out3.join("report.md")).contains("![loss.png](loss.png)"));
}

fn track(pieces: &[&str], contributions: &[f64]) -> TokenTrack {
    TokenTrack {
        ids: (0..pieces.len() as u32).collect(),
        pieces: pieces.iter().map(|p| p.to_string()).collect(),
        logps: vec![-1.0; pieces.len()],
        ref_logps: vec![-1.2; pieces.len()],
        contributions: contributions.to_vec(),
        policy_top: vec![
            vec![Alternative {
                id: 0,
                piece: "x".into(),
                p: 0.5
            }];
            pieces.len()
        ],
        ref_top: vec![],
    }
}

/// A run directory written event by event, as the engine writes one: two steps and one eval
/// whose token view holds two pairs.
fn recorded_run(root: &Path) -> PathBuf {
    let ws = tiny_workspace(root, |t| t);
    let cfg = gaplab::config::Workspace::load(&ws)
        .unwrap()
        .run_config("dpo-poet")
        .unwrap();
    let rd = gaplab::runlog::RunDir::create(&ws.join("runs"), "dpo-poet").unwrap();
    rd.write_config(&cfg).unwrap();
    let mut w = gaplab::runlog::Writer::new(&rd, "dpo-poet", 4).unwrap();
    w.write(&Event::Started {
        variant: "dpo-poet".into(),
        run_dir: rd.path.clone(),
        start_step: 0,
        total_steps: 4,
        device: "cpu".into(),
        params: 1000,
        lora: None,
        config: Box::new(cfg.record()),
    })
    .unwrap();
    for step in 1..=4 {
        let metrics = [
            ("loss", 0.7 - 0.05 * step as f64),
            ("rewards/chosen", 0.01 * step as f64),
            ("rewards/rejected", -0.01 * step as f64),
            ("rewards/margins", 0.02 * step as f64),
            ("rewards/accuracies", 0.5),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        w.write(&Event::Step(StepMetrics {
            step,
            time: step as f64,
            metrics,
        }))
        .unwrap();
    }
    let pair = |i: usize, k: usize| PairTokens {
        pair: i,
        prompt: "Question: what is two plus two?\nAnswer:".into(),
        k,
        poet: true,
        first_diff: Some(1),
        prefix_margin: vec![0.0, 0.2, 0.35],
        chosen_len: 4,
        rejected_len: 5,
        chosen: track(
            &[" the", " answer", " is", " four."],
            &[0.0, 0.3, 0.1, -0.05],
        ),
        rejected: track(
            &[" the", " question", " is", " not", "\n"],
            &[0.0, -0.4, 0.02, -0.1, 0.01],
        ),
    };
    w.write(&Event::Eval(Box::new(EvalReport {
        step: 4,
        time: 4.0,
        metrics: [
            ("eval_loss".to_string(), 0.6),
            ("eval_rewards/accuracies".to_string(), 0.75),
        ]
        .into(),
        prefix: PrefixCurve {
            j: vec![1, 2, 4],
            margin: vec![0.0, 0.2, 0.35],
            accuracy: vec![0.5, 0.75, 1.0],
            pairs: vec![4, 4, 2],
        },
        token_diffs: vec![],
        entropy: vec![],
        cross_entropy: vec![],
        kl_profile: vec![],
        token_view: vec![pair(0, 4), pair(3, 3)],
    })))
    .unwrap();
    w.write(&Event::State {
        step: 4,
        state: RunState::Finished,
    })
    .unwrap();
    rd.path
}

#[test]
fn token_strips_and_delta_q_are_drawn_from_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let run = recorded_run(tmp.path());
    // ΔQ(k) as `gaplab analyze prefix-gap --json` writes it (NaN as null), passed as a file
    // and kept in the run directory.
    let gap = r#"{"reward_model":"rm","data":"pairs.jsonl","pairs":6,"rows":[{"k":1,"pairs":6,"delta":0.1,"stderr":0.05,"share_positive":0.5,"shorter":0,"chosen_mean":0.2,"rejected_mean":0.1},{"k":2,"pairs":6,"delta":0.3,"stderr":0.1,"share_positive":0.6,"shorter":1,"chosen_mean":0.4,"rejected_mean":0.1},{"k":4,"pairs":6,"delta":null,"stderr":null,"share_positive":0.0,"shorter":6,"chosen_mean":0.0,"rejected_mean":0.0}],"full":{"k":null,"pairs":6,"delta":0.5,"stderr":0.2,"share_positive":0.8,"shorter":0,"chosen_mean":1.0,"rejected_mean":0.5}}"#;
    let file = tmp.path().join("helpful.json");
    std::fs::write(&file, gap).unwrap();
    std::fs::write(run.join("prefix-gap.json"), gap).unwrap();
    let out = tmp.path().join("fig");
    report(&[
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--prefix-gap",
        file.to_str().unwrap(),
    ]);

    let svg = read(&out.join("tokens-dpo-poet.svg"));
    for t in [
        "Token contributions of dpo-poet at step 4",
        "pair #4 · k = 3 (POET cut)",
        "first difference at t2",
        "·answer",
        "·question",
        "↵",
        "chosen",
        "rejected",
        "prompt: Question: what is two plus two? Answer:",
    ] {
        assert!(svg.contains(t), "tokens lack {t:?}");
    }
    let dq = read(&out.join("delta_q.svg"));
    for t in [
        "k (response tokens, log scale)",
        "helpful (6 pairs",
        "prefix-gap (6 pairs",
    ] {
        assert!(dq.contains(t), "delta_q lacks {t:?}");
    }
    let md = read(&out.join("report.md"));
    assert!(
        md.contains("![tokens-dpo-poet.svg](tokens-dpo-poet.svg)"),
        "{md}"
    );
    assert!(
        md.contains("| helpful | pairs.jsonl | rm | 6 | 0.5000 ± 0.2000 |"),
        "{md}"
    );
    assert!(
        md.contains("| dpo-poet | 1 | 4 | 0.6000 | 0.7500 |"),
        "{md}"
    );
    // No judge in this run: the gap chart is not drawn, and report.md says so.
    assert!(!out.join("gap.svg").exists());
    assert!(md.contains("gap chart: no run has judge scores"), "{md}");

    // The same strips as a PNG.
    let png = tmp.path().join("png");
    report(&[
        run.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
        "--format",
        "png",
    ]);
    let bytes = std::fs::read(png.join("tokens-dpo-poet.png")).unwrap();
    let (w, h) = png_size(&bytes);
    assert_eq!(w, 2200);
    assert!(h > 300, "{h}");
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let o = gaplab(&["report", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a run directory"), "{}", stderr(&o));

    let o = gaplab(&["report", tmp.path().to_str().unwrap(), "--format", "jpg"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("expected svg or png"), "{}", stderr(&o));

    let run = recorded_run(tmp.path());
    let bad = tmp.path().join("gap.json");
    std::fs::write(&bad, "{\"rows\": 3}").unwrap();
    let o = gaplab(&[
        "report",
        run.to_str().unwrap(),
        "--prefix-gap",
        bad.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("gap.json: expected the JSON of `gaplab analyze prefix-gap --json`"),
        "{}",
        stderr(&o)
    );
}
