//! The real binary: `gaplab eval` against an independent Python oracle, `gaplab sample`, and
//! clear one-line errors (exit code 2) for bad input.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{f64s, fixture, gaplab, read_json, stderr, stdout, u32s};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn eval_json_matches_python_oracle() {
    let expected = read_json(&fixture("pairs_expected.json"));
    let model = fixture("tiny-llama");
    let reference = fixture("tiny-llama-ref");
    let data = fixture("pairs.jsonl");
    for setting in expected["settings"].as_array().unwrap() {
        let objective = setting["objective"].as_str().unwrap();
        let beta = setting["beta"].as_f64().unwrap().to_string();
        let mut args = vec![
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--ref",
            reference.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--objective",
            objective,
            "--beta",
            &beta,
            "--json",
            "--batch-size",
            "4",
        ];
        let gamma = setting["gamma"].as_f64().map(|g| g.to_string());
        if let Some(g) = &gamma {
            args.extend(["--gamma", g]);
        }
        let poet = setting["poet"].as_bool().unwrap();
        if poet {
            args.push("--poet");
        }
        let out = gaplab(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let got: serde_json::Value =
            serde_json::from_str(&stdout(&out)).expect("one JSON document");
        let what = format!("{objective} poet={poet}");
        // `dpo` is read as TRL's `sigmoid`, and reported by that name.
        let name = if objective == "dpo" {
            "sigmoid"
        } else {
            objective
        };
        assert_eq!(got["objective"], name, "{what}");
        assert_eq!(got["poet"], poet, "{what}");
        assert!(
            close(
                got["loss"].as_f64().unwrap(),
                setting["loss"].as_f64().unwrap(),
                1e-4
            ),
            "{what}: loss"
        );
        let want_pairs = setting["pairs"].as_array().unwrap();
        // The oracle's IPO rewards are per-token means; TRL's (and gaplab's) are β times the
        // summed log-ratios, which the oracle's recorded sums give.
        let margin_of = |w: &serde_json::Value| -> f64 {
            if objective != "ipo" {
                return w["margin"].as_f64().unwrap();
            }
            let f = |k: &str| w[k].as_f64().unwrap();
            setting["beta"].as_f64().unwrap()
                * ((f("chosen_logps") - f("ref_chosen_logps"))
                    - (f("rejected_logps") - f("ref_rejected_logps")))
        };
        let want_margin = want_pairs.iter().map(margin_of).sum::<f64>() / want_pairs.len() as f64;
        assert!(
            close(got["reward_margin"].as_f64().unwrap(), want_margin, 1e-4),
            "{what}: margin"
        );
        let got_pairs = got["pairs"].as_array().unwrap();
        assert_eq!(got_pairs.len(), want_pairs.len());
        let mut wins = 0;
        for (g, w) in got_pairs.iter().zip(want_pairs) {
            for k in ["chosen_tokens", "rejected_tokens"] {
                assert_eq!(g[k], w[k], "{what}: {k}");
            }
            for k in [
                "chosen_logps",
                "rejected_logps",
                "ref_chosen_logps",
                "ref_rejected_logps",
            ] {
                match w[k].as_f64() {
                    Some(x) => assert!(close(g[k].as_f64().unwrap(), x, 1e-5), "{what}: {k}"),
                    None => assert!(g[k].is_null(), "{what}: {k} must be null"),
                }
            }
            assert!(
                close(
                    g["loss"].as_f64().unwrap(),
                    w["loss"].as_f64().unwrap(),
                    1e-4
                ),
                "{what}: loss"
            );
            let m = margin_of(w);
            assert!(
                close(g["margin"].as_f64().unwrap(), m, 1e-4),
                "{what}: margin"
            );
            // Identical responses tie exactly in exact arithmetic; only clear wins must agree.
            if m.abs() > 1e-6 {
                assert_eq!(g["margin"].as_f64().unwrap() > 0.0, m > 0.0, "{what}");
            }
            wins += (g["margin"].as_f64().unwrap() > 0.0) as usize;
        }
        let acc = got["reward_accuracy"].as_f64().unwrap();
        assert!(
            (acc - wins as f64 / got_pairs.len() as f64).abs() < 1e-12,
            "{what}"
        );
        // Prefix diagnostics ride along: j = 1, 2, 4, ...
        assert_eq!(got["prefix"]["j"][0], 1);
    }
}

