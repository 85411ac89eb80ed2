//! `gaplab bench`: throughput of the training steps and of sampling on a fixed model shape,
//! and the memory estimate of a DPO run of that shape.
//!
//! The default shape (`--shape small`) is the 5.3M-parameter Llama that docs/PERFORMANCE.md
//! compares against PyTorch eager (benches/pytorch_step.py runs the same shapes): hidden 256,
//! 4 layers, 8 heads, intermediate 688, vocab 4096; 8 pairs of 128-token rows (32 prompt + 96
//! response tokens). The other shapes are real models' architectures with random weights
//! (SmolLM2-135M to Llama-3-8B), for GPU throughput and memory (scripts/gpu-check.sh);
//! `--estimate-only` prints the memory estimate of any of them without allocating anything,
//! so the 7-8B shapes can be planned on a laptop.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Var};
use serde::Serialize;

use crate::data::TokenizedPair;
use crate::model::lora::{self, LoraConfig, Module};
use crate::model::SeqBatch;
use crate::model::{sample, CausalLm, DeviceSpec, ModelConfig, ScratchSpec};
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
    /// Model shape: small (5.3M-parameter Llama), smollm2-135m, qwen2.5-0.5b, llama-3.2-1b,
    /// qwen2.5-7b, mistral-7b or llama-3-8b (that model's architecture, random weights).
    #[arg(long, default_value = "small")]
    pub shape: String,
    /// Print the memory estimate of a DPO run of this shape, batch, dtype and flags, and exit
    /// without allocating anything (`--device cuda:N` estimates for a GPU without opening it).
    #[arg(long)]
    pub estimate_only: bool,
    /// Train LoRA adapters of rank R on every linear layer (alpha 2R, no dropout, PEFT's
    /// initialisation) on a frozen base instead of every weight; the reference is the base
    /// with the adapters off.
    #[arg(long, value_name = "R")]
    pub lora: Option<usize>,
    /// Recompute each layer's activations in backward instead of keeping them (the timed
    /// steps and the estimate).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Reference log-probs computed once before the timed DPO steps, as `train.precompute_ref`
    /// caches them: no reference model during the steps.
    #[arg(long)]
    pub precompute_ref: bool,
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
    /// model, or cached log-probs with `--precompute-ref`; no gradient accumulation), to
    /// compare with the measured peak.
    pub dpo_estimate_bytes: u64,
}

/// `--estimate-only`: the estimate of a DPO run, part by part.
#[derive(Serialize, Debug)]
pub struct EstimateReport {
    pub shape: String,
    pub params: usize,
    /// Parameters the optimizer updates (the adapters' with `--lora`).
    pub trainable_params: usize,
    /// Where the estimate is for: "cpu" (fused kernels) or a GPU.
    pub device: String,
    pub dtype: String,
    pub pairs: usize,
    pub prompt_len: usize,
    pub response_len: usize,
    /// Rows of the micro-batch (two per pair).
    pub rows: usize,
    pub lora_r: Option<usize>,
    pub lora_alpha: Option<f64>,
    pub gradient_checkpointing: bool,
    pub precompute_ref: bool,
    /// "model", "adapters off", "cached" (where the reference log-probs come from).
    pub reference: String,
    pub parts: Vec<EstimatePart>,
    /// Weights, gradients and optimizer state.
    pub model_state_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Serialize, Debug)]
pub struct EstimatePart {
    pub what: String,
    pub bytes: u64,
}

/// A model `--shape` names: its config.json's numbers (weights are random).
struct BenchShape {
    name: &'static str,
    arch: crate::model::Arch,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    tied: bool,
    max_positions: usize,
    rope_theta: f64,
}

