//! Generation health metrics and alerts through the real binary: a tiny run records the
//! `eval_gen/*` metrics and the KL profile, and thresholds set tight make alerts fire, written
//! to events.jsonl and printed headless.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{jsonl, runs, stderr, tiny_workspace};

#[test]
fn health_metrics_are_recorded_and_tight_thresholds_raise_alerts() {
    let tmp = tempfile::tempdir().unwrap();
    // The tiny policy moves away from its reference within three steps (KL about 0.03 nats
    // per token) and steps 2 and 4 are made non-finite: both must be told.
    let ws = tiny_workspace(tmp.path(), |t| {
        t + "\n[judge]\nprompts = 4\nsamples = 2\nmax_new_tokens = 8\n\
             \n[alerts]\nkl_max = 0.005\nskipped_steps = 2\nskipped_window = 10\n"
    });
    let out = Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .args(["train", "--headless", "--no-watch", "--variant", "dpo"])
        .arg(&ws)
        .env("GAPLAB_FAULT_NAN_STEPS", "2,4")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let run = runs(&ws.join("runs")).pop().unwrap();
    let events = jsonl(&run.join("events.jsonl"));
    let evals: Vec<_> = events.iter().filter(|e| e["event"] == "eval").collect();
    assert_eq!(evals.len(), 3);
    for e in &evals {
        let m = &e["metrics"];
        for name in [
            "eval_gen/length",
            "eval_gen/length_std",
            "eval_gen/stop_share",
            "eval_gen/distinct_1",
            "eval_gen/distinct_2",
            "eval_gen/repetition",
            "eval_gen/length_sampled",
            "eval_gen/repetition_sampled",
            "eval_gen/kl",
        ] {
            assert!(m[name].is_number(), "{name} missing in {m}");
        }
        assert!(m["eval_gen/length"].as_f64().unwrap() <= 8.0);
        let profile = e["kl_profile"].as_array().unwrap();
        assert!(!profile.is_empty() && profile.len() <= 8, "{profile:?}");
    }
    // The policy is its reference at step 0.
    assert_eq!(evals[0]["metrics"]["eval_gen/kl"].as_f64().unwrap(), 0.0);
    let alerts: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e["event"] == "alert")
        .map(|e| {
            assert!(!e["detail"].as_str().unwrap().is_empty());
            (
                e["kind"].as_str().unwrap().to_string(),
                e["step"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        alerts.contains(&("skipped_steps".into(), 4)),
        "{alerts:?}\n{err}"
    );
    let kl: Vec<_> = alerts.iter().filter(|a| a.0 == "kl_blowup").collect();
    // Once: it holds at both later evals, and is said when it starts to.
    assert_eq!(kl.len(), 1, "{alerts:?}");
    assert!(err.contains("dpo: alert kl_blowup: eval_gen/kl"), "{err}");
    assert!(
        err.contains("dpo: alert skipped_steps: 2 steps skipped"),
        "{err}"
    );
    assert!(
        err.contains("gen length") && err.contains("kl 0.000"),
        "{err}"
    );
    // log.txt says them too.
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("alert kl_blowup"), "{log}");
}

#[test]
fn without_health_or_judge_an_eval_generates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace("[eval]\n", "[eval]\nhealth = false\n")
    });
    let out = Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .args(["train", "--headless", "--no-watch", "--variant", "dpo"])
        .arg(&ws)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let run = runs(&ws.join("runs")).pop().unwrap();
    for e in jsonl(&run.join("events.jsonl")) {
        if e["event"] == "eval" {
            let m = e["metrics"].as_object().unwrap();
            assert!(!m.keys().any(|k| k.starts_with("eval_gen/")), "{m:?}");
            assert!(e.get("kl_profile").is_none(), "{e}");
        }
    }
}

#[test]
fn a_resumed_run_does_not_repeat_an_alert_still_in_force() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t + "\n[alerts]\nkl_max = 0.005\n");
    let train = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gaplab"))
            .args(["train", "--headless", "--no-watch"])
            .args(extra)
            .arg(&ws)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    train(&["--variant", "dpo"]);
    let run = runs(&ws.join("runs")).pop().unwrap();
    let alerts = |run: &std::path::Path| {
        jsonl(&run.join("events.jsonl"))
            .into_iter()
            .filter(|e| e["event"] == "alert")
            .count()
    };
    assert_eq!(alerts(&run), 1);
    // Three more steps: the KL stays above kl_max at the new eval.
    let toml = ws.join("gaplab.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("steps = 6", "steps = 9")).unwrap();
    let err = train(&["--resume", run.to_str().unwrap()]);
    assert!(err.contains("eval @ 9") && err.contains("kl 0.0"), "{err}");
    assert!(!err.contains("alert"), "{err}");
    assert_eq!(alerts(&run), 1);
}
