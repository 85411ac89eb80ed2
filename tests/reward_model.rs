//! Reward models against transformers (tests/fixtures/make_reward_fixtures.py): the rewards of
//! the fixture pairs, full and at k-token prefixes, one row at a time and batched; the folders
//! that are not reward models; and the commands that use them through the real binary.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::{f64s, fixture, gaplab, read_json, stderr, stdout, u32s};
use gaplab::model::reward::RewardModel;

const RMS: [&str; 2] = ["tiny-llama-rm", "tiny-qwen2-rm"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn expected(name: &str) -> serde_json::Value {
    read_json(&fixture("reward_expected.json"))["models"][name].clone()
}

fn ks() -> Vec<usize> {
    read_json(&fixture("reward_expected.json"))["ks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_u64().unwrap() as usize)
        .collect()
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() < 1e-4,
        "{what}: gaplab {got} vs transformers {want}"
    );
}

/// The sequences the fixture scored for one side of a pair: each k-prefix, then the full one.
fn side_seqs(pair: &serde_json::Value, side: &str, ks: &[usize]) -> Vec<Vec<u32>> {
    let prompt = u32s(&pair["prompt_ids"]);
    let resp = u32s(&pair[format!("{side}_ids")]);
    ks.iter()
        .map(|&k| resp[..k.min(resp.len())].to_vec())
        .chain(std::iter::once(resp.clone()))
        .map(|r| prompt.iter().copied().chain(r).collect())
        .collect()
}

#[test]
fn rewards_match_transformers_one_row_at_a_time_and_batched() {
    let ks = ks();
    for name in RMS {
        let exp = expected(name);
        let (rm, tok) = RewardModel::load(&fixture(name), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(
            rm.pad_token_id(),
            exp["pad_token_id"].as_u64().map(|p| p as u32)
        );
        let mut all = Vec::new();
        let mut want = Vec::new();
        for pair in exp["pairs"].as_array().unwrap() {
            // gaplab's own tokenization agrees with the fixture's ids.
            let t = gaplab::data::tokenize_pair(
                &tok,
                &gaplab::data::PreferencePair::standard(pair["prompt"].as_str().unwrap(), "", ""),
            );
            assert_eq!(t.unwrap().prompt, u32s(&pair["prompt_ids"]));
            for side in ["chosen", "rejected"] {
                let seqs = side_seqs(pair, side, &ks);
                let e = &pair[side];
                let mut single = f64s(&e["prefix"]);
                single.push(e["full"].as_f64().unwrap());
                let mut batched = f64s(&e["prefix_batched"]);
                batched.push(e["full_batched"].as_f64().unwrap());
                for (i, seq) in seqs.iter().enumerate() {
                    let one = rm.score(std::slice::from_ref(seq), 1).unwrap()[0];
                    close(one, single[i], &format!("{name} {side} row {i}"));
                }
                all.extend(seqs);
                want.extend(batched);
            }
        }
        // One batch of every length at once, and batches of 5.
        for bs in [all.len(), 5] {
            let got = rm.score(&all, bs).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                close(*g, *w, &format!("{name} batch {bs} row {i}"));
            }
        }
    }
}

#[test]
fn pad_equal_to_eos_reads_a_full_response_before_its_eos() {
    // tiny-qwen2-rm has pad_token_id == eos_token_id: transformers reads a full response
    // (which ends with EOS) at the token before its EOS; tiny-llama-rm reads the EOS itself.
    let qwen = expected("tiny-qwen2-rm");
    let llama = expected("tiny-llama-rm");
    assert_eq!(qwen["pad_token_id"], qwen["eos_token_id"]);
    for (exp, before_eos) in [(qwen, true), (llama, false)] {
        for pair in exp["pairs"].as_array().unwrap() {
            let read_at = u32s(&pair["chosen"]["read_at"]);
            let full_len = u32s(&pair["prompt_ids"]).len() + u32s(&pair["chosen_ids"]).len();
            let want = if before_eos {
                full_len - 2
            } else {
                full_len - 1
            };
            assert_eq!(*read_at.last().unwrap() as usize, want);
            let seq = side_seqs(pair, "chosen", &[]).pop().unwrap();
            let pad = exp["pad_token_id"].as_u64().map(|p| p as u32);
            assert_eq!(
                gaplab::model::reward::reward_position(&seq, pad),
                want,
                "gaplab's rule"
            );
        }
    }
}

#[test]
fn folders_that_are_not_reward_models_are_named_as_such() {
    let e = RewardModel::check_dir(&fixture("tiny-llama"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("causal LM")
            && e.contains("no `score` head")
            && e.contains("LlamaForSequenceClassification"),
        "{e}"
    );
    let e = RewardModel::check_dir(&fixture("tiny-llama-cls2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 labels") && e.contains("num_labels = 1"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let copy = |to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for f in std::fs::read_dir(fixture("tiny-llama-rm")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    };
    // Truncated weights: named before anything is loaded.
    let cut = dir.path().join("cut");
    copy(&cut);
    let st = cut.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    f.set_len(len - 1000).unwrap();
    let e = RewardModel::load(&cut, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("truncated") && e.contains("model.safetensors"),
        "{e}"
    );

    // A config without architectures whose weights hold no head.
    let headless = dir.path().join("headless");
    std::fs::create_dir_all(&headless).unwrap();
    for f in [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixture("tiny-llama").join(f), headless.join(f)).unwrap();
    }
    let mut cfg = read_json(&fixture("tiny-llama").join("config.json"));
    cfg.as_object_mut().unwrap().remove("architectures");
    std::fs::write(headless.join("config.json"), cfg.to_string()).unwrap();
    let e = RewardModel::check_dir(&headless).unwrap_err().to_string();
    assert!(e.contains("no `score.weight`"), "{e}");

    // A head of the wrong width.
    let wide = dir.path().join("wide");
    copy(&wide);
    let mut cfg = read_json(&wide.join("config.json"));
    cfg["hidden_size"] = serde_json::json!(128);
    cfg["head_dim"] = serde_json::json!(32);
    std::fs::write(wide.join("config.json"), cfg.to_string()).unwrap();
    let e = RewardModel::check_dir(&wide).unwrap_err().to_string();
    assert!(e.contains("has shape") && e.contains("config.json"), "{e}");
}

/// Runs gaplab, expects success, and returns stdout.
fn ok(args: &[&str]) -> String {
    let out = gaplab(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Runs gaplab, expects exit code 2, and returns stderr.
fn fails(args: &[&str]) -> String {
    let out = gaplab(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stdout(&out));
    stderr(&out)
}

fn k_arg() -> String {
    ks().iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn score_prints_the_transformers_rewards() {
    let data = fixture("pairs.jsonl");
    for name in RMS {
        let exp = expected(name);
        let out = ok(&[
            "score",
            "--reward-model",
            s(&fixture(name)),
            "--data",
            s(&data),
            "--k",
            &k_arg(),
            "--json",
            "--batch-size",
            "3",
        ]);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let pairs = exp["pairs"].as_array().unwrap();
        assert_eq!(lines.len(), pairs.len());
        for (i, (l, p)) in lines.iter().zip(pairs).enumerate() {
            assert_eq!(l["pair"], i + 1);
            assert_eq!(
                l["chosen_tokens"],
                p["chosen_ids"].as_array().unwrap().len()
            );
            for side in ["chosen", "rejected"] {
                let what = format!("{name} pair {} {side}", i + 1);
                close(
                    l[side].as_f64().unwrap(),
                    p[side]["full"].as_f64().unwrap(),
                    &what,
                );
                let want = f64s(&p[side]["prefix"]);
                for (j, pre) in l["prefix"].as_array().unwrap().iter().enumerate() {
                    assert_eq!(pre["k"].as_u64().unwrap() as usize, ks()[j]);
                    close(
                        pre[side].as_f64().unwrap(),
                        want[j],
                        &format!("{what} k{j}"),
                    );
                }
            }
            let margin = l["chosen"].as_f64().unwrap() - l["rejected"].as_f64().unwrap();
            close(l["margin"].as_f64().unwrap(), margin, "margin");
        }
    }
    // The table names the model and shows a row per pair.
    let table = ok(&[
        "score",
        "--reward-model",
        s(&fixture("tiny-llama-rm")),
        "--data",
        s(&data),
    ]);
    assert!(table.contains("LlamaForSequenceClassification"), "{table}");
    assert_eq!(table.lines().count(), 2 + 6, "{table}");
    // pad == eos is pointed out.
    let out = gaplab(&[
        "score",
        "--reward-model",
        s(&fixture("tiny-qwen2-rm")),
        "--data",
        s(&data),
    ]);
    assert!(stderr(&out).contains("scored at the token before its EOS"));
}

#[test]
fn prefix_gap_is_the_mean_difference_of_the_transformers_rewards() {
    let exp = expected("tiny-llama-rm");
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("gap.svg");
    let out = ok(&[
        "analyze",
        "prefix-gap",
        "--reward-model",
        s(&fixture("tiny-llama-rm")),
        "--data",
        s(&fixture("pairs.jsonl")),
        "--k",
        &k_arg(),
        "--json",
        "--plot",
        s(&svg),
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pairs = exp["pairs"].as_array().unwrap();
    assert_eq!(report["pairs"], pairs.len());
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), ks().len());
    let n = pairs.len() as f64;
    for (j, (row, k)) in rows.iter().zip(ks()).enumerate() {
        assert_eq!(row["k"], k);
        let deltas: Vec<f64> = pairs
            .iter()
            .map(|p| f64s(&p["chosen"]["prefix"])[j] - f64s(&p["rejected"]["prefix"])[j])
            .collect();
        let mean = deltas.iter().sum::<f64>() / n;
        close(row["delta"].as_f64().unwrap(), mean, &format!("ΔQ({k})"));
        let var = deltas.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
        close(row["stderr"].as_f64().unwrap(), (var / n).sqrt(), "stderr");
        let positive = deltas.iter().filter(|d| **d > 0.0).count() as f64 / n;
        assert_eq!(row["share_positive"].as_f64().unwrap(), positive);
        let shorter = pairs
            .iter()
            .filter(|p| {
                let a = p["chosen_ids"].as_array().unwrap().len();
                let b = p["rejected_ids"].as_array().unwrap().len();
                a.min(b) < k
            })
            .count();
        assert_eq!(row["shorter"], shorter, "k {k}");
    }
    let full: f64 = pairs
        .iter()
        .map(|p| p["chosen"]["full"].as_f64().unwrap() - p["rejected"]["full"].as_f64().unwrap())
        .sum::<f64>()
        / n;
    close(report["full"]["delta"].as_f64().unwrap(), full, "full ΔQ");
    assert!(report["full"]["k"].is_null());
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    assert_eq!(svg.matches("<circle").count(), ks().len());
    // The table: one row per k and the full row.
    let table = ok(&[
        "analyze",
        "prefix-gap",
        "--reward-model",
        s(&fixture("tiny-llama-rm")),
        "--data",
        s(&fixture("pairs.jsonl")),
        "--k",
        "1,2",
    ]);
    assert!(
        table
            .lines()
            .last()
            .unwrap()
            .trim_start()
            .starts_with("full"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 2 + 3);
}

#[test]
fn prefix_quality_scores_the_policys_greedy_generations() {
    use gaplab::model::{io, sample};
    let (max_new, ks) = (12usize, [1usize, 4, 8]);
    let out = ok(&[
        "analyze",
        "prefix-quality",
        "--reward-model",
        s(&fixture("tiny-llama-rm")),
        "--policy",
        s(&fixture("tiny-llama")),
        "--ref",
        s(&fixture("tiny-llama-ref")),
        "--prompts",
        s(&fixture("pairs.jsonl")),
        "--k",
        "1,4,8",
        "--temperature",
        "0",
        "--max-new-tokens",
        &max_new.to_string(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["prompts"], 6);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), ks.len() + 1);
    // The same numbers by hand: greedy generations (the tokenizers agree, so the policy's ids
    // are the reward model's), each k-prefix and the full generation scored.
    let (rm, _) = RewardModel::load(&fixture("tiny-llama-rm"), &Device::Cpu, DType::F32).unwrap();
    let mut means = vec![];
    for model in ["tiny-llama", "tiny-llama-ref"] {
        let (m, tok) = io::load_dir(&fixture(model), &Device::Cpu, DType::F32).unwrap();
        let params = sample::SampleParams {
            max_new_tokens: max_new,
            temperature: 0.0,
            top_p: 1.0,
        };
        let mut sums = vec![0.0; ks.len() + 1];
        for line in std::fs::read_to_string(fixture("pairs.jsonl"))
            .unwrap()
            .lines()
        {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let prompt = tok.encode_prompt(v["prompt"].as_str().unwrap()).unwrap();
            let mut rng = gaplab::rng::Rng::new(0);
            let ids = sample::generate(&m, &prompt, &tok.stop, &params, &mut rng).unwrap();
            let stopped = tok.stop.contains(ids.last().unwrap());
            let mut full = ids.clone();
            if stopped {
                *full.last_mut().unwrap() = tok.eos;
            }
            let seqs: Vec<Vec<u32>> = ks
                .iter()
                .map(|&k| {
                    if k >= ids.len() {
                        full.clone()
                    } else {
                        ids[..k].to_vec()
                    }
                })
                .chain(std::iter::once(full.clone()))
                .map(|r| prompt.iter().copied().chain(r).collect())
                .collect();
            for (s, r) in sums.iter_mut().zip(rm.score(&seqs, 4).unwrap()) {
                *s += r / 6.0;
            }
        }
        means.push(sums);
    }
    for (i, row) in rows.iter().enumerate() {
        let what = format!("row {i}");
        close(row["policy"]["mean"].as_f64().unwrap(), means[0][i], &what);
        close(
            row["reference"]["mean"].as_f64().unwrap(),
            means[1][i],
            &what,
        );
        close(
            row["difference"]["mean"].as_f64().unwrap(),
            means[0][i] - means[1][i],
            &what,
        );
    }
    assert!(rows[ks.len()]["k"].is_null());
    let h = &report["policy_generations"];
    assert_eq!(h["generations"], 6);
    assert!(h["mean_tokens"].as_f64().unwrap() <= max_new as f64);
}

#[test]
fn bad_input_gets_one_clear_line() {
    let data = fixture("pairs.jsonl");
    let rm = fixture("tiny-llama-rm");
    for bad in ["0,1", "2,1", "1,1", "1,x", "1.5", ""] {
        let e = fails(&[
            "score",
            "--reward-model",
            s(&rm),
            "--data",
            s(&data),
            "--k",
            bad,
        ]);
        assert!(e.starts_with("error: --k: "), "{bad}: {e}");
        let e = fails(&[
            "analyze",
            "prefix-gap",
            "--reward-model",
            s(&rm),
            "--data",
            s(&data),
            "--k",
            bad,
        ]);
        assert!(e.starts_with("error: --k: "), "{bad}: {e}");
    }
    let causal = fixture("tiny-llama");
    for args in [
        vec!["score", "--data", s(&data)],
        vec!["analyze", "prefix-gap", "--data", s(&data)],
        vec![
            "analyze",
            "prefix-quality",
            "--policy",
            s(&causal),
            "--prompts",
            s(&data),
        ],
    ] {
        let mut args = args.clone();
        args.extend(["--reward-model", s(&causal)]);
        let e = fails(&args);
        assert!(
            e.contains("--reward-model")
                && e.contains("causal LM")
                && e.contains("no `score` head"),
            "{args:?}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let e = fails(&[
        "score",
        "--reward-model",
        s(&fixture("tiny-llama-cls2")),
        "--data",
        s(&data),
    ]);
    assert!(e.contains("2 labels"), "{e}");
    let e = fails(&[
        "analyze",
        "prefix-quality",
        "--reward-model",
        s(&rm),
        "--policy",
        s(&causal),
        "--prompts",
        s(&data),
        "--samples",
        "0",
    ]);
    assert!(e.contains("--samples"), "{e}");
}

#[test]
fn check_reports_a_reward_model_folder() {
    let out = ok(&["check", s(&fixture("tiny-qwen2-rm"))]);
    assert!(out.contains("Qwen2ForSequenceClassification"), "{out}");
    assert!(out.contains("weights: OK"), "{out}");
    assert!(out.contains("before its EOS"), "{out}");
    let out = ok(&["check", s(&fixture("tiny-llama-rm"))]);
    assert!(out.contains("not pad_token_id 2\n"), "{out}");
    let e = fails(&["check", s(&fixture("tiny-llama-cls2"))]);
    assert!(e.contains("2 labels"), "{e}");
}

#[test]
fn chat_prompts_go_through_the_reward_models_own_template() {
    use gaplab::data::chat::ChatTemplate;
    use gaplab::model::{io, sample};
    // A chat reward model: tiny-qwen2-chat's decoder with a fresh head, its tokenizer and
    // template.
    let dir = tempfile::tempdir().unwrap();
    let rm_dir = dir.path().join("chat-rm");
    let chat = fixture("tiny-qwen2-chat");
    let (decoder, _) = io::load_dir(&chat, &Device::Cpu, DType::F32).unwrap();
    RewardModel::from_decoder(decoder, Some(0), 5)
        .unwrap()
        .save(&rm_dir, Some(&chat))
        .unwrap();
    let (rm, rm_tok) = RewardModel::load(&rm_dir, &Device::Cpu, DType::F32).unwrap();
    let prompts = fixture("chat/pairs.jsonl");
    let max_new = 10;
    let out = ok(&[
        "analyze",
        "prefix-quality",
        "--reward-model",
        s(&rm_dir),
        "--policy",
        s(&chat),
        "--prompts",
        s(&prompts),
        "--k",
        "2,5",
        "--temperature",
        "0",
        "--max-new-tokens",
        &max_new.to_string(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    // By hand: the policy renders the prompt with its template; the reward model renders the
    // prompt and the conversation with its own and scores the prefixes as text.
    let (policy, tok) = io::load_dir(&chat, &Device::Cpu, DType::F32).unwrap();
    let src = rm_tok.chat_template.as_ref().unwrap();
    let tpl = ChatTemplate::for_tok(&src.text, src.origin.clone(), &rm_tok).unwrap();
    let params = sample::SampleParams {
        max_new_tokens: max_new,
        temperature: 0.0,
        top_p: 1.0,
    };
    let lines: Vec<String> = std::fs::read_to_string(&prompts)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut sums = [0.0f64; 3];
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let msgs = v["prompt"].as_array().unwrap().clone();
        let text = tpl.render(&msgs, true).unwrap();
        let ids = tok.encode_rendered(&text).unwrap();
        let mut rng = gaplab::rng::Rng::new(0);
        let gen = sample::generate(&policy, &ids, &tok.stop, &params, &mut rng).unwrap();
        let stopped = tok.stop.contains(gen.last().unwrap());
        let content = if stopped {
            &gen[..gen.len() - 1]
        } else {
            &gen[..]
        };
        let as_text = |ids: &[u32]| -> Vec<u32> {
            let mut s = rm_tok.encode_rendered(&text).unwrap();
            s.extend(rm_tok.encode(&tok.decode(ids).unwrap(), false).unwrap());
            s
        };
        let full = if stopped {
            let mut conv = msgs.clone();
            conv.push(
                serde_json::json!({"role": "assistant", "content": tok.decode(content).unwrap()}),
            );
            rm_tok
                .encode_rendered(&tpl.render(&conv, false).unwrap())
                .unwrap()
        } else {
            as_text(content)
        };
        let seqs: Vec<Vec<u32>> = [2usize, 5]
            .iter()
            .map(|&k| {
                if k >= gen.len() {
                    full.clone()
                } else {
                    as_text(&gen[..k])
                }
            })
            .chain(std::iter::once(full.clone()))
            .collect();
        for (s, r) in sums.iter_mut().zip(rm.score(&seqs, 2).unwrap()) {
            *s += r / lines.len() as f64;
        }
    }
    let rows = report["rows"].as_array().unwrap();
    for (i, row) in rows.iter().enumerate() {
        close(
            row["policy"]["mean"].as_f64().unwrap(),
            sums[i],
            &format!("row {i}"),
        );
    }
}
