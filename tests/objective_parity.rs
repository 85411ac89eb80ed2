//! `gaplab eval` against TRL 1.16's own trainers: every preference loss of DPOTrainer (alone, with
//! its options, in mixtures), CPOTrainer's cpo/slic/simpo/alphapo and ORPOTrainer, on two model
//! pairs. The numbers come from tests/fixtures/make_objective_fixtures.py (TRL itself, f32,
//! eval mode); see the `notes` in tests/fixtures/objectives/expected.json for what TRL counts.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{fixture, gaplab, read_json, stderr, stdout, u32s};
use serde_json::Value;

const REL: f64 = 1e-4;
/// Below this, values count as "near zero" and are compared absolutely.
const ABS: f64 = 1e-6;
/// Cases per model pair in the fixture.
const CASES: usize = 46;

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= ABS.max(REL * want.abs())
}

fn expected() -> Value {
    read_json(&fixture("objectives/expected.json"))
}

fn model_pairs(exp: &Value) -> &Vec<Value> {
    exp["model_pairs"].as_array().unwrap()
}

fn num(v: &Value) -> String {
    v.as_f64().unwrap().to_string()
}

/// TRL's config of a case as `gaplab eval` flags (after --model/--ref/--data).
fn case_flags(case: &Value) -> Vec<String> {
    let c = &case["config"];
    let mut args = vec![
        "--objective".to_string(),
        case["objective"].as_str().unwrap().to_string(),
        "--beta".into(),
        num(&c["beta"]),
    ];
    let mut flag = |name: &str, value: String| {
        args.push(name.to_string());
        args.push(value);
    };
    match case["trainer"].as_str().unwrap() {
        "DPOTrainer" => {
            if let Some(weights) = c["loss_weights"].as_array() {
                let w: Vec<String> = weights.iter().map(num).collect();
                flag("--loss-weights", w.join(","));
            }
            if c["label_smoothing"].as_f64().unwrap() != 0.0 {
                flag("--label-smoothing", num(&c["label_smoothing"]));
            }
            let f = c["f_divergence_type"].as_str().unwrap();
            if f != "reverse_kl" {
                flag("--f-divergence", f.to_string());
            }
            if f == "alpha_divergence" {
                flag("--f-alpha", num(&c["f_alpha_divergence_coef"]));
            }
            if !c["ld_alpha"].is_null() {
                flag("--ld-alpha", num(&c["ld_alpha"]));
            }
            let losses = c["loss_type"].as_array().unwrap();
            if losses.iter().any(|l| l == "discopop") {
                flag("--discopop-tau", num(&c["discopop_tau"]));
            }
            if c["use_weighting"].as_bool().unwrap() {
                args.push("--wpo".into());
            }
        }
        "CPOTrainer" => {
            flag("--cpo-alpha", num(&c["cpo_alpha"]));
            if c["label_smoothing"].as_f64().unwrap() != 0.0 {
                flag("--label-smoothing", num(&c["label_smoothing"]));
            }
            if c["loss_type"] == "simpo" {
                flag("--gamma", num(&c["simpo_gamma"]));
            }
            if c["alpha"].as_f64().unwrap() != 0.0 {
                flag("--alpha", num(&c["alpha"]));
            }
        }
        "ORPOTrainer" => {}
        other => panic!("unknown trainer {other}"),
    }
    args.push("--batch-size".into());
    args.push(case["batch_size"].as_u64().unwrap().to_string());
    args.push("--json".into());
    args
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The differences between gaplab's JSON and TRL's numbers for one case, one line each.
fn mismatches(what: &str, got: &Value, case: &Value) -> Vec<String> {
    let mut out = Vec::new();
    // Rewards are β times a difference of two log-prob sums of ~100 nats, each summed from f32
    // per-token values in either library: their absolute resolution is ~1e-5 whatever the
    // size of the difference.
    let mut check = |key: &str, got: &Value, want: &Value| match got.as_f64() {
        Some(g) if close(g, want.as_f64().unwrap()) => {}
        Some(g)
            if key.starts_with("rewards/")
                && key != "rewards/accuracies"
                && (g - want.as_f64().unwrap()).abs() <= 1e-5 => {}
        Some(g) => out.push(format!("{what}: {key}: gaplab {g} vs TRL {want}")),
        None => out.push(format!(
            "{what}: {key}: missing in gaplab's JSON (TRL {want})"
        )),
    };
    // ORPOTrainer's NLL also counts prompt tokens; gaplab's counts the chosen response only
    // (README, Objectives), which the fixture records beside TRL's numbers.
    let own = &case["response_only_nll"];
    let own_or = |key: &str, trl: &Value| -> Value {
        if own.is_object() {
            own[key].clone()
        } else {
            trl.clone()
        }
    };
    check("loss", &got["loss"], &own_or("loss", &case["loss"]));
    for (key, want) in case["metrics"].as_object().unwrap() {
        let want = if key == "nll_loss" {
            own_or("nll_loss", want)
        } else {
            want.clone()
        };
        check(key, &got["metrics"][key], &want);
    }
    out
}

#[test]
fn eval_matches_trl_for_every_loss() {
    let exp = expected();
    let data = fixture("objectives/pairs.jsonl");
    let mut failures = Vec::new();
    let mut runs = 0;
    for mp in model_pairs(&exp) {
        let model = fixture(mp["policy"].as_str().unwrap());
        let reference = fixture(mp["reference"].as_str().unwrap());
        for case in mp["cases"].as_array().unwrap() {
            let what = format!(
                "{} / {}",
                mp["policy"].as_str().unwrap(),
                case["name"].as_str().unwrap()
            );
            let mut args: Vec<String> =
                ["eval", "--model", path(&model), "--ref", path(&reference)]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            args.extend(["--data".to_string(), path(&data).to_string()]);
            args.extend(case_flags(case));
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = gaplab(&argv);
            runs += 1;
            if !out.status.success() {
                failures.push(format!(
                    "{what}: `gaplab {}` failed: {}",
                    args.join(" "),
                    stderr(&out).trim()
                ));
                continue;
            }
            match serde_json::from_str::<Value>(&stdout(&out)) {
                Ok(got) => failures.extend(mismatches(&what, &got, case)),
                Err(e) => failures.push(format!("{what}: not one JSON document ({e})")),
            }
        }
    }
    assert_eq!(runs, 2 * CASES, "every case on both model pairs");
    assert!(
        failures.is_empty(),
        "{} mismatches with TRL 1.16:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn recorded_ids_follow_gaplab_tokenization() {
    let exp = expected();
    let lines: Vec<Value> = std::fs::read_to_string(fixture("objectives/pairs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    for mp in model_pairs(&exp) {
        let policy = mp["policy"].as_str().unwrap();
        let rows = mp["rows"].as_array().unwrap();
        assert_eq!(rows.len(), lines.len());
        for name in [policy, mp["reference"].as_str().unwrap()] {
            let tok = gaplab::model::Tok::load(&fixture(name), None).unwrap();
            assert_eq!(tok.eos as u64, mp["eos_token_id"].as_u64().unwrap());
            for (i, (row, line)) in rows.iter().zip(&lines).enumerate() {
                for k in ["prompt", "chosen", "rejected"] {
                    assert_eq!(row[k], line[k], "{name} pair {i}: {k} text");
                }
                let pair = gaplab::data::PreferencePair::standard(
                    line["prompt"].as_str().unwrap(),
                    line["chosen"].as_str().unwrap(),
                    line["rejected"].as_str().unwrap(),
                );
                let t = gaplab::data::tokenize_pair(&tok, &pair).unwrap();
                assert_eq!(
                    t.prompt,
                    u32s(&row["prompt_ids"]),
                    "{name} pair {i}: prompt"
                );
                assert_eq!(
                    t.chosen,
                    u32s(&row["chosen_ids"]),
                    "{name} pair {i}: chosen"
                );
                assert_eq!(
                    t.rejected,
                    u32s(&row["rejected_ids"]),
                    "{name} pair {i}: rejected"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fixture itself: the flags each case maps to, and a few of TRL's numbers recomputed from
// the recorded per-token log-probs (so a fixture whose rows and cases disagree fails here, not
// as a puzzling gaplab mismatch).
// ---------------------------------------------------------------------------------------------

fn case<'a>(mp: &'a Value, name: &str) -> &'a Value {
    mp["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

#[test]
fn cases_map_to_gaplab_flags() {
    let exp = expected();
    let mp = &model_pairs(&exp)[0];
    let flags = |name: &str| case_flags(case(mp, name)).join(" ");
    assert_eq!(
        flags("sigmoid"),
        "--objective sigmoid --beta 0.1 --batch-size 8 --json"
    );
    assert_eq!(
        flags("mix_sigmoid_bco_sft"),
        "--objective sigmoid,bco_pair,sft --beta 0.1 --loss-weights 0.8,0.2,1 --batch-size 8 --json"
    );
    assert_eq!(
        flags("exo_pair"),
        "--objective exo_pair --beta 0.1 --label-smoothing 0.001 --batch-size 8 --json"
    );
    assert_eq!(
        flags("ipo_alpha0.5"),
        "--objective ipo --beta 0.1 --f-divergence alpha_divergence --f-alpha 0.5 --batch-size 8 --json"
    );
    assert_eq!(
        flags("sigmoid_ld0"),
        "--objective sigmoid --beta 0.1 --ld-alpha 0 --batch-size 8 --json"
    );
    assert_eq!(
        flags("sigmoid_wpo"),
        "--objective sigmoid --beta 0.1 --wpo --batch-size 8 --json"
    );
    assert_eq!(
        flags("discopop_tau0.5"),
        "--objective discopop --beta 0.1 --discopop-tau 0.5 --batch-size 8 --json"
    );
    assert_eq!(
        flags("aot_ls0.1_bs4"),
        "--objective aot --beta 0.1 --label-smoothing 0.1 --batch-size 4 --json"
    );
    assert_eq!(
        flags("slic"),
        "--objective slic --beta 0.1 --cpo-alpha 1 --batch-size 8 --json"
    );
    assert_eq!(
        flags("alphapo"),
        "--objective alphapo --beta 0.1 --cpo-alpha 0 --gamma 0.5 --alpha 0.25 --batch-size 8 --json"
    );
    assert_eq!(
        flags("orpo"),
        "--objective orpo --beta 0.1 --batch-size 8 --json"
    );
    // Every case has a distinct name, and both model pairs run the same cases.
    let names = |mp: &Value| -> Vec<String> {
        mp["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mut unique = names(mp);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), CASES);
    assert_eq!(names(mp), names(&model_pairs(&exp)[1]));
}

fn sum(v: &Value) -> f64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum()
}

fn len(v: &Value) -> f64 {
    v.as_array().unwrap().len() as f64
}

/// log σ(x) without overflow for large |x|.
fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

#[test]
fn log_sigmoid_is_stable() {
    for x in [-50.0f64, -3.0, -0.5, 0.0, 0.5, 3.0, 50.0] {
        let naive = (1.0 / (1.0 + (-x).exp())).ln();
        assert!((log_sigmoid(x) - naive).abs() < 1e-12, "{x}");
    }
}

#[test]
fn fixture_losses_follow_from_recorded_logps() {
    let exp = expected();
    for mp in model_pairs(&exp) {
        let rows = mp["rows"].as_array().unwrap();
        let n = rows.len() as f64;
        let logratio = |r: &Value, side: &str| {
            sum(&r[format!("policy_{side}_logps")]) - sum(&r[format!("ref_{side}_logps")])
        };
        let what = |name: &str| format!("{} / {name}", mp["policy"].as_str().unwrap());
        let want = |name: &str| case(mp, name)["loss"].as_f64().unwrap();

        // sigmoid: mean of -log σ(β(ρ_w − ρ_l)), β = 0.1.
        let sigmoid: f64 = rows
            .iter()
            .map(|r| -log_sigmoid(0.1 * (logratio(r, "chosen") - logratio(r, "rejected"))))
            .sum::<f64>()
            / n;
        assert!(
            close(sigmoid, want("sigmoid")),
            "{}: {sigmoid}",
            what("sigmoid")
        );

        // ipo: mean of (ρ_w/n_w − ρ_l/n_l − 1/(2β))².
        let ipo: f64 = rows
            .iter()
            .map(|r| {
                let h = logratio(r, "chosen") / len(&r["chosen_ids"])
                    - logratio(r, "rejected") / len(&r["rejected_ids"]);
                (h - 5.0).powi(2)
            })
            .sum::<f64>()
            / n;
        assert!(close(ipo, want("ipo")), "{}: {ipo}", what("ipo"));

        // sft: the mean NLL over all chosen response tokens of the batch (token-weighted).
        let tokens: f64 = rows.iter().map(|r| len(&r["policy_chosen_logps"])).sum();
        let sft = -rows
            .iter()
            .map(|r| sum(&r["policy_chosen_logps"]))
            .sum::<f64>()
            / tokens;
        assert!(close(sft, want("sft")), "{}: {sft}", what("sft"));
        let cpo = case(mp, "cpo");
        assert!(close(sft, cpo["metrics"]["nll_loss"].as_f64().unwrap()));

        // simpo (CPOTrainer, β = 2, γ = 0.5): mean of -log σ(β(ℓ_w − ℓ_l) − γ), ℓ = mean logp.
        let simpo: f64 = rows
            .iter()
            .map(|r| {
                let avg = |side: &str| {
                    let k = format!("policy_{side}_logps");
                    sum(&r[&k]) / len(&r[&k])
                };
                -log_sigmoid(2.0 * (avg("chosen") - avg("rejected")) - 0.5)
            })
            .sum::<f64>()
            / n;
        assert!(
            close(simpo, want("simpo_beta2")),
            "{}: {simpo}",
            what("simpo_beta2")
        );

        // ORPO's NLL includes the prompt tokens after the first (TRL 1.16).
        let prompt_tokens: f64 = rows.iter().map(|r| len(&r["policy_prompt_logps"])).sum();
        let orpo_nll = -rows
            .iter()
            .map(|r| sum(&r["policy_prompt_logps"]) + sum(&r["policy_chosen_logps"]))
            .sum::<f64>()
            / (tokens + prompt_tokens);
        let orpo = case(mp, "orpo");
        assert!(close(
            orpo_nll,
            orpo["metrics"]["nll_loss"].as_f64().unwrap()
        ));
        assert!(rows
            .iter()
            .all(|r| len(&r["policy_prompt_logps"]) == len(&r["prompt_ids"]) - 1.0));

        // Two batches of four: the loss is the mean of the batch losses.
        for name in ["aot_bs4", "aot_unpaired_ls0.1_bs4"] {
            let c = case(mp, name);
            assert_eq!(len(&c["batch_losses"]), 2.0);
            assert!(close(
                sum(&c["batch_losses"]) / 2.0,
                c["loss"].as_f64().unwrap()
            ));
        }
    }
}
