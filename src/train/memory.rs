//! How much memory a run needs, estimated before any weight is loaded, and how much the device
//! has: a run that cannot fit is refused with the breakdown instead of dying halfway through its
//! first step (or, on a shared GPU box, taking the machine down with it).
//!
//! The estimate follows what gaplab keeps alive: weights, gradients, AdamW moments (and f32
//! master weights in half precision), the reference (a second model, or cached log-probs), and
//! the largest of three transient peaks: a training micro-batch (the activations backward
//! needs, and logits at response positions with their gradients), an eval batch (logits and
//! the full log-softmax the entropy diagnostics read), and scoring the data with the reference
//! when its log-probs are cached (a second model alive for a while).

use anyhow::{bail, Result};
use candle_core::{DType, Device};

use crate::data::TokenizedPair;
use crate::model::ModelConfig;

/// Where the reference log-probs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// SimPO and SFT need none.
    None,
    /// A second model, run every step.
    Model,
    /// Computed once by a temporary second model, then read from disk.
    Cached,
}

/// The shape of a run, as far as memory goes.
#[derive(Clone, Copy, Debug, PartialEq)]
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

pub fn estimate(m: &ModelConfig, s: &RunShape) -> Estimate {
    let p = m.num_params() as u64;
    let d = s.dtype_bytes as u64;
    let half = s.dtype_bytes < 4;
    let v = m.vocab_size as u64;
    let mut parts: Vec<(String, u64)> = Vec::new();
    parts.push(("weights".into(), p * d));
    // Accumulating over micro-batches keeps a second set of gradients. Tied embeddings get
    // two gradients (the lookup and the LM head) that backward sums into a third: at a 150k
    // vocabulary that is a gigabyte, measured on Qwen2.5-0.5B's shape.
    let tied = if m.tie_word_embeddings {
        2 * v * m.hidden_size as u64 * d
    } else {
        0
    };
    let grads = p * d * if s.grad_accum > 1 { 2 } else { 1 } + tied;
    parts.push(("gradients".into(), grads));
    if half {
        parts.push(("AdamW moments and f32 master weights".into(), p * 12));
    } else {
        parts.push(("AdamW moments".into(), p * 8));
    }
    match s.reference {
        Reference::None => {}
        Reference::Model => parts.push(("reference model".into(), p * d)),
        Reference::Cached => {}
    }
    let model_state = parts.iter().take(3).map(|(_, b)| b).sum();

    // Transient peaks: the largest of training, eval and reference caching.
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
    let per_layer = layer_elems_per_token(m) as u64 * d + attn_bytes + extra_bytes;
    // Backward holds one more layer's worth of gradients of activations at a time; the chunked
    // attention works on a few score blocks at once.
    let chunks = if fused_attention {
        0
    } else {
        4 * (tokens * heads * t * 4).min(crate::model::attention::CHUNK_BYTES as u64)
    };
    let mut activations = tokens * per_layer * (layers + 1) + chunks;
    if s.fused_kernels && half {
        // The CPU has no bf16/f16 matmul: candle widens both operands and the product of every
        // one to f32. Measured: peaks 1.65-1.7x the count above (bench shapes, 2026-11-27).
        activations = activations * 17 / 10;
    }
    // Logits at response positions, their f32 copy in half precision, and the gradient of
    // both.
    let logit_bytes = if half { 2 * d + 8 } else { 8 };
    let logits = s.response_tokens as u64 * v * logit_bytes;
    let train_peak = activations + logits;

    // Eval: no graph (one layer's activations), logits plus log-softmax, its exp and their
    // product for the entropy diagnostics.
    let eval_tokens = s.eval_rows as u64 * t;
    let eval_peak = eval_tokens * per_layer + s.eval_response_tokens as u64 * v * (d + 12);
    let caching_peak = if s.reference == Reference::Cached {
        p * d + eval_tokens * per_layer + s.eval_response_tokens as u64 * v * (d + 4)
    } else {
        0
    };
    if train_peak >= eval_peak && train_peak >= caching_peak {
        parts.push((
            format!("activations ({} rows of {} tokens)", s.rows, s.seq_len),
            activations,
        ));
        parts.push((
            format!("logits ({} response positions)", s.response_tokens),
            logits,
        ));
    } else if eval_peak >= caching_peak {
        parts.push(("eval batch (logits and log-softmax)".into(), eval_peak));
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
    }
}

/// The shape of a run on `data` (the longest rows decide the padding).
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
    let (reference, preference, batch, accum) = match sft {
        Some(s) => (Reference::None, false, s.batch_size, 1),
        None => (
            if !cfg.train.objective().needs_reference() {
                Reference::None
            } else if cfg.train.precompute_ref {
                Reference::Cached
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
    );
    if !device.is_some_and(Device::is_cpu) {
        shape.runtime_bytes = CUDA_RUNTIME_BYTES;
        shape.fused_kernels = false;
    }
    let e = estimate(model, &shape);
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
            let advice = if e.model_state > room {
                format!(
                    "The weights, gradients and AdamW state alone need {}: full fine-tuning of this model does not fit here whatever the batch; use a smaller model or a device with more memory.",
                    gib(e.model_state)
                )
            } else {
                "To fit: lower train.batch_size (raise train.grad_accum to keep the batch), lower data.max_len, set train.precompute_ref = true (no reference model while training), or train.dtype = \"bf16\".".to_string()
            };
            bail!(
                "this run needs about {} but has {why}: {}. {advice} train.memory_check = false skips this check.",
                gib(e.total),
                render(e, device, available)
            );
        }
    }
    Ok(())
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
        );
        assert_eq!(s.dtype_bytes, 2);
        assert_eq!((s.rows, s.seq_len), (4, 21));
        assert_eq!(s.response_tokens, 13 + 7);
        assert_eq!(s.eval_response_tokens, 22 + 13 + 7 + 2);
        let sft = run_shape(DType::F32, Reference::None, false, 8, 1, 4, &train, &[]);
        assert_eq!((sft.rows, sft.seq_len, sft.response_tokens), (3, 11, 15));
    }

    #[test]
    fn refusal_names_the_numbers_and_the_way_out() {
        let e = Estimate {
            parts: vec![("weights".into(), 1 << 30), ("activations".into(), 2 << 30)],
            total: 3 << 30,
            model_state: 1 << 30,
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
}
