//! LoRA adapters and activation recomputation in the decoder: adapters train alone over a
//! frozen base, the base with adapters off is the reference, merging folds them in, and
//! recomputing layers in backward changes nothing.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use gaplab::model::lora::{self, LoraConfig, LoraPair, Module};
use gaplab::model::{Arch, CausalLm, SeqBatch};
use gaplab::objective::{preference_loss, Loss, Objective};
use gaplab::train::reference_logps;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn lora_config(targets: &[Module], dropout: f64) -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout,
        targets: targets.to_vec(),
        use_rslora: false,
    }
}

/// Adapters with random (non-zero) B, so they change the outputs.
fn random_adapters(model: &CausalLm, lora: &LoraConfig, seed: u64) -> BTreeMap<String, LoraPair> {
    let mut pairs = lora::init_adapters(&model.cfg, lora, seed, &Device::Cpu, DType::F32).unwrap();
    let mut rng = gaplab::rng::Rng::new(seed + 1);
    for p in pairs.values_mut() {
        let n = p.b.elem_count();
        let v: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.05) as f32).collect();
        p.b = Tensor::from_vec(v, p.b.dims(), &Device::Cpu).unwrap();
    }
    pairs
}

fn dpo(poet: bool) -> Objective {
    Objective::single(Loss::Sigmoid, 0.5, poet)
}

fn batch() -> SeqBatch {
    SeqBatch::from_pairs(&common::tiny_pairs(), 0, &Device::Cpu).unwrap()
}

/// Loss and gradients of a DPO loss, with or without recomputing the layers in backward.
fn loss_and_grads(
    policy: &CausalLm,
    reference: &[f32],
    batch: &SeqBatch,
    recompute: bool,
) -> (f64, GradStore) {
    let obj = dpo(true);
    if recompute {
        let (s, rc) = policy.response_scores_recomputed(batch).unwrap();
        let loss = preference_loss(&obj, batch, &s.logps, Some(reference))
            .unwrap()
            .loss;
        let grads = policy
            .backward_layers(loss.backward().unwrap(), rc)
            .unwrap();
        (loss.to_scalar::<f32>().unwrap() as f64, grads)
    } else {
        let s = policy.response_scores(batch).unwrap();
        let loss = preference_loss(&obj, batch, &s.logps, Some(reference))
            .unwrap()
            .loss;
        (
            loss.to_scalar::<f32>().unwrap() as f64,
            loss.backward().unwrap(),
        )
    }
}

fn assert_same_grads(vars: &[(String, Var)], a: &GradStore, b: &GradStore, what: &str) {
    for (name, v) in vars {
        let ga = a
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        let gb = b
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{what}: no recomputed gradient for {name}"));
        assert_eq!(max_diff(ga, gb), 0.0, "{what}: {name} differs");
    }
}

#[test]
fn recomputation_gives_identical_losses_and_gradients() {
    for (arch, tied, kv) in [(Arch::Llama, false, 2), (Arch::Qwen2, true, 1)] {
        let cfg = common::tiny_config(arch, tied, kv);
        let base = CausalLm::random(cfg, 1, &Device::Cpu).unwrap();
        let reference = CausalLm::random(base.cfg.clone(), 2, &Device::Cpu).unwrap();
        let b = batch();
        let r = reference_logps(&reference, &b).unwrap();
        // Full fine-tuning.
        let (policy, vars) = base.clone().into_trainable().unwrap();
        let (l1, g1) = loss_and_grads(&policy, &r, &b, false);
        let (l2, g2) = loss_and_grads(&policy, &r, &b, true);
        assert_eq!(l1, l2);
        assert_same_grads(&vars, &g1, &g2, &format!("{arch:?} full"));
        // LoRA with dropout: the recomputed layers draw the same masks.
        let lora = lora_config(&Module::ALL, 0.2);
        let adapters = random_adapters(&base, &lora, 3);
        let (policy, vars) = base
            .with_adapters(lora, adapters)
            .unwrap()
            .into_trainable()
            .unwrap();
        let policy = policy.with_dropout(11);
        let (l1, g1) = loss_and_grads(&policy, &r, &b, false);
        let (l2, g2) = loss_and_grads(&policy, &r, &b, true);
        assert_eq!(l1, l2);
        assert_same_grads(&vars, &g1, &g2, &format!("{arch:?} lora"));
    }
}

