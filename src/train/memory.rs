//! How much memory a run needs, estimated before any weight is loaded, and how much the device
//! has: a run that cannot fit is refused with the breakdown instead of dying halfway through its
//! first step (or, on a shared GPU box, taking the machine down with it).
//!
//! The estimate follows what gaplab keeps alive: weights, gradients, AdamW moments (and f32
//! master weights in half precision), the reference (a second model, the base with the
//! adapters off, or cached log-probs), and the largest of four transient peaks: a training
//! micro-batch (the activations backward needs, and logits at response positions with their
//! gradients), an eval batch (logits and the full log-softmax the entropy diagnostics read),
//! the reference's forward pass, and scoring the data with the reference when its log-probs are
//! cached.
//!
//! A LoRA run keeps the base frozen in the training dtype: gradients and AdamW state exist for
//! the adapters only, which is what lets a 7-8B model train on one GPU. With activation
//! recomputation (gradient checkpointing) backward keeps each layer's input instead of all of
//! its activations, and recomputes one layer at a time.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use crate::data::TokenizedPair;
use crate::model::lora::{LoraConfig, Module};
use crate::model::ModelConfig;

/// Where the reference log-probs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// SimPO and SFT need none.
    None,
    /// A second model, run every step.
    Model,
    /// Computed once by a temporary second model (a LoRA run: the base with its adapters
    /// off), then read from disk.
    Cached,
    /// A LoRA run's base with the adapters off: the policy's own frozen weights, run without a
    /// graph every step (one more forward, no weights of its own).
    AdaptersOff,
}

/// The adapters of a LoRA run, as far as memory goes.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraShape {
    pub r: usize,
    pub targets: Vec<Module>,
    /// LoRA dropout's probability: above 0 every targeted module keeps a dropped copy of its
    /// input (and the mask) for backward.
    pub dropout: f64,
}

impl LoraShape {
    pub fn new(cfg: &LoraConfig) -> Self {
        Self {
            r: cfg.r,
            targets: cfg.targets.clone(),
            dropout: cfg.dropout,
        }
    }

    /// Trainable parameters: what PEFT counts for the same adapters.
    pub fn params(&self, m: &ModelConfig) -> usize {
        LoraConfig {
            r: self.r,
            alpha: 2.0 * self.r as f64,
            dropout: self.dropout,
            targets: self.targets.clone(),
            use_rslora: false,
        }
        .num_params(m)
    }
}

/// The shape of a run, as far as memory goes.
#[derive(Clone, Debug, PartialEq)]
pub struct RunShape {
    /// Bytes per weight and activation element (4 for f32, 2 for bf16 / f16).
    pub dtype_bytes: usize,
    pub reference: Reference,
    pub grad_accum: usize,
    /// Rows of a training micro-batch (2 per pair for preference objectives).
    pub rows: usize,
    /// The longest row, in tokens (batches are padded to it).
    pub seq_len: usize,
    /// At most this many positions of a micro-batch reach the LM head (response tokens).
    pub response_tokens: usize,
    /// The same for an eval (or reference-scoring) batch.
    pub eval_rows: usize,
    pub eval_response_tokens: usize,
    /// What the process needs besides tensors (code, tokenizer, data; a CUDA context).
    pub runtime_bytes: u64,
    /// The CPU's fused kernels (norm, rope, softmax, SwiGLU with their own backward) keep
    /// fewer intermediates than the composite candle ops other devices use.
    pub fused_kernels: bool,
    /// LoRA adapters on a frozen base (None: full fine-tuning).
    pub lora: Option<LoraShape>,
    /// Activation recomputation (`train.gradient_checkpointing`).
    pub recompute: bool,
}

/// [`RunShape::runtime_bytes`] on the CPU and on a GPU (the CUDA context and cuBLAS workspace).
pub const CPU_RUNTIME_BYTES: u64 = 100 << 20;
pub const CUDA_RUNTIME_BYTES: u64 = 600 << 20;

/// The estimate, part by part.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// (what, bytes), in the order printed.
    pub parts: Vec<(String, u64)>,
    pub total: u64,
    /// Weights, gradients and optimizer state: what no batch setting can shrink.
    pub model_state: u64,
    /// Whether the run trains LoRA adapters and recomputes activations (the advice of a
    /// refusal depends on them).
    pub lora: bool,
    pub recompute: bool,
}

const GIB: f64 = (1u64 << 30) as f64;

