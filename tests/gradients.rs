//! The decoder trains: every parameter gets a gradient, and DPO gradients agree with finite
//! differences.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::fixture;
use gaplab::data::TokenizedPair;
use gaplab::model::SeqBatch;
use gaplab::model::{io, Arch, CausalLm};
use gaplab::objective::{preference_loss, Loss, Objective};
use gaplab::train::reference_logps;

fn pairs() -> Vec<TokenizedPair> {
    common::tiny_pairs()
}

fn dpo(poet: bool) -> Objective {
    Objective::single(Loss::Sigmoid, 0.5, poet)
}

fn loss_of(policy: &CausalLm, reference: &CausalLm, batch: &SeqBatch, obj: &Objective) -> Tensor {
    let r = reference_logps(reference, batch).unwrap();
    let s = policy.response_scores(batch).unwrap();
    preference_loss(obj, batch, &s.logps, Some(&r))
        .unwrap()
        .loss
}

#[test]
fn every_parameter_receives_a_gradient() {
    for (arch, tied, kv) in [
        (Arch::Llama, false, 2),
        (Arch::Qwen2, true, 1),
        (Arch::Mistral, false, 4),
    ] {
        let cfg = common::tiny_config(arch, tied, kv);
        let base = CausalLm::random(cfg, 1, &Device::Cpu).unwrap();
        let reference = CausalLm::random(base.cfg.clone(), 2, &Device::Cpu).unwrap();
        let (policy, vars) = base.into_trainable().unwrap();
        let batch = SeqBatch::from_pairs(&pairs(), 0, &Device::Cpu).unwrap();
        let grads = loss_of(&policy, &reference, &batch, &dpo(true))
            .backward()
            .unwrap();
        assert_eq!(vars.len(), gaplab::model::param_specs(&policy.cfg).len());
        for (name, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{arch:?}: no gradient for {name}"));
            assert!(
                common::sq_norm(g) > 0.0,
                "{arch:?}: zero gradient for {name}"
            );
        }
    }
}

#[test]
fn dpo_gradient_matches_finite_differences() {
    // Real (random, HF-initialised) weights, in f64 so the differences are exact enough.
    let dev = Device::Cpu;
    let policy = io::load_model(&fixture("tiny-llama"), &dev, DType::F64).unwrap();
    let reference = io::load_model(&fixture("tiny-llama-ref"), &dev, DType::F64).unwrap();
    let (policy, vars) = policy.into_trainable().unwrap();
    let batch = SeqBatch::from_pairs(&pairs(), 2, &dev).unwrap();
    for obj in [dpo(false), dpo(true)] {
        let grads = loss_of(&policy, &reference, &batch, &obj)
            .backward()
            .unwrap();
        let mut rng = gaplab::rng::Rng::new(5);
        for (name, var) in &vars {
            let g: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for _ in 0..2 {
                let i = rng.below(w.len());
                let eps = 1e-5;
                let at = |delta: f64| -> f64 {
                    let mut v = w.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, var.shape(), &dev).unwrap();
                    var.set(&t).unwrap();
                    let l = loss_of(&policy, &reference, &batch, &obj);
                    l.to_scalar::<f64>().unwrap()
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                set(var, &w, &dev);
                assert!(
                    (fd - g[i]).abs() <= 1e-7 + 1e-4 * g[i].abs(),
                    "{name}[{i}] poet={}: analytic {} vs finite difference {fd}",
                    obj.poet(),
                    g[i]
                );
            }
        }
    }
}

fn set(var: &Var, w: &[f64], dev: &Device) {
    var.set(&Tensor::from_vec(w.to_vec(), var.shape(), dev).unwrap())
        .unwrap();
}