/// The shapes of `--shape`, smallest first. Qwen2 carries q/k/v biases (its arch implies
/// them); Mistral-7B is v0.3 (32768-token vocabulary, no sliding window).
const SHAPE_TABLE: &[BenchShape] = &[
    BenchShape {
        name: "small",
        arch: crate::model::Arch::Llama,
        hidden: 256,
        intermediate: 688,
        layers: 4,
        heads: 8,
        kv_heads: 8,
        vocab: 4096,
        tied: false,
        max_positions: 512,
        rope_theta: 10000.0,
    },
    // HuggingFaceTB/SmolLM2-135M
    BenchShape {
        name: "smollm2-135m",
        arch: crate::model::Arch::Llama,
        hidden: 576,
        intermediate: 1536,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        vocab: 49152,
        tied: true,
        max_positions: 8192,
        rope_theta: 100000.0,
    },
    // Qwen/Qwen2.5-0.5B-Instruct
    BenchShape {
        name: "qwen2.5-0.5b",
        arch: crate::model::Arch::Qwen2,
        hidden: 896,
        intermediate: 4864,
        layers: 24,
        heads: 14,
        kv_heads: 2,
        vocab: 151936,
        tied: true,
        max_positions: 32768,
        rope_theta: 1000000.0,
    },
    // meta-llama/Llama-3.2-1B
    BenchShape {
        name: "llama-3.2-1b",
        arch: crate::model::Arch::Llama,
        hidden: 2048,
        intermediate: 8192,
        layers: 16,
        heads: 32,
        kv_heads: 8,
        vocab: 128256,
        tied: true,
        max_positions: 131072,
        rope_theta: 500000.0,
    },
    // Qwen/Qwen2.5-7B-Instruct
    BenchShape {
        name: "qwen2.5-7b",
        arch: crate::model::Arch::Qwen2,
        hidden: 3584,
        intermediate: 18944,
        layers: 28,
        heads: 28,
        kv_heads: 4,
        vocab: 152064,
        tied: false,
        max_positions: 32768,
        rope_theta: 1000000.0,
    },
    // mistralai/Mistral-7B-v0.3
    BenchShape {
        name: "mistral-7b",
        arch: crate::model::Arch::Mistral,
        hidden: 4096,
        intermediate: 14336,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        vocab: 32768,
        tied: false,
        max_positions: 32768,
        rope_theta: 1000000.0,
    },
    // meta-llama/Meta-Llama-3-8B
    BenchShape {
        name: "llama-3-8b",
        arch: crate::model::Arch::Llama,
        hidden: 4096,
        intermediate: 14336,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        vocab: 128256,
        tied: false,
        max_positions: 8192,
        rope_theta: 500000.0,
    },
];

/// The names `--shape` takes.
pub fn shape_names() -> Vec<&'static str> {
    SHAPE_TABLE.iter().map(|s| s.name).collect()
}

/// The model config of the shape `--shape` names.
fn bench_config(shape: &str) -> Result<ModelConfig> {
    let Some(s) = SHAPE_TABLE.iter().find(|s| s.name == shape) else {
        bail!(
            "--shape {shape}: expected one of {}",
            shape_names().join(", ")
        );
    };
    let spec = ScratchSpec {
        arch: s.arch,
        hidden_size: s.hidden,
        intermediate_size: s.intermediate,
        num_hidden_layers: s.layers,
        num_attention_heads: s.heads,
        num_key_value_heads: s.kv_heads,
        max_position_embeddings: s.max_positions,
        rope_theta: s.rope_theta,
        tie_word_embeddings: s.tied,
        seed: 0,
    };
    ModelConfig::from_scratch(&spec, s.vocab)
}

/// `--lora R`: every linear layer, alpha 2R (a common choice; PEFT's default dropout of 0).
fn lora_config(r: usize) -> LoraConfig {
    LoraConfig {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        targets: Module::ALL.to_vec(),
        use_rslora: false,
    }
}