#[test]
fn eval_without_ref_uses_the_policy_as_reference() {
    let out = gaplab(&[
        "eval",
        "--model",
        fixture("tiny-qwen2").to_str().unwrap(),
        "--data",
        fixture("pairs.jsonl").to_str().unwrap(),
        "--objective",
        "dpo",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!((got["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6);
    assert!(got["reward_margin"].as_f64().unwrap().abs() < 1e-5);
}

#[test]
fn eval_prints_a_table_by_default() {
    let out = gaplab(&[
        "eval",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--ref",
        fixture("tiny-llama-ref").to_str().unwrap(),
        "--data",
        fixture("pairs.jsonl").to_str().unwrap(),
        "--objective",
        "simpo",
        "--poet",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("simpo+poet"), "{text}");
    assert!(text.contains("prefix diagnostics"), "{text}");
    // One row per pair, numbered 1..=6.
    let rows = text.lines().filter(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|w| w.parse::<u32>().is_ok())
            && l.contains('/')
    });
    assert_eq!(rows.count(), 6, "{text}");
}

#[test]
fn sample_greedy_matches_transformers() {
    for name in ["tiny-qwen2", "tiny-llama"] {
        let exp = read_json(&fixture(name).join("expected.json"));
        let want = u32s(&exp["greedy"]["new_ids"]);
        let n = want.len().to_string();
        let out = gaplab(&[
            "sample",
            "--model",
            fixture(name).to_str().unwrap(),
            "--prompt",
            "the model answers the question",
            "--max-new-tokens",
            &n,
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let got: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(u32s(&got["token_ids"]), want, "{name}");
        assert!(got["text"].is_string());
    }
}

#[test]
fn sampling_is_reproducible_for_a_seed() {
    let run = |seed: &str| {
        let out = gaplab(&[
            "sample",
            "--model",
            fixture("tiny-mistral").to_str().unwrap(),
            "--prompt",
            "name three colors",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--max-new-tokens",
            "16",
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(run("3"), run("3"));
    assert_ne!(run("3"), run("4"));
}

/// Copies a fixture checkpoint folder so a test can break it.
fn broken_copy(name: &str, dir: &Path, edit: impl Fn(&Path)) -> std::path::PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    edit(&to);
    to
}

fn edit_json(path: &Path, f: impl Fn(&mut serde_json::Value)) {
    let mut v = read_json(path);
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Runs `gaplab eval` and expects exit code 2 with one line on stderr containing `needles`.
fn expect_error(model: &Path, data: &Path, needles: &[&str]) {
    let out = gaplab(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--objective",
        "dpo",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in {err}");
    }
}

#[test]
fn bad_input_gets_one_line_and_exit_code_2() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = fixture("tiny-qwen2");
    let data = fixture("pairs.jsonl");

    expect_error(&model, &t.join("missing.jsonl"), &["missing.jsonl"]);
    expect_error(&t.join("nope"), &data, &["nope", "not a checkpoint folder"]);

    let bad = t.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": 1}\n",
    )
    .unwrap();
    expect_error(&model, &bad, &["bad.jsonl:2", "chosen"]);
    std::fs::write(&bad, "{\"prompt\": \"a\", \n").unwrap();
    expect_error(&model, &bad, &["bad.jsonl:1", "invalid JSON"]);

    let gpt2 = broken_copy("tiny-qwen2", &t.join("a"), |d| {
        edit_json(&d.join("config.json"), |v| v["model_type"] = "gpt2".into())
    });
    expect_error(
        &gpt2,
        &data,
        &["config.json", "gpt2", "unsupported architecture"],
    );

    let no_eos = broken_copy("tiny-qwen2", &t.join("b"), |d| {
        edit_json(&d.join("tokenizer_config.json"), |v| {
            v.as_object_mut().unwrap().remove("eos_token");
        });
        edit_json(&d.join("config.json"), |v| {
            v.as_object_mut().unwrap().remove("eos_token_id");
        });
        std::fs::remove_file(d.join("generation_config.json")).unwrap();
    });
    expect_error(&no_eos, &data, &["no eos token"]);

    let shape = broken_copy("tiny-qwen2", &t.join("c"), |d| {
        edit_json(&d.join("config.json"), |v| {
            v["intermediate_size"] = 96.into()
        })
    });
    expect_error(&shape, &data, &["mlp.gate_proj.weight", "shape"]);

    let missing = broken_copy("tiny-qwen2", &t.join("d"), |d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
    });
    expect_error(&missing, &data, &["no model.safetensors"]);
}

#[test]
fn bad_arguments_exit_with_2() {
    let out = gaplab(&["sample", "--model", "x", "--prompt", "p", "--top-p", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--top-p"));
    let out = gaplab(&["eval", "--objective", "kto"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn out_of_range_flags_are_worded_as_in_gaplab_toml() {
    // One checker validates both --beta and train.beta, --top-p and sample.top_p, ...
    let eval = ["eval", "--model", "x", "--data", "y", "--objective"];
    let sample = ["sample", "--model", "x", "--prompt", "p"];
    let cases: [(Vec<&str>, &str); 4] = [
        (
            [&eval[..], &["dpo", "--beta=-0.5"]].concat(),
            "error: --beta: expected a number > 0, got -0.5",
        ),
        (
            [&eval[..], &["simpo", "--gamma", "inf"]].concat(),
            "error: --gamma: expected a finite number, got inf",
        ),
        (
            [&sample[..], &["--temperature=-1"]].concat(),
            "error: --temperature: expected a number >= 0, got -1",
        ),
        (
            [&sample[..], &["--top-p", "1.5"]].concat(),
            "error: --top-p: expected a number in (0, 1], got 1.5",
        ),
    ];
    for (args, line) in cases {
        let out = gaplab(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&out).trim_end(), line);
    }
}

#[test]
fn eval_offers_every_loss_and_names_the_flag_of_a_bad_combination() {
    let out = gaplab(&["eval", "--help"]);
    let help = stdout(&out);
    for name in [
        "sigmoid",
        "hinge",
        "exo_pair",
        "aot_unpaired",
        "sft",
        "orpo",
        "alphapo",
    ] {
        assert!(help.contains(name), "{name}: {help}");
    }
    let base = ["eval", "--model", "x", "--data", "y", "--objective"];
    let out = gaplab(&[&base[..], &["kto"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid value 'kto' for '--objective <OBJECTIVE>'"));
    assert!(stderr(&out).contains("possible values: sigmoid, hinge, ipo"));
    for (args, want) in [
        (
            vec!["sigmoid,sft", "--loss-weights", "1"],
            "--loss-weights: expected 2 weights, one per loss of objective (sigmoid+sft), got 1",
        ),
        (
            vec!["exo_pair"],
            "--label-smoothing: exo_pair needs label_smoothing > 0",
        ),
        (
            vec!["robust", "--label-smoothing", "0.5"],
            "--label-smoothing: expected a number in [0, 0.5), got 0.5",
        ),
        (
            vec!["sigmoid", "--poet", "ratio_k", "--poet-ratio", "0"],
            "--poet-ratio: expected a number in (0, 1], got 0",
        ),
        (
            vec!["simpo,sft"],
            "--objective: simpo stands alone",
        ),
        (
            vec!["bco_pair", "--f-divergence", "forward_kl"],
            "--f-divergence: bco_pair reads the log-ratios directly",
        ),
        (
            vec!["sigmoid", "--f-divergence", "tv"],
            "unknown f-divergence \"tv\" (expected reverse_kl, forward_kl, js_divergence or alpha_divergence)",
        ),
    ] {
        let out = gaplab(&[&base[..], &args].concat());
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn prefix_curve_is_reported() {
    let out = gaplab(&[
        "eval",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--ref",
        fixture("tiny-llama-ref").to_str().unwrap(),
        "--data",
        fixture("pairs.jsonl").to_str().unwrap(),
        "--objective",
        "dpo",
        "--json",
    ]);
    let got: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let j = u32s(&got["prefix"]["j"]);
    assert_eq!(j[..3], [1, 2, 4]);
    let acc = f64s(&got["prefix"]["accuracy"]);
    assert!(acc.iter().all(|a| (0.0..=1.0).contains(a)));
}

#[test]
fn readme_hub_workspace_is_a_valid_config() {
    // The gaplab.toml under "A Hub checkpoint on UltraFeedback" parses and validates.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### A Hub checkpoint on UltraFeedback")
        .nth(1)
        .expect("the README section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a toml block");
    let dir = std::path::Path::new("/tmp/ws");
    let ws = gaplab::config::Workspace::parse(dir, &dir.join("gaplab.toml"), block)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ws.variant_names(), vec!["dpo", "dpo-poet"]);
    let cfg = ws.run_config("dpo-poet").unwrap();
    assert!(
        cfg.train.poet != gaplab::objective::tokens::PoetMode::Off
            && cfg.train.dtype == gaplab::model::Precision::Bf16
    );
    assert_eq!(cfg.train.batch_size * cfg.train.grad_accum, 128);
}