/// "3.25 GiB", or "412 MiB" below a GiB.
pub fn gib(bytes: u64) -> String {
    if bytes as f64 >= GIB {
        format!("{:.2} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Elements one layer keeps per token for backward, besides attention scores: the layer
/// input, the normed input, q/k/v, the rotated q/k and their contiguous transposes, the
/// attention output and its transpose, the output projection, the residual sum, the second
/// norm, gate, up, their product and the down projection.
fn layer_elems_per_token(m: &ModelConfig) -> usize {
    let h = m.hidden_size;
    let kv = m.num_key_value_heads * m.head_dim;
    11 * h + 5 * kv + 4 * m.intermediate_size
}

/// Elements a LoRA layer keeps per token for backward beyond what full fine-tuning keeps. A
/// targeted module y = x Wᵀ + s · (drop(x) Aᵀ) Bᵀ is one graph node (`model/lora_op.rs`)
/// holding its input and output, as a plain linear layer does; backward recomputes the
/// [tokens, r] product. With dropout it also holds the mask, the size of its input.
fn lora_elems_per_token(m: &ModelConfig, l: &LoraShape) -> usize {
    l.targets
        .iter()
        .map(|t| {
            let (input, _) = t.features(m);
            if l.dropout > 0.0 {
                input
            } else {
                0
            }
        })
        .sum()
}

/// Bytes recomputation keeps for `tokens` tokens through `layers` layers whose input takes
/// `input` bytes a token: every layer's input, and the head's (the last layer's output and
/// its norm).
fn layer_inputs(tokens: u64, layers: u64, input: u64) -> u64 {
    tokens * (layers + 2) * input
}

pub fn estimate(m: &ModelConfig, s: &RunShape) -> Estimate {
    let p = m.num_params() as u64;
    let d = s.dtype_bytes as u64;
    let half = s.dtype_bytes < 4;
    let v = m.vocab_size as u64;
    let mut parts: Vec<(String, u64)> = Vec::new();
    // Accumulating over micro-batches keeps a second set of gradients.
    let grad_sets = if s.grad_accum > 1 { 2 } else { 1 };
    // AdamW's two f32 moments, and in half precision the f32 master copy the update applies to.
    let (optimizer_label, optimizer_bytes) = if half {
        ("AdamW moments and f32 master weights", 12)
    } else {
        ("AdamW moments", 8)
    };
    match &s.lora {
        None => {
            parts.push(("weights".into(), p * d));
            // Tied embeddings get two gradients (the lookup and the LM head) that backward sums
            // into a third: at a 150k vocabulary that is a gigabyte, measured on Qwen2.5-0.5B's
            // shape.
            let tied = if m.tie_word_embeddings {
                2 * v * m.hidden_size as u64 * d
            } else {
                0
            };
            parts.push(("gradients".into(), p * d * grad_sets + tied));
            parts.push((optimizer_label.into(), p * optimizer_bytes));
        }
        Some(l) => {
            // The base is frozen in the training dtype: no gradients, moments or master copy
            // (and so no tied-embedding gradients either).
            let n = l.params(m) as u64;
            parts.push(("base weights (frozen)".into(), p * d));
            parts.push((
                format!(
                    "adapter weights (r = {}, {} modules a layer)",
                    l.r,
                    l.targets.len()
                ),
                n * d,
            ));
            parts.push(("adapter gradients".into(), n * d * grad_sets));
            parts.push((format!("adapter {optimizer_label}"), n * optimizer_bytes));
        }
    }
    let model_state = parts.iter().map(|(_, b)| b).sum();
    match s.reference {
        Reference::Model => parts.push(("reference model".into(), p * d)),
        Reference::None | Reference::Cached | Reference::AdaptersOff => {}
    }

    // Transient peaks: the largest of training, eval, the reference's forward and reference
    // caching.
    let (rows, t) = (s.rows as u64, s.seq_len as u64);
    let tokens = rows * t;
    let layers = m.num_hidden_layers as u64;
    let heads = m.num_attention_heads as u64;
    let h = m.hidden_size as u64;
    // The fused softmax runs on f32 CPU tensors; everything else (GPUs, half precision) uses
    // the chunked attention of model::attention, which keeps no score matrix.
    let fused_attention = s.fused_kernels && !half;
    let attn_bytes = if fused_attention {
        // Scores, probabilities and the scaled scores the fused causal softmax reads, per key.
        // (Three copies matched measured CPU peaks within 10% on 128- to 512-token rows, where
        // two fell 25-40% short.)
        3 * heads * t * d
    } else {
        // The chunked attention's output and each row's log-sum-exp.
        h * d + heads * 4
    };
    let extra_bytes = match (s.fused_kernels, half) {
        (true, false) => 0,
        // The fused kernels run on f32 copies of half-precision activations.
        (true, true) => 4 * h * 4,
        // The composite norms, rope and SwiGLU keep their intermediates.
        (false, _) => 8 * h * 4 + 4 * h * d + 2 * m.intermediate_size as u64 * d,
    };
    // A layer without a graph (eval, the reference): the base layer's activations.
    let base_layer = layer_elems_per_token(m) as u64 * d + attn_bytes + extra_bytes;
    let per_layer = base_layer
        + s.lora
            .as_ref()
            .map_or(0, |l| lora_elems_per_token(m, l) as u64 * d);
    // The chunked attention works on a few score blocks at once.
    let chunks = if fused_attention {
        0
    } else {
        4 * (tokens * heads * t * 4).min(crate::model::attention::CHUNK_BYTES as u64)
    };
    let widen = |bytes: u64| {
        if s.fused_kernels && half {
            // The CPU has no bf16/f16 matmul: candle widens both operands and the product of
            // every one to f32. Measured: peaks 1.65-1.7x the count above (bench shapes,
            // 2026-11-27).
            bytes * 17 / 10
        } else {
            bytes
        }
    };
    // Logits at response positions and, in half precision, their f32 copy; backward adds the
    // gradient of both.
    let response = s.response_tokens as u64;
    let logits_forward = response * v * if half { d + 4 } else { 4 };
    let logits = response * v * if half { 2 * d + 8 } else { 8 };
    let rows_label = format!("{} rows of {} tokens", s.rows, s.seq_len);
    let logits_label = format!("logits ({} response positions)", s.response_tokens);
    let train: Vec<(String, u64)> = if s.recompute {
        // Backward of the head first (logits and their gradients), then of one layer at a
        // time: its recomputed activations and their gradients, while the logits themselves
        // may still be held by the loss.
        let inputs = widen(layer_inputs(tokens, layers, h * d));
        let one_layer = widen(2 * tokens * per_layer + chunks);
        let stack = (
            format!("layer inputs ({rows_label}, kept for recomputation)"),
            inputs,
        );
        // The head's backward buffers (the logits' gradient) are not handed back before the
        // layers' backward runs: measured on the CPU (SmolLM2-135M shape, 4 x 512 tokens,
        // full and LoRA), the peak is the sum of both, not the larger one.
        vec![
            stack,
            ("one layer recomputed in backward".into(), one_layer),
            (format!("{logits_label} and their gradients"), logits),
        ]
    } else {
        // Backward holds one more layer's worth of gradients of activations at a time.
        let activations = widen(tokens * per_layer * (layers + 1) + chunks);
        vec![
            (format!("activations ({rows_label})"), activations),
            (logits_label, logits),
        ]
    };
    let train_peak: u64 = train.iter().map(|(_, b)| b).sum();

    // Eval: no graph (one layer's activations), logits plus log-softmax, its exp and their
    // product for the entropy diagnostics.
    let eval_tokens = s.eval_rows as u64 * t;
    let eval_peak = eval_tokens * per_layer + s.eval_response_tokens as u64 * v * (d + 12);
    // The reference scores the training batch without a graph before the policy's forward.
    let reference_peak = match s.reference {
        Reference::Model | Reference::AdaptersOff => tokens * base_layer + logits_forward,
        Reference::None | Reference::Cached => 0,
    };
    let caching_peak = if s.reference == Reference::Cached {
        // Full fine-tuning scores with a temporary second model; a LoRA run with its own base.
        let second_model = if s.lora.is_some() { 0 } else { p * d };
        second_model + eval_tokens * base_layer + s.eval_response_tokens as u64 * v * (d + 4)
    } else {
        0
    };
    if train_peak >= eval_peak.max(reference_peak).max(caching_peak) {
        parts.extend(train);
    } else if eval_peak >= reference_peak.max(caching_peak) {
        parts.push(("eval batch (logits and log-softmax)".into(), eval_peak));
    } else if reference_peak >= caching_peak {
        parts.push((format!("reference forward ({rows_label})"), reference_peak));
    } else if s.lora.is_some() {
        parts.push((
            "caching reference log-probs (adapters off)".into(),
            caching_peak,
        ));
    } else {
        parts.push((
            "caching reference log-probs (a second model)".into(),
            caching_peak,
        ));
    }
    parts.push(("runtime".into(), s.runtime_bytes));
    let total = parts.iter().map(|(_, b)| b).sum();
    Estimate {
        parts,
        total,
        model_state,
        lora: s.lora.is_some(),
        recompute: s.recompute,
    }
}

/// The shape of a run on `data` (the longest rows decide the padding), with `lora` adapters on
/// a frozen base (None: full fine-tuning) and activation recomputation when `recompute`.
#[allow(clippy::too_many_arguments)]
pub fn run_shape(
    dtype: DType,
    reference: Reference,
    preference: bool,
    batch_size: usize,
    grad_accum: usize,
    eval_batch_size: usize,
    train: &[TokenizedPair],
    eval: &[TokenizedPair],
    lora: Option<&LoraConfig>,
    recompute: bool,
) -> RunShape {
    let rows_per_pair = if preference { 2 } else { 1 };
    let seq_len = train
        .iter()
        .chain(eval)
        .map(|p| {
            p.prompt.len()
                + if preference {
                    p.chosen.len().max(p.rejected.len())
                } else {
                    p.chosen.len()
                }
        })
        .max()
        .unwrap_or(0);
    // The `n` pairs with the most response tokens bound any batch of `n`.
    let top = |pairs: &[TokenizedPair], n: usize| -> usize {
        let mut r: Vec<usize> = pairs
            .iter()
            .map(|p| p.chosen.len() + if preference { p.rejected.len() } else { 0 })
            .collect();
        r.sort_unstable_by(|a, b| b.cmp(a));
        r.iter().take(n).sum()
    };
    let all: Vec<TokenizedPair> = train.iter().chain(eval).cloned().collect();
    RunShape {
        dtype_bytes: dtype.size_in_bytes(),
        reference,
        grad_accum,
        rows: batch_size.min(train.len().max(1)) * rows_per_pair,
        seq_len,
        response_tokens: top(train, batch_size),
        eval_rows: eval_batch_size * 2,
        eval_response_tokens: top(&all, eval_batch_size),
        runtime_bytes: CPU_RUNTIME_BYTES,
        fused_kernels: true,
        lora: lora.map(LoraShape::new),
        recompute,
    }
}

/// Memory the device can give this run now: the CPU's available memory (within this
/// process's cgroup limit), or a GPU's free memory.
pub fn available(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            let avail = meminfo
                .lines()
                .find(|l| l.starts_with("MemAvailable:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()?
                * 1024;
            Some(cgroup_room().map_or(avail, |room| room.min(avail)))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _total)| free as u64),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// What a cgroup v2 memory limit leaves (limit - current), when one is set.
fn cgroup_room() -> Option<u64> {
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?;
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// Estimates the memory of a run of `cfg` (its SFT stage when `sft` is given) on `device`,
/// refuses it when it cannot fit (unless `train.memory_check = false`), and returns the
/// estimate as a line for the log.
pub fn plan_run(
    cfg: &crate::config::RunConfig,
    sft: Option<&crate::config::SftSection>,
    model: &ModelConfig,
    device: &Device,
    train: &[TokenizedPair],
    eval: &[TokenizedPair],
) -> Result<String> {
    plan(cfg, sft, model, Some(device), train, eval)
}

/// [`plan_run`] for a GPU this machine cannot open (`gaplab check` of a GPU workspace on a
/// laptop): the estimate for `train.device` with nothing known about its free memory, so only
/// `train.max_memory_gb` can refuse.
pub fn plan_elsewhere(
    cfg: &crate::config::RunConfig,
    model: &ModelConfig,
    train: &[TokenizedPair],
    eval: &[TokenizedPair],
) -> Result<String> {
    plan(cfg, None, model, None, train, eval)
}

fn plan(
    cfg: &crate::config::RunConfig,
    sft: Option<&crate::config::SftSection>,
    model: &ModelConfig,
    device: Option<&Device>,
    train: &[TokenizedPair],
    eval: &[TokenizedPair],
) -> Result<String> {
    let dtype = cfg.train.dtype.dtype();
    let lora = cfg.lora_settings()?;
    let (lora, recompute) = (lora.as_ref(), cfg.train.gradient_checkpointing);
    let (reference, preference, batch, accum) = match sft {
        Some(s) => (Reference::None, false, s.batch_size, 1),
        None => (
            if !cfg.train.objective().needs_reference() {
                Reference::None
            } else if cfg.train.precompute_ref {
                Reference::Cached
            } else if lora.is_some() {
                Reference::AdaptersOff
            } else {
                Reference::Model
            },
            true,
            cfg.train.batch_size,
            cfg.train.grad_accum,
        ),
    };
    let eval = &eval[..eval.len().min(cfg.eval.pairs)];
    let mut shape = run_shape(
        dtype,
        reference,
        preference,
        batch,
        accum,
        cfg.eval.batch_size,
        train,
        eval,
        lora,
        recompute,
    );
    if !device.is_some_and(Device::is_cpu) {
        shape.runtime_bytes = CUDA_RUNTIME_BYTES;
        shape.fused_kernels = false;
    }
    let mut e = estimate(model, &shape);
    if sft.is_none() {
        if let Some(dir) = &cfg.judge.reward_model {
            // Loaded f32 on the CPU, in the run's dtype elsewhere (train::judge::RewardJudge).
            let bytes_per_weight = if device.is_some_and(Device::is_cpu) {
                4
            } else {
                dtype.size_in_bytes()
            };
            let summary = crate::model::reward::RewardModel::check_dir(dir)
                .with_context(|| format!("judge.reward_model = \"{}\"", dir.display()))?;
            add_part(
                &mut e,
                "reward model (judge)",
                reward_model_bytes(&summary, bytes_per_weight),
            );
        }
    }
    let (label, avail) = match device {
        Some(d) => (crate::model::device_label(d, dtype), available(d)),
        None => {
            let label = crate::model::device_label(&Device::Cpu, dtype);
            let place = format!("{} (not on this machine)", cfg.train.device);
            (label.replacen("cpu", &place, 1), None)
        }
    };
    if cfg.train.memory_check {
        check(&e, &label, avail, cfg.train.max_memory_gb)?;
    }
    Ok(render(&e, &label, avail))
}

/// Bytes a checked reward-model folder takes in memory at `bytes_per_weight`: its stored bytes
/// rescaled from the stored dtype (the first one; reward models store one).
pub fn reward_model_bytes(
    summary: &crate::model::safetensors_check::Summary,
    bytes_per_weight: usize,
) -> u64 {
    let stored = match summary.dtypes.first().map(String::as_str) {
        Some("f64") | Some("i64") | Some("u64") => 8,
        Some("bf16") | Some("f16") | Some("i16") | Some("u16") => 2,
        Some("i8") | Some("u8") | Some("bool") | Some("f8_e4m3") | Some("f8_e5m2") => 1,
        _ => 4,
    };
    summary.bytes / stored * bytes_per_weight as u64
}

/// Adds a part that lives for the whole run (like the reference model) to an estimate.
fn add_part(e: &mut Estimate, what: &str, bytes: u64) {
    e.parts.push((what.to_string(), bytes));
    e.total += bytes;
}

/// The estimate as printed before training and by `gaplab check`.
pub fn render(e: &Estimate, device: &str, available: Option<u64>) -> String {
    let parts: Vec<String> = e
        .parts
        .iter()
        .map(|(what, b)| format!("{what} {}", gib(*b)))
        .collect();
    let avail = match available {
        Some(a) => format!("{} available", gib(a)),
        None => "available memory unknown".into(),
    };
    format!(
        "memory estimate on {device}: {} ({}); {avail}",
        gib(e.total),
        parts.join(", ")
    )
}

/// Refuses a run whose estimate exceeds what the device has (`limit_gb` > 0 caps it further).
pub fn check(e: &Estimate, device: &str, available: Option<u64>, limit_gb: f64) -> Result<()> {
    let limit = (limit_gb > 0.0).then_some((limit_gb * GIB) as u64);
    let room = match (available, limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    };
    if let Some(room) = room {
        if e.total > room {
            let why = if limit.is_some_and(|l| l == room) {
                format!("train.max_memory_gb = {limit_gb}")
            } else {
                format!("{} available on {device}", gib(room))
            };
            let advice = advice(e, room);
            bail!(
                "this run needs about {} but has {why}: {}. {advice} train.memory_check = false skips this check.",
                gib(e.total),
                render(e, device, available)
            );
        }
    }
    Ok(())
}

/// What to change when `e` does not fit in `room` bytes.
fn advice(e: &Estimate, room: u64) -> String {
    if e.model_state > room {
        return if e.lora {
            format!(
                "The frozen base, the adapters and their AdamW state alone need {}: this model does not fit here whatever the batch; use a smaller model, train.dtype = \"bf16\" (the base in half precision), or a device with more memory.",
                gib(e.model_state)
            )
        } else {
            format!(
                "The weights, gradients and AdamW state alone need {}: full fine-tuning of this model does not fit here whatever the batch; train LoRA adapters instead (a [lora] section: the base stays frozen, without gradients or AdamW state), use a smaller model or a device with more memory.",
                gib(e.model_state)
            )
        };
    }
    let mut ways = vec![
        "lower train.batch_size (raise train.grad_accum to keep the batch)",
        "lower data.max_len",
    ];
    if !e.recompute {
        ways.push("set train.gradient_checkpointing = true (each layer's activations recomputed in backward)");
    }
    if !e.lora {
        ways.push("set train.precompute_ref = true (no reference model while training)");
    }
    ways.push("or train.dtype = \"bf16\"");
    format!("To fit: {}.", ways.join(", "))
}

#[cfg(test)]
mod reward_model_tests {
    use super::*;
    use crate::model::safetensors_check::Summary;

    #[test]
    fn a_reward_models_bytes_follow_the_dtype_it_is_loaded_in() {
        let summary = Summary {
            tensors: 3,
            files: 1,
            sharded: false,
            bytes: 1000,
            dtypes: vec!["bf16".into()],
            warnings: vec![],
        };
        assert_eq!(reward_model_bytes(&summary, 4), 2000);
        assert_eq!(reward_model_bytes(&summary, 2), 1000);
        let f32s = Summary {
            dtypes: vec!["f32".into()],
            ..summary
        };
        assert_eq!(reward_model_bytes(&f32s, 4), 1000);
        let mut e = Estimate {
            parts: vec![("weights".into(), 10)],
            total: 10,
            model_state: 10,
            lora: false,
            recompute: false,
        };
        add_part(&mut e, "reward model (judge)", 5);
        assert_eq!(e.total, 15);
        assert_eq!(e.parts[1], ("reward model (judge)".to_string(), 5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ScratchSpec;

    fn model() -> ModelConfig {
        let spec = ScratchSpec {
            arch: crate::model::Arch::Llama,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 128,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
            seed: 0,
        };
        ModelConfig::from_scratch(&spec, 1000).unwrap()
    }

    fn shape() -> RunShape {
        RunShape {
            dtype_bytes: 4,
            reference: Reference::Model,
            grad_accum: 1,
            rows: 4,
            seq_len: 10,
            response_tokens: 12,
            eval_rows: 2,
            eval_response_tokens: 6,
            runtime_bytes: 1 << 20,
            fused_kernels: true,
            lora: None,
            recompute: false,
        }
    }

    fn part(e: &Estimate, what: &str) -> u64 {
        e.parts
            .iter()
            .find(|(w, _)| w.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} in {:?}", e.parts))
            .1
    }

    #[test]
    fn parts_follow_the_formulas() {
        let m = model();
        let p = m.num_params() as u64;
        let e = estimate(&m, &shape());
        assert_eq!(part(&e, "weights"), 4 * p);
        assert_eq!(part(&e, "gradients"), 4 * p);
        assert_eq!(part(&e, "AdamW moments"), 8 * p);
        assert_eq!(part(&e, "reference model"), 4 * p);
        // kv = 2 heads * 16; per token: 11*64 + 5*32 + 4*128 = 1376 elements, scores 2*4*10.
        let per_layer = 1376 * 4 + 3 * 4 * 10 * 4;
        assert_eq!(part(&e, "activations"), 40 * per_layer * 3);
        assert_eq!(part(&e, "logits"), 12 * 1000 * 8);
        assert_eq!(part(&e, "runtime"), 1 << 20);
        assert_eq!(e.total, e.parts.iter().map(|x| x.1).sum::<u64>());
        assert_eq!(e.model_state, 16 * p);
    }

    #[test]
    fn half_precision_halves_weights_and_keeps_f32_optimizer_state() {
        let m = model();
        let p = m.num_params() as u64;
        let f32_est = estimate(&m, &shape());
        let bf16 = estimate(
            &m,
            &RunShape {
                dtype_bytes: 2,
                ..shape()
            },
        );
        assert_eq!(part(&bf16, "weights"), 2 * p);
        assert_eq!(part(&bf16, "reference model"), 2 * p);
        assert_eq!(part(&bf16, "AdamW moments and f32 master"), 12 * p);
        assert!(bf16.total < f32_est.total);
    }

    #[test]
    fn composite_ops_on_other_devices_need_more() {
        let m = model();
        let cpu = estimate(&m, &shape());
        let gpu = estimate(
            &m,
            &RunShape {
                fused_kernels: false,
                ..shape()
            },
        );
        assert!(part(&gpu, "activations") > part(&cpu, "activations"));
        assert_eq!(part(&gpu, "weights"), part(&cpu, "weights"));
    }

    #[test]
    fn cached_reference_and_accumulation() {
        let m = model();
        let p = m.num_params() as u64;
        let s = RunShape {
            reference: Reference::Cached,
            grad_accum: 4,
            ..shape()
        };
        let e = estimate(&m, &s);
        assert!(e.parts.iter().all(|(w, _)| w != "reference model"));
        assert_eq!(part(&e, "gradients"), 8 * p);
        // A tiny batch: scoring with the temporary reference model is the largest peak.
        let tiny = RunShape {
            rows: 1,
            seq_len: 2,
            response_tokens: 1,
            eval_rows: 1,
            eval_response_tokens: 1,
            ..s
        };
        let e = estimate(&m, &tiny);
        assert!(part(&e, "caching reference") >= 4 * p);
    }

    #[test]
    fn run_shape_takes_the_longest_rows() {
        let pair = |p: usize, c: usize, r: usize| TokenizedPair {
            prompt: vec![0; p],
            chosen: vec![1; c],
            rejected: vec![2; r],
        };
        let train = vec![pair(3, 5, 2), pair(2, 9, 4), pair(6, 1, 1)];
        let s = run_shape(
            DType::BF16,
            Reference::Model,
            true,
            2,
            1,
            4,
            &train,
            &[pair(1, 2, 20)],
            None,
            false,
        );
        assert_eq!(s.dtype_bytes, 2);
        assert_eq!((s.rows, s.seq_len), (4, 21));
        assert_eq!(s.response_tokens, 13 + 7);
        assert_eq!(s.eval_response_tokens, 22 + 13 + 7 + 2);
        let sft = run_shape(
            DType::F32,
            Reference::None,
            false,
            8,
            1,
            4,
            &train,
            &[],
            None,
            false,
        );
        assert_eq!((sft.rows, sft.seq_len, sft.response_tokens), (3, 11, 15));
    }

    #[test]
    fn refusal_names_the_numbers_and_the_way_out() {
        let e = Estimate {
            parts: vec![("weights".into(), 1 << 30), ("activations".into(), 2 << 30)],
            total: 3 << 30,
            model_state: 1 << 30,
            lora: false,
            recompute: false,
        };
        assert!(check(&e, "cpu", Some(4 << 30), 0.0).is_ok());
        assert!(check(&e, "cpu", None, 0.0).is_ok());
        let err = check(&e, "cuda:0", Some(2 << 30), 0.0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs about 3.00 GiB") && err.contains("2.00 GiB available on cuda:0"),
            "{err}"
        );
        assert!(
            err.contains("train.batch_size") && err.contains("train.memory_check"),
            "{err}"
        );
        let err = check(&e, "cpu", Some(8 << 30), 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.max_memory_gb = 1"), "{err}");
    }

    /// Meta-Llama-3-8B's shape (8,030,261,248 parameters).
    fn llama3_8b() -> ModelConfig {
        let spec = ScratchSpec {
            arch: crate::model::Arch::Llama,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            max_position_embeddings: 8192,
            rope_theta: 500000.0,
            tie_word_embeddings: false,
            seed: 0,
        };
        ModelConfig::from_scratch(&spec, 128256).unwrap()
    }

    fn all_linear(r: usize) -> LoraShape {
        LoraShape {
            r,
            targets: Module::ALL.to_vec(),
            dropout: 0.0,
        }
    }

    /// 8 pairs of 256 prompt + 768 response tokens in bf16 on a GPU.
    fn gpu_dpo(lora: Option<LoraShape>, recompute: bool) -> RunShape {
        let reference = if lora.is_some() {
            Reference::AdaptersOff
        } else {
            Reference::Model
        };
        RunShape {
            dtype_bytes: 2,
            reference,
            grad_accum: 1,
            rows: 16,
            seq_len: 1024,
            response_tokens: 16 * 768,
            eval_rows: 0,
            eval_response_tokens: 0,
            runtime_bytes: CUDA_RUNTIME_BYTES,
            fused_kernels: false,
            lora,
            recompute,
        }
    }

    fn has_no(e: &Estimate, what: &str) -> bool {
        e.parts.iter().all(|(w, _)| w != what)
    }

    #[test]
    fn trainable_parameters_are_pefts() {
        // PEFT 0.21's count for Llama-3-8B, r = 16, target_modules = "all-linear".
        assert_eq!(all_linear(16).params(&llama3_8b()), 41_943_040);
        let lora = LoraConfig {
            r: 8,
            alpha: 8.0,
            dropout: 0.1,
            targets: vec![Module::QProj, Module::VProj],
            use_rslora: true,
        };
        assert_eq!(
            LoraShape::new(&lora).params(&model()),
            lora.num_params(&model())
        );
    }

    #[test]
    fn lora_on_8b_is_dominated_by_the_frozen_bf16_base() {
        let m = llama3_8b();
        let p = m.num_params() as u64;
        let n = 41_943_040u64;
        let full = estimate(&m, &gpu_dpo(None, false));
        let lora = estimate(&m, &gpu_dpo(Some(all_linear(16)), false));
        assert!(lora.model_state < full.model_state / 7, "{lora:?}");
        assert_eq!(part(&lora, "base weights (frozen)"), 2 * p);
        assert_eq!(part(&lora, "adapter weights"), 2 * n);
        assert_eq!(part(&lora, "adapter gradients"), 2 * n);
        assert_eq!(part(&lora, "adapter AdamW moments and f32 master"), 12 * n);
        // About 16 GB of bf16 base, under 1 GB for everything the adapters add.
        assert!((16_000_000_000..16_800_000_000).contains(&lora.model_state));
        assert!(part(&lora, "base weights") as f64 / lora.model_state as f64 > 0.95);
        assert!(has_no(&lora, "gradients") && has_no(&lora, "reference model"));
        // Without recomputation LoRA keeps the activations full fine-tuning keeps (each
        // adapted layer is one node), so the whole saving is in the model state.
        assert_eq!(part(&lora, "activations"), part(&full, "activations"));
        let recomputed = estimate(&m, &gpu_dpo(Some(all_linear(16)), true));
        assert!(recomputed.total < full.total / 2, "{recomputed:?}");
        assert!(recomputed.total < 64 << 30, "{recomputed:?}");
    }

    #[test]
    fn tied_embeddings_get_no_gradient_under_lora() {
        let spec = ScratchSpec {
            tie_word_embeddings: true,
            num_key_value_heads: 2,
            ..Default::default()
        };
        let m = ModelConfig::from_scratch(&spec, 1000).unwrap();
        let l = all_linear(4);
        let n = l.params(&m) as u64;
        let s = RunShape {
            lora: Some(l),
            ..shape()
        };
        let e = estimate(&m, &s);
        assert_eq!(part(&e, "adapter gradients"), 4 * n);
        assert_eq!(part(&e, "adapter AdamW moments"), 8 * n);
        let accum = estimate(&m, &RunShape { grad_accum: 2, ..s });
        assert_eq!(part(&accum, "adapter gradients"), 8 * n);
    }

    #[test]
    fn lora_layers_keep_only_their_dropout_masks() {
        let m = model();
        let full = estimate(&m, &shape());
        let one = |dropout: f64| {
            let l = LoraShape {
                r: 4,
                targets: vec![Module::QProj, Module::DownProj],
                dropout,
            };
            estimate(
                &m,
                &RunShape {
                    lora: Some(l),
                    ..shape()
                },
            )
        };
        // q_proj 64 -> 64, down_proj 128 -> 64: nothing more than a plain linear layer keeps,
        // and the dropout mask (its input's size) with dropout; f32, 40 tokens, 2 layers + 1.
        let tokens_layers = 40 * 3 * 4;
        assert_eq!(part(&one(0.0), "activations"), part(&full, "activations"));
        assert_eq!(
            part(&one(0.1), "activations") - part(&one(0.0), "activations"),
            tokens_layers * (64 + 128)
        );
    }

    #[test]
    fn recomputation_keeps_layer_inputs_and_one_layer() {
        let m = model();
        let s = RunShape {
            recompute: true,
            ..shape()
        };
        let e = estimate(&m, &s);
        let per_layer = 1376 * 4 + 3 * 4 * 10 * 4;
        // 2 layers + the head's two hidden states, 40 tokens of 64 f32 elements.
        assert_eq!(part(&e, "layer inputs"), 40 * 4 * 64 * 4);
        assert_eq!(part(&e, "one layer recomputed"), 2 * 40 * per_layer);
        // The logits and their gradient (f32, 12 response positions, vocab 1000).
        assert_eq!(part(&e, "logits"), 12 * 1000 * 8);

        // On 8B the kept activations shrink from 33 layers' worth to the 34 layer inputs plus
        // one layer and its gradients: about (layers + 1) / 2 for the stored layers.
        let m = llama3_8b();
        let full = estimate(&m, &gpu_dpo(None, false));
        let rec = estimate(&m, &gpu_dpo(None, true));
        let kept = part(&rec, "layer inputs") + part(&rec, "one layer recomputed");
        let ratio = part(&full, "activations") as f64 / kept as f64;
        assert!((10.0..17.0).contains(&ratio), "{ratio}");
        assert_eq!(rec.model_state, full.model_state);
    }

    #[test]
    fn adapters_off_reference_adds_no_weights() {
        let m = llama3_8b();
        let off = estimate(&m, &gpu_dpo(Some(all_linear(16)), true));
        let none = estimate(
            &m,
            &RunShape {
                reference: Reference::None,
                ..gpu_dpo(Some(all_linear(16)), true)
            },
        );
        assert!(has_no(&off, "reference model"));
        assert_eq!(off.model_state, none.model_state);
        // Its forward is a transient smaller than a training step's.
        assert_eq!(off.total, none.total);
        // A second copy of the base is what a reference model would cost.
        let second = estimate(
            &m,
            &RunShape {
                reference: Reference::Model,
                ..gpu_dpo(Some(all_linear(16)), true)
            },
        );
        assert_eq!(second.total - off.total, 2 * m.num_params() as u64);
        // Caching reference log-probs needs no second model either.
        let tiny = |reference| RunShape {
            reference,
            rows: 1,
            seq_len: 2,
            response_tokens: 1,
            eval_rows: 8,
            eval_response_tokens: 16,
            ..gpu_dpo(Some(all_linear(16)), true)
        };
        let cached = estimate(&m, &tiny(Reference::Cached));
        let transient = cached.total - cached.model_state - CUDA_RUNTIME_BYTES;
        assert!(transient < 1 << 30, "{cached:?}");
    }

    #[test]
    fn run_shape_carries_lora_and_recomputation() {
        let pair = TokenizedPair {
            prompt: vec![0; 4],
            chosen: vec![1; 4],
            rejected: vec![2; 4],
        };
        let lora = LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: vec![Module::QProj],
            use_rslora: false,
        };
        let s = run_shape(
            DType::BF16,
            Reference::AdaptersOff,
            true,
            1,
            1,
            1,
            &[pair],
            &[],
            Some(&lora),
            true,
        );
        assert_eq!(s.lora, Some(LoraShape::new(&lora)));
        assert!(s.recompute);
    }

    #[test]
    fn refusal_advice_follows_the_run() {
        let e = |lora, recompute, model_state| Estimate {
            parts: vec![("weights".into(), model_state)],
            total: 3 << 30,
            model_state,
            lora,
            recompute,
        };
        let err = |e: &Estimate| {
            check(e, "cuda:0", Some(2 << 30), 0.0)
                .unwrap_err()
                .to_string()
        };
        let full = err(&e(false, false, 3 << 30));
        assert!(
            full.contains("[lora]") && full.contains("does not fit"),
            "{full}"
        );
        let lora = err(&e(true, false, 3 << 30));
        assert!(
            lora.contains("frozen base") && !lora.contains("[lora]"),
            "{lora}"
        );
        let batch = err(&e(true, false, 1 << 30));
        assert!(
            batch.contains("train.gradient_checkpointing = true"),
            "{batch}"
        );
        assert!(!batch.contains("precompute_ref"), "{batch}");
        let recomputed = err(&e(false, true, 1 << 30));
        assert!(
            !recomputed.contains("gradient_checkpointing"),
            "{recomputed}"
        );
        assert!(recomputed.contains("precompute_ref"), "{recomputed}");
    }
}
