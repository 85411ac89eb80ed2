//! The demo workspace: its committed data is what `gaplab demo-data` writes, and the demo
//! config trains end to end through the real binary (SFT, then DPO, DPO+POET, SimPO and
//! SimPO+POET), with the judge's scores in every evaluation.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{gaplab, stderr};
use serde_json::Value;

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workspaces/demo")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn committed_data_is_what_the_generator_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data");
    let o = gaplab(&["demo-data", out.to_str().unwrap(), "--seed", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let committed = demo().join("data");
    let (a, b) = (files(&committed), files(&out));
    let rel = |v: &[PathBuf], root: &Path| -> Vec<PathBuf> {
        v.iter()
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect()
    };
    assert_eq!(rel(&a, &committed), rel(&b, &out));
    for (x, y) in a.iter().zip(&b) {
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{} differs from a fresh `gaplab demo-data --seed 0`",
            x.display()
        );
    }
}

#[test]
fn the_demo_config_trains_every_variant_with_the_judge() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("demo");
    std::fs::create_dir_all(&ws).unwrap();
    // The real demo config on the committed data, shortened to a few steps.
    let text = std::fs::read_to_string(demo().join("gaplab.toml"))
        .unwrap()
        .replace("\"data/", &format!("\"{}/", demo().join("data").display()))
        .replace("[sft]\nsteps = 600", "[sft]\nsteps = 30")
        .replace("steps = 300", "steps = 4")
        .replace("interval = 25", "interval = 2")
        .replace("prompts = 64", "prompts = 6");
    assert!(text.contains("steps = 4") && text.contains("steps = 30"));
    std::fs::write(ws.join("gaplab.toml"), text).unwrap();
    let o = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = gaplab(&["train", ws.to_str().unwrap(), "--headless"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let mut variants = Vec::new();
    for e in std::fs::read_dir(ws.join("runs")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("sft-") || name.starts_with("init-") || name.starts_with('.') {
            continue;
        }
        let status: Value =
            serde_json::from_str(&std::fs::read_to_string(e.path().join("status.json")).unwrap())
                .unwrap();
        assert_eq!(status["state"], "finished", "{name}");
        let evals: Vec<Value> = std::fs::read_to_string(e.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["split"] == "eval")
            .collect();
        assert_eq!(evals.len(), 3, "{name}: evals at steps 0, 2 and 4");
        for r in &evals {
            for key in [
                "eval_judge/score",
                "eval_judge/correct",
                "eval_judge/length",
                "eval_judge/tail",
                "eval_judge/overrun",
                "eval_judge/score_sampled",
            ] {
                let v = r[key].as_f64().unwrap_or(f64::NAN);
                assert!(v.is_finite() && v >= 0.0, "{name}: {key} = {}", r[key]);
            }
            let score = r["eval_judge/score"].as_f64().unwrap();
            assert!(score <= 1.0, "{name}: score {score}");
        }
        variants.push(name.rsplitn(3, '-').last().unwrap().to_string());
    }
    variants.sort();
    assert_eq!(variants, ["dpo", "dpo-poet", "simpo", "simpo-poet"]);
}
