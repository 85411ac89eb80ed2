//! `gaplab bench`: throughput of the training steps and of sampling on a fixed model shape.
//!
//! The default shape (`--shape small`) is the 5.3M-parameter Llama that docs/PERFORMANCE.md
//! compares against PyTorch eager (benches/pytorch_step.py runs the same shapes): hidden 256,
//! 4 layers, 8 heads, intermediate 688, vocab 4096; 8 pairs of 128-token rows (32 prompt + 96
//! response tokens). `--shape qwen2.5-0.5b` is Qwen2.5-0.5B's architecture with random weights
//! (494M parameters), for GPU throughput and memory (scripts/gpu-check.sh).

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use serde::Serialize;

use crate::data::TokenizedPair;
use crate::model::SeqBatch;
use crate::model::{sample, CausalLm, ModelConfig, ScratchSpec};
use crate::objective::{Loss, Objective};
use crate::rng::Rng;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::{self, memory, reference_logps};

use super::{print, DeviceArgs};

/// Measure training-step and sampling throughput (see docs/PERFORMANCE.md).
#[derive(clap::Args, Clone, Debug)]
#[command(mut_arg("dtype", |a| a.help(
    "f32, bf16 or f16 (weights and activations; optimizer state stays f32)"
)))]
pub struct BenchArgs {
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 8)]
    pub pairs: usize,
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 96)]
    pub response_len: usize,
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Run only these benchmarks (dpo, dpo_poet, simpo, sft, sample).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Model shape: small (5.3M-parameter Llama) or qwen2.5-0.5b (random weights).
    #[arg(long, default_value = "small")]
    pub shape: String,
}

#[derive(Serialize, Debug)]
pub struct BenchResult {
    pub name: String,
    pub median_s: f64,
    pub min_s: f64,
    pub tokens_per_s: f64,
}

#[derive(Serialize, Debug)]
pub struct BenchReport {
    pub threads: usize,
    pub params: usize,
    pub device: String,
    pub dtype: String,
    pub shape: String,
    pub results: Vec<BenchResult>,
    /// Peak resident memory of the process (CPU runs; GPU memory is read by nvidia-smi).
    pub peak_rss_bytes: Option<u64>,
    /// What `gaplab train` would estimate for a DPO run of this shape and batch (a reference
    /// model, no gradient accumulation), to compare with the measured peak.
    pub dpo_estimate_bytes: u64,
}

/// The model shapes `--shape` names.
pub const SHAPES: &[&str] = &["small", "qwen2.5-0.5b"];

/// The model config of the shape `--shape` names.
fn bench_config(shape: &str) -> Result<ModelConfig> {
    let (spec, vocab_size) = match shape {
        "small" => (
            ScratchSpec {
                arch: crate::model::Arch::Llama,
                hidden_size: 256,
                intermediate_size: 688,
                num_hidden_layers: 4,
                num_attention_heads: 8,
                num_key_value_heads: 8,
                max_position_embeddings: 512,
                rope_theta: 10000.0,
                tie_word_embeddings: false,
                seed: 0,
            },
            4096,
        ),
        // Qwen/Qwen2.5-0.5B-Instruct's config.json.
        "qwen2.5-0.5b" => (
            ScratchSpec {
                arch: crate::model::Arch::Qwen2,
                hidden_size: 896,
                intermediate_size: 4864,
                num_hidden_layers: 24,
                num_attention_heads: 14,
                num_key_value_heads: 2,
                max_position_embeddings: 32768,
                rope_theta: 1000000.0,
                tie_word_embeddings: true,
                seed: 0,
            },
            151936,
        ),
        s => bail!("--shape {s}: expected one of {}", SHAPES.join(", ")),
    };
    ModelConfig::from_scratch(&spec, vocab_size)
}

/// Peak resident set size of this process (VmHWM), where /proc has it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn time(
    iters: usize,
    warmup: usize,
    tokens: usize,
    name: &str,
    mut f: impl FnMut() -> Result<()>,
) -> Result<BenchResult> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ts = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    let median = ts[ts.len() / 2];
    Ok(BenchResult {
        name: name.to_string(),
        median_s: median,
        min_s: ts[0],
        tokens_per_s: tokens as f64 / median,
    })
}

/// Runs the benchmarks and prints the report (pretty JSON with `--json`).
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.prompt_len == 0 || args.response_len == 0 || args.pairs == 0 {
        bail!("--pairs, --prompt-len and --response-len must be at least 1");
    }
    let (device, dtype) = args.device.resolve()?;
    let report = measure(args, &device, dtype)?;
    if args.json {
        print(&(serde_json::to_string_pretty(&report)? + "\n"));
    } else {
        print(&render(&report));
    }
    Ok(())
}