/// The run the estimate is for: a DPO step on `args.pairs` pairs, no gradient accumulation, no
/// eval batch; `fused_kernels` on the CPU.
fn dpo_shape(args: &BenchArgs, dtype: DType, on_cpu: bool) -> memory::RunShape {
    let lora = args.lora.map(lora_config);
    let reference = if args.precompute_ref {
        memory::Reference::Cached
    } else if lora.is_some() {
        memory::Reference::AdaptersOff
    } else {
        memory::Reference::Model
    };
    memory::RunShape {
        dtype_bytes: dtype.size_in_bytes(),
        reference,
        grad_accum: 1,
        rows: 2 * args.pairs,
        seq_len: args.prompt_len + args.response_len,
        response_tokens: 2 * args.pairs * args.response_len,
        eval_rows: 0,
        eval_response_tokens: 0,
        runtime_bytes: if on_cpu {
            memory::CPU_RUNTIME_BYTES
        } else {
            memory::CUDA_RUNTIME_BYTES
        },
        fused_kernels: on_cpu,
        lora: lora.as_ref().map(memory::LoraShape::new),
        recompute: args.gradient_checkpointing,
    }
}

/// Whether `--device` names the CPU, decided without opening a GPU ("auto" is a GPU when this
/// gaplab is built with CUDA).
fn names_cpu(device: &str) -> Result<bool> {
    let spec: DeviceSpec = device
        .parse()
        .map_err(|e| anyhow::anyhow!("--device {device}: {e}"))?;
    Ok(match spec {
        DeviceSpec::Cpu => true,
        DeviceSpec::Auto => !candle_core::utils::cuda_is_available(),
        DeviceSpec::Cuda(_) => false,
    })
}

/// `--estimate-only`: the estimate of a DPO run of `args`, computed from the shape alone.
pub fn estimate_only(args: &BenchArgs) -> Result<EstimateReport> {
    let cfg = bench_config(&args.shape)?;
    let dtype = crate::model::parse_dtype(&args.device.dtype)
        .with_context(|| format!("--dtype {}: expected f32, bf16 or f16", args.device.dtype))?;
    let on_cpu = names_cpu(&args.device.device)?;
    let shape = dpo_shape(args, dtype, on_cpu);
    let e = memory::estimate(&cfg, &shape);
    let lora = args.lora.map(lora_config);
    let reference = match shape.reference {
        memory::Reference::Model => "model",
        memory::Reference::AdaptersOff => "adapters off",
        memory::Reference::Cached => "cached",
        memory::Reference::None => "none",
    };
    Ok(EstimateReport {
        shape: args.shape.clone(),
        params: cfg.num_params(),
        trainable_params: lora
            .as_ref()
            .map_or(cfg.num_params(), |l| l.num_params(&cfg)),
        device: if on_cpu {
            "cpu".into()
        } else {
            let d = args.device.device.as_str();
            format!("gpu ({})", if d == "auto" { "cuda:0" } else { d })
        },
        dtype: args.device.dtype.clone(),
        pairs: args.pairs,
        prompt_len: args.prompt_len,
        response_len: args.response_len,
        rows: shape.rows,
        lora_r: lora.as_ref().map(|l| l.r),
        lora_alpha: lora.as_ref().map(|l| l.alpha),
        gradient_checkpointing: args.gradient_checkpointing,
        precompute_ref: args.precompute_ref,
        reference: reference.into(),
        parts: e
            .parts
            .iter()
            .map(|(what, bytes)| EstimatePart {
                what: what.clone(),
                bytes: *bytes,
            })
            .collect(),
        model_state_bytes: e.model_state,
        total_bytes: e.total,
    })
}