#[test]
fn only_adapters_train_and_the_base_stays_frozen() {
    let cfg = common::tiny_config(Arch::Llama, false, 2);
    let base = CausalLm::random(cfg, 1, &Device::Cpu).unwrap();
    let b = batch();
    let base_logps = base.response_scores(&b).unwrap().logps;
    let lora = lora_config(&[Module::QProj, Module::VProj, Module::DownProj], 0.0);
    // Fresh adapters (B = 0) leave the outputs exactly as they were.
    let fresh = lora::init_adapters(&base.cfg, &lora, 5, &Device::Cpu, DType::F32).unwrap();
    let with_fresh = base.clone().with_adapters(lora.clone(), fresh).unwrap();
    assert_eq!(
        max_diff(&with_fresh.response_scores(&b).unwrap().logps, &base_logps),
        0.0
    );
    let adapted = base
        .clone()
        .with_adapters(lora.clone(), random_adapters(&base, &lora, 5))
        .unwrap();
    let logps = adapted.response_scores(&b).unwrap().logps;
    assert!(
        max_diff(&logps, &base_logps) > 1e-4,
        "adapters change nothing"
    );
    // Adapters off: the base itself, sharing its storage.
    let off = adapted.without_adapters().unwrap();
    assert_eq!(
        max_diff(&off.response_scores(&b).unwrap().logps, &base_logps),
        0.0
    );
    // Merged: the same function.
    let merged = adapted.merged().unwrap();
    assert!(merged.adapters().is_none());
    assert!(max_diff(&merged.response_scores(&b).unwrap().logps, &logps) < 1e-5);
    // Training: only the adapters are variables, named as PEFT saves them.
    let (policy, vars) = adapted.into_trainable().unwrap();
    assert_eq!(vars.len(), 2 * 3 * policy.cfg.num_hidden_layers);
    assert_eq!(
        vars[0].0,
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    let r = reference_logps(&off, &b).unwrap();
    let (_, grads) = loss_and_grads(&policy, &r, &b, false);
    for (name, v) in &vars {
        let g = grads.get(v.as_tensor()).unwrap();
        assert!(common::sq_norm(g) > 0.0, "zero gradient for {name}");
    }
    // No weight-sized gradient is ever computed for the frozen base.
    for (name, w) in policy.weights() {
        assert!(
            grads.get(w).is_none(),
            "gradient computed for frozen {name}"
        );
    }
}

#[test]
fn rslora_scales_by_the_square_root_of_the_rank() {
    let cfg = common::tiny_config(Arch::Qwen2, true, 1);
    let base = CausalLm::random(cfg, 1, &Device::Cpu).unwrap();
    let b = batch();
    let plain = lora_config(&[Module::UpProj], 0.0);
    let rs = LoraConfig {
        use_rslora: true,
        alpha: plain.alpha / 2.0,
        ..plain.clone()
    };
    let pairs = random_adapters(&base, &plain, 9);
    // plain: 8 / 4 = 2; rsLoRA: 4 / √4 = 2: the same function.
    let a = base.clone().with_adapters(plain, pairs.clone()).unwrap();
    let c = base.with_adapters(rs, pairs).unwrap();
    let (la, lc) = (
        a.response_scores(&b).unwrap().logps,
        c.response_scores(&b).unwrap().logps,
    );
    assert_eq!(max_diff(&la, &lc), 0.0);
}

/// The committed PEFT fixtures (tests/fixtures/make_lora_fixtures.py).
mod peft {
    use super::*;
    use gaplab::data::TokenizedPair;
    use gaplab::model::io;

    fn expected() -> serde_json::Value {
        common::read_json(&common::fixture("lora/expected.json"))
    }

    fn pairs(base: &serde_json::Value) -> Vec<TokenizedPair> {
        base["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| TokenizedPair {
                prompt: common::u32s(&r["prompt_ids"]),
                chosen: common::u32s(&r["chosen_ids"]),
                rejected: common::u32s(&r["rejected_ids"]),
            })
            .collect()
    }

    /// (base, base + adapter) in `dtype`, as gaplab loads them.
    fn models(base: &serde_json::Value, dtype: DType) -> (CausalLm, CausalLm) {
        let dev = Device::Cpu;
        let dir = common::fixture("").join("..").join("..");
        let model = io::load_model(&dir.join(base["base"].as_str().unwrap()), &dev, dtype).unwrap();
        let adapter_dir = dir.join(base["adapter"].as_str().unwrap());
        let (lora, adapters) = lora::load_adapter(&adapter_dir, &model.cfg, &dev, dtype).unwrap();
        (model.clone(), model.with_adapters(lora, adapters).unwrap())
    }

    fn assert_logps(model: &CausalLm, base: &serde_json::Value, which: &str) {
        let pairs = pairs(base);
        let pad = base["eos_token_id"].as_u64().unwrap() as u32;
        let batch = SeqBatch::from_pairs(&pairs, pad, &Device::Cpu).unwrap();
        let got: Vec<f32> = model
            .response_scores(&batch)
            .unwrap()
            .logps
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let rows = batch.split(&got);
        let n = pairs.len();
        for (i, r) in base["rows"].as_array().unwrap().iter().enumerate() {
            for (side, row) in [("chosen", rows[i]), ("rejected", rows[n + i])] {
                let want = common::f64s(&r[format!("{which}_{side}_logps")]);
                assert_eq!(want.len(), row.len());
                for (t, (w, g)) in want.iter().zip(row.iter()).enumerate() {
                    assert!(
                        (w - *g as f64).abs() < 1e-4,
                        "{} {which} pair {i} {side} token {t}: PEFT {w}, gaplab {g}",
                        base["base"]
                    );
                }
            }
        }
    }

    #[test]
    fn log_probs_match_peft_with_adapters_on_off_and_merged() {
        for base in expected()["bases"].as_array().unwrap() {
            let (plain, adapted) = models(base, DType::F32);
            assert_logps(&adapted, base, "adapter");
            assert_logps(&adapted.without_adapters().unwrap(), base, "base");
            assert_logps(&plain, base, "base");
            assert_logps(&adapted.merged().unwrap(), base, "merged");
        }
    }

    /// An adapter gaplab trained and saved (tests/fixtures/make_trained_adapter.sh), loaded by
    /// PEFT's `PeftModel.from_pretrained`: PEFT scores it as gaplab does.
    #[test]
    fn an_adapter_gaplab_trained_scores_in_peft_as_in_gaplab() {
        let base = common::read_json(&common::fixture("lora/gaplab-trained-expected.json"));
        let (_, adapted) = models(&base, DType::F32);
        assert_logps(&adapted, &base, "adapter");
        assert_logps(&adapted.merged().unwrap(), &base, "merged");
    }

    #[test]
    fn lora_gradients_match_autograd_through_peft() {
        for base in expected()["bases"].as_array().unwrap() {
            let dpo = &base["dpo"];
            let n = dpo["pairs"].as_u64().unwrap() as usize;
            // f64, as the fixture's autograd ran.
            let (_, adapted) = models(base, DType::F64);
            let reference = adapted.without_adapters().unwrap();
            let (policy, vars) = adapted.into_trainable().unwrap();
            let pad = base["eos_token_id"].as_u64().unwrap() as u32;
            let batch = SeqBatch::from_pairs(&pairs(base)[..n], pad, &Device::Cpu).unwrap();
            let r = reference_logps(&reference, &batch).unwrap();
            let obj = Objective::single(Loss::Sigmoid, dpo["beta"].as_f64().unwrap(), false);
            let s = policy.response_scores(&batch).unwrap();
            let loss = preference_loss(&obj, &batch, &s.logps, Some(&r))
                .unwrap()
                .loss;
            let want_loss = dpo["loss"].as_f64().unwrap();
            let got_loss = loss
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(
                (got_loss - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
                "{}: loss {got_loss} vs PEFT {want_loss}",
                base["base"]
            );
            let grads = loss.backward().unwrap();
            let file = common::fixture("")
                .join("..")
                .join("..")
                .join(base["base"].as_str().unwrap());
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let want = candle_core::safetensors::load(
                common::fixture(&format!("lora/{name}-grads.safetensors")),
                &Device::Cpu,
            )
            .unwrap();
            assert_eq!(want.len(), vars.len());
            for (key, v) in &vars {
                let w = want[key].to_dtype(DType::F64).unwrap();
                let g = grads.get(v.as_tensor()).unwrap();
                let rel = max_diff(&w, g) / max_diff(&w, &w.zeros_like().unwrap()).max(1e-12);
                assert!(rel < 1e-4, "{name} {key}: relative difference {rel}");
            }
        }
    }
}