/// Times the benchmarks `args.only` names (all by default) on `dev` in `dtype`.
pub fn measure(args: &BenchArgs, dev: &Device, dtype: DType) -> Result<BenchReport> {
    let cfg = bench_config(&args.shape)?;
    let params = cfg.num_params();
    let random = |seed| -> Result<CausalLm> {
        let m = CausalLm::random(cfg.clone(), seed, dev)?;
        if dtype == DType::F32 {
            Ok(m)
        } else {
            m.to_dtype(dtype)
        }
    };
    let vocab = cfg.vocab_size;
    let mut rng = Rng::new(0);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(vocab) as u32).collect() };
    let pairs: Vec<TokenizedPair> = (0..args.pairs)
        .map(|_| TokenizedPair {
            prompt: ids(args.prompt_len),
            chosen: ids(args.response_len),
            rejected: ids(args.response_len),
        })
        .collect();
    let pair_batch = SeqBatch::from_pairs(&pairs, 0, dev)?;
    let sft_batch = SeqBatch::chosen_only(&pairs, 0, dev)?;
    let want = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut results = Vec::new();
    let opt_cfg = AdamWConfig {
        lr: 1e-4,
        weight_decay: 0.01,
        ..Default::default()
    };

    // DPO and DPO+POET share one policy, reference and optimizer (the shapes are the same).
    if want("dpo") || want("dpo_poet") {
        let base = random(0)?;
        let reference = base.deep_copy()?;
        let (policy, vars) = base.into_trainable()?;
        let mut opt = AdamW::new(vars, opt_cfg)?;
        for poet in [false, true] {
            let name = if poet { "dpo_poet" } else { "dpo" };
            if !want(name) {
                continue;
            }
            let obj = Objective::single(Loss::Sigmoid, 0.1, poet);
            results.push(time(
                args.iters,
                args.warmup,
                pair_batch.num_tokens(),
                &format!("{name}_step"),
                || {
                    let r = reference_logps(&reference, &pair_batch)?;
                    train::preference_step(
                        &policy,
                        Some(&r),
                        &pair_batch,
                        &obj,
                        &mut opt,
                        Some(1.0),
                        false,
                    )?;
                    Ok(())
                },
            )?);
        }
        results.push(time(
            args.iters,
            args.warmup,
            pair_batch.num_tokens(),
            "reference_forward",
            || {
                reference_logps(&reference, &pair_batch)?;
                Ok(())
            },
        )?);
    }
    if want("simpo") {
        // No reference forward: also the cost of a DPO step with `precompute_ref = true`.
        let (policy, vars) = random(0)?.into_trainable()?;
        let mut opt = AdamW::new(vars, opt_cfg)?;
        let obj = Objective::single(Loss::Simpo, 2.0, false);
        results.push(time(
            args.iters,
            args.warmup,
            pair_batch.num_tokens(),
            "simpo_step",
            || {
                train::preference_step(
                    &policy,
                    None,
                    &pair_batch,
                    &obj,
                    &mut opt,
                    Some(1.0),
                    false,
                )?;
                Ok(())
            },
        )?);
    }
    if want("sft") {
        let (policy, vars) = random(0)?.into_trainable()?;
        let mut opt = AdamW::new(vars, opt_cfg)?;
        let counted = sft_batch.response_lens.clone();
        results.push(time(
            args.iters,
            args.warmup,
            sft_batch.num_tokens(),
            "sft_step",
            || {
                train::sft_step(&policy, &sft_batch, &counted, &mut opt, Some(1.0), false)?;
                Ok(())
            },
        )?);
    }
    if want("sample") {
        let model = random(0)?;
        let prompt = pairs[0].prompt.clone();
        let params = sample::SampleParams {
            max_new_tokens: args.new_tokens,
            temperature: 0.0,
            top_p: 1.0,
        };
        let mut rng = Rng::new(0);
        results.push(time(
            args.iters.min(5),
            1,
            args.new_tokens,
            "sample_greedy",
            || {
                let out = sample::generate(&model, &prompt, &[], &params, &mut rng)?;
                anyhow::ensure!(out.len() == params.max_new_tokens);
                Ok(())
            },
        )?);
    }
    let shape = memory::RunShape {
        dtype_bytes: dtype.size_in_bytes(),
        reference: memory::Reference::Model,
        grad_accum: 1,
        rows: pair_batch.rows(),
        seq_len: args.prompt_len + args.response_len,
        response_tokens: pair_batch.num_response_tokens(),
        eval_rows: 0,
        eval_response_tokens: 0,
        runtime_bytes: if dev.is_cpu() {
            memory::CPU_RUNTIME_BYTES
        } else {
            memory::CUDA_RUNTIME_BYTES
        },
        fused_kernels: dev.is_cpu(),
    };
    Ok(BenchReport {
        dpo_estimate_bytes: memory::estimate(&cfg, &shape).total,
        threads: rayon::current_num_threads(),
        params,
        device: crate::model::device_label(dev, DType::F32),
        dtype: format!("{:?}", dtype).to_lowercase(),
        shape: args.shape.clone(),
        results,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

pub fn render(r: &BenchReport) -> String {
    let mut s = format!(
        "{} ({} parameters) · {} · {} threads · {}\n{:<20} {:>10} {:>10} {:>12}\n",
        r.shape,
        r.params,
        r.dtype,
        r.threads,
        r.device,
        "benchmark",
        "median s",
        "min s",
        "tokens/s"
    );
    for x in &r.results {
        s += &format!(
            "{:<20} {:>10.4} {:>10.4} {:>12.0}\n",
            x.name, x.median_s, x.min_s, x.tokens_per_s
        );
    }
    if let Some(b) = r.peak_rss_bytes {
        s += &format!("peak resident memory {}\n", memory::gib(b));
    }
    s += &format!(
        "memory estimate of a DPO run of this shape: {}\n",
        memory::gib(r.dpo_estimate_bytes)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_their_models_parameter_counts() {
        let count = |s: &str| bench_config(s).unwrap().num_params();
        // 2 * 4096 * 256 embeddings + 4 * (4 * 256^2 + 3 * 256 * 688 + 2 * 256) + 256
        assert_eq!(count("small"), 5_261_568);
        // Qwen2.5-0.5B-Instruct: 494,032,768 parameters (tied embeddings).
        assert_eq!(count("qwen2.5-0.5b"), 494_032_768);
        assert!(bench_config("7b").is_err());
    }
}