/// The estimate as `--estimate-only` prints it without `--json`.
pub fn render_estimate(r: &EstimateReport) -> String {
    let training = match (r.lora_r, r.lora_alpha) {
        (Some(rank), Some(alpha)) => format!(
            "LoRA r = {rank}, alpha {alpha} on every linear layer: {} trainable",
            r.trainable_params
        ),
        _ => "full fine-tuning".into(),
    };
    let recompute = if r.gradient_checkpointing {
        ", activations recomputed"
    } else {
        ""
    };
    let mut s = format!(
        "{} ({} parameters) · {training}{recompute} · {} · {}\n\
         DPO step on {} pair{} ({} rows of {} tokens: {} prompt + {} response), reference: {}\n",
        r.shape,
        r.params,
        r.dtype,
        r.device,
        r.pairs,
        if r.pairs == 1 { "" } else { "s" },
        r.rows,
        r.prompt_len + r.response_len,
        r.prompt_len,
        r.response_len,
        r.reference
    );
    let width = r.parts.iter().map(|p| p.what.len()).max().unwrap_or(0);
    for p in &r.parts {
        s += &format!("  {:<width$}  {:>10}\n", p.what, memory::gib(p.bytes));
    }
    s += &format!(
        "  {:<width$}  {:>10}\n",
        "estimated peak",
        memory::gib(r.total_bytes)
    );
    s
}

/// A policy, its optimizer's variables and its reference.
type Trainable = (CausalLm, Vec<(String, Var)>, CausalLm);

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
    if args.lora == Some(0) {
        bail!("--lora: the rank must be at least 1");
    }
    if args.estimate_only {
        let report = estimate_only(args)?;
        if args.json {
            print(&(serde_json::to_string_pretty(&report)? + "\n"));
        } else {
            print(&render_estimate(&report));
        }
        return Ok(());
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
    let lora = args.lora.map(lora_config);
    let recompute = args.gradient_checkpointing;
    // The trained policy, its optimizer's variables and its reference: a deep copy of the
    // weights, or with `--lora` the same base with the adapters off (no copy).
    let trainable = || -> Result<Trainable> {
        let base = random(0)?;
        let model = match &lora {
            Some(l) => {
                let adapters = lora::init_adapters(&cfg, l, 0, dev, dtype)?;
                base.with_adapters(l.clone(), adapters)?
            }
            None => base,
        };
        let reference = match &lora {
            Some(_) => model.without_adapters()?,
            None => model.deep_copy()?,
        };
        let (policy, vars) = model.into_trainable()?;
        Ok((policy, vars, reference))
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
        let (policy, vars, reference) = trainable()?;
        let mut reference = Some(reference);
        // Cached log-probs: scored once by the reference, which is then dropped.
        let cached = match (&reference, args.precompute_ref) {
            (Some(r), true) => Some(reference_logps(r, &pair_batch)?),
            _ => None,
        };
        if cached.is_some() {
            reference = None;
        }
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
                    let scored;
                    let r = match (&cached, &reference) {
                        (Some(c), _) => c,
                        (None, Some(m)) => {
                            scored = reference_logps(m, &pair_batch)?;
                            &scored
                        }
                        (None, None) => bail!("no reference log-probs"),
                    };
                    train::preference_step(
                        &policy,
                        Some(r),
                        &pair_batch,
                        &obj,
                        &mut opt,
                        Some(1.0),
                        recompute,
                    )?;
                    Ok(())
                },
            )?);
        }
        if let Some(reference) = &reference {
            results.push(time(
                args.iters,
                args.warmup,
                pair_batch.num_tokens(),
                "reference_forward",
                || {
                    reference_logps(reference, &pair_batch)?;
                    Ok(())
                },
            )?);
        }
    }
    if want("simpo") {
        // No reference forward: also the cost of a DPO step with `precompute_ref = true`.
        let (policy, vars, _) = trainable()?;
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
                    recompute,
                )?;
                Ok(())
            },
        )?);
    }
    if want("sft") {
        let (policy, vars, _) = trainable()?;
        let mut opt = AdamW::new(vars, opt_cfg)?;
        let counted = sft_batch.response_lens.clone();
        results.push(time(
            args.iters,
            args.warmup,
            sft_batch.num_tokens(),
            "sft_step",
            || {
                train::sft_step(
                    &policy,
                    &sft_batch,
                    &counted,
                    &mut opt,
                    Some(1.0),
                    recompute,
                )?;
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
    let shape = dpo_shape(args, dtype, dev.is_cpu());
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
        "memory estimate of a DPO run of this shape and batch: {}\n",
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
        // transformers 5.24's count of each model built from its config (tied embeddings
        // counted once).
        assert_eq!(count("smollm2-135m"), 134_515_008);
        assert_eq!(count("qwen2.5-0.5b"), 494_032_768);
        assert_eq!(count("llama-3.2-1b"), 1_235_814_400);
        assert_eq!(count("qwen2.5-7b"), 7_615_616_512);
        assert_eq!(count("mistral-7b"), 7_248_023_552);
        assert_eq!(count("llama-3-8b"), 8_030_261_248);
        assert!(bench_config("7b").is_err());
        assert_eq!(shape_names().len(), SHAPE_TABLE.len());
    }

    fn args(shape: &str, extra: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let mut argv = vec!["bench", "--estimate-only", "--shape", shape];
        argv.extend(extra);
        <Cli as clap::Parser>::parse_from(argv).bench
    }

    #[test]
    fn lora_counts_are_pefts() {
        // PEFT 0.21, r = 16, target_modules = "all-linear" on each model built from its
        // config (meta device).
        let trainable = |shape: &str| {
            estimate_only(&args(shape, &["--lora", "16"]))
                .unwrap()
                .trainable_params
        };
        assert_eq!(trainable("llama-3-8b"), 41_943_040);
        assert_eq!(trainable("qwen2.5-7b"), 40_370_176);
        assert_eq!(trainable("smollm2-135m"), 4_884_480);
    }

    #[test]
    fn estimate_only_covers_every_shape_and_flag() {
        for shape in shape_names() {
            let gpu = ["--device", "cuda:0", "--dtype", "bf16"];
            let full = estimate_only(&args(shape, &gpu)).unwrap();
            assert_eq!(full.trainable_params, full.params);
            assert_eq!(full.device, "gpu (cuda:0)");
            let lora =
                estimate_only(&args(shape, &[&gpu[..], &["--lora", "16"]].concat())).unwrap();
            assert!(lora.model_state_bytes < full.model_state_bytes, "{shape}");
            assert_eq!(lora.reference, "adapters off");
            let recomputed = estimate_only(&args(
                shape,
                &[&gpu[..], &["--lora", "16", "--gradient-checkpointing"]].concat(),
            ))
            .unwrap();
            assert!(recomputed.total_bytes < lora.total_bytes, "{shape}");
            let cached =
                estimate_only(&args(shape, &[&gpu[..], &["--precompute-ref"]].concat())).unwrap();
            assert!(cached.total_bytes < full.total_bytes, "{shape}");
            assert_eq!(
                full.total_bytes,
                full.parts.iter().map(|p| p.bytes).sum::<u64>()
            );
        }
        let cpu = estimate_only(&args("small", &[])).unwrap();
        assert_eq!((cpu.device.as_str(), cpu.rows), ("cpu", 16));
        let text = render_estimate(&cpu);
        assert!(
            text.contains("16 rows of 128 tokens: 32 prompt + 96 response")
                && text.contains("reference model")
                && text.contains("estimated peak"),
            "{text}"
        );
        assert!(estimate_only(&args("small", &["--device", "tpu"])).is_err());
        assert!(estimate_only(&args("small", &["--dtype", "f8"])).is_err());
    }

    #[test]
    fn timed_lora_steps_run_with_recomputation() {
        let mut a = args(
            "small",
            &[
                "--lora",
                "4",
                "--gradient-checkpointing",
                "--only",
                "dpo,sft",
                "--pairs",
                "1",
                "--prompt-len",
                "4",
                "--response-len",
                "4",
            ],
        );
        a.estimate_only = false;
        (a.iters, a.warmup) = (1, 0);
        let r = measure(&a, &Device::Cpu, DType::F32).unwrap();
        let names: Vec<&str> = r.results.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["dpo_step", "reference_forward", "sft_step"]);
        a.precompute_ref = true;
        a.only = vec!["dpo".into()];
        let r = measure(&a, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(r.results.len(), 1);
    }
}
