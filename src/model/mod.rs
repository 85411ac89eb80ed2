//! The decoder: a Llama-family causal LM written for training.
//!
//! Unlike candle-transformers' inference models it returns hidden states for every position,
//! keeps its weights as plain tensors (so they can be `Var`s of an optimizer), and uses the fused
//! differentiable ops of [`ops`]. The same code serves training (graph recorded through `Var`s),
//! reference scoring (plain tensors, no graph) and KV-cached sampling.

pub mod attention;
pub mod batch;
pub mod config;
pub mod io;
pub mod lora;
mod lora_op;
pub mod matmul;
pub mod ops;
pub mod reward;
pub mod safetensors_check;
pub mod sample;
#[cfg(test)]
mod testutil;
pub mod tokenizer;

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

pub use config::{Arch, ModelConfig, ScratchSpec};
pub use lora::{LoraConfig, LoraPair};
pub use tokenizer::Tok;

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
pub use batch::SeqBatch;

/// Where a model runs: `train.device` and `--device`. "cuda" alone means "cuda:0".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// The first CUDA device when gaplab is built with the `cuda` feature and one is present,
    /// else the CPU.
    Auto,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let expected = || format!("expected \"auto\", \"cpu\" or \"cuda:N\", got \"{s}\"");
        match s {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(expected),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Auto => f.write_str("auto"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    pub fn select(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
            Self::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    bail!("device \"{self}\": this gaplab was built without CUDA (rebuild with `--features cuda`)");
                }
                Device::new_cuda(n).with_context(|| format!("device \"{self}\""))
            }
        }
    }
}

/// The JSON of a checkpoint file (config.json, a shard index, adapter_config.json, ...) read
/// from `text`; an error names the file, line and column.
pub fn parse_json(path: &std::path::Path, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}:{}: invalid JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// The compute device named by `spec` ([`DeviceSpec`]'s names).
pub fn select_device(spec: &str) -> Result<Device> {
    let spec: DeviceSpec = spec
        .parse()
        .map_err(|e| anyhow::anyhow!("device \"{spec}\": {e}"))?;
    spec.select()
}

/// How logs and the dashboard name where a model runs: "cpu", "cuda:0", with the dtype when it
/// is not f32 ("cuda:0 bf16").
pub fn device_label(device: &Device, dtype: DType) -> String {
    let place = match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            other => format!("{other:?}"),
        },
        other => format!("{:?}", other.location()),
    };
    match dtype {
        DType::F32 => place,
        d => format!("{place} {}", d.as_str()),
    }
}

/// The dtype of weights and activations: `train.dtype` and `--dtype`. Optimizer state and
/// loss math stay f32 whatever this is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Self::F32, Self::Bf16, Self::F16];

    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The dtype named "f32", "bf16" or "f16" (`--dtype`).
pub fn parse_dtype(name: &str) -> Option<DType> {
    Precision::ALL
        .into_iter()
        .find(|p| p.name() == name)
        .map(Precision::dtype)
}

/// One weight of the decoder: its Hugging Face name, shape and how a fresh model initialises it.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal,
    Ones,
    Zeros,
}

/// Every weight a checkpoint of `cfg` holds, in a fixed order (the optimizer's order too).
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let (d, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (h, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let mut v = Vec::new();
    let mut push =
        |name: String, shape: Vec<usize>, init: Init| v.push(ParamSpec { name, shape, init });
    push(
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size, d],
        Init::Normal,
    );
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        push(format!("{p}.input_layernorm.weight"), vec![d], Init::Ones);
        for (proj, out) in [("q_proj", h * hd), ("k_proj", kv * hd), ("v_proj", kv * hd)] {
            push(
                format!("{p}.self_attn.{proj}.weight"),
                vec![out, d],
                Init::Normal,
            );
            if cfg.qkv_bias {
                push(format!("{p}.self_attn.{proj}.bias"), vec![out], Init::Zeros);
            }
        }
        push(
            format!("{p}.self_attn.o_proj.weight"),
            vec![d, h * hd],
            Init::Normal,
        );
        if cfg.o_bias {
            push(format!("{p}.self_attn.o_proj.bias"), vec![d], Init::Zeros);
        }
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            Init::Ones,
        );
        for (proj, shape) in [
            ("gate_proj", vec![i, d]),
            ("up_proj", vec![i, d]),
            ("down_proj", vec![d, i]),
        ] {
            let bias_len = shape[0];
            push(format!("{p}.mlp.{proj}.weight"), shape, Init::Normal);
            if cfg.mlp_bias {
                push(format!("{p}.mlp.{proj}.bias"), vec![bias_len], Init::Zeros);
            }
        }
    }
    push("model.norm.weight".into(), vec![d], Init::Ones);
    if !cfg.tie_word_embeddings {
        push(
            "lm_head.weight".into(),
            vec![cfg.vocab_size, d],
            Init::Normal,
        );
    }
    v
}

#[derive(Clone)]
struct Linear {
    w: Tensor,
    b: Option<Tensor>,
    lora: Option<Adapter>,
}

/// A LoRA pair on a linear layer: y = x Wᵀ + b + scale · (drop(x) Aᵀ) Bᵀ, as PEFT computes it.
#[derive(Clone)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    /// Seeds this module's dropout mask apart from the other modules'.
    stream: u64,
}

/// LoRA dropout of one forward pass: the probability and the pass's seed. Masks are drawn
/// from the seed (and the module), so recomputing a layer draws the same mask.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
}

impl Dropout {
    /// A mask the shape of `x`: 0 at probability p, 1 / (1 − p) elsewhere, drawn from the
    /// pass's seed and the module's stream (the same mask when a layer is recomputed).
    fn mask(&self, x: &Tensor, stream: u64) -> Result<Tensor> {
        let keep = 1.0 - self.p;
        let seed = self.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if x.device().is_cpu() {
            // Host draws keep CPU runs exactly reproducible (and resumable).
            let mut rng = Rng::new(seed);
            let scale = (1.0 / keep) as f32;
            let m: Vec<f32> = (0..x.elem_count())
                .map(|_| if rng.uniform() < keep { scale } else { 0.0 })
                .collect();
            return Ok(Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(x.dtype())?);
        }
        // The device's generator, reseeded for this mask so that recomputation redraws it.
        x.device().set_seed(seed)?;
        let u = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
        Ok((u.lt(keep)?.to_dtype(DType::F32)? * (1.0 / keep))?.to_dtype(x.dtype())?)
    }
}

impl Linear {
    /// x [n, in] -> [n, out]
    fn forward(&self, x: &Tensor, dropout: Option<&Dropout>) -> Result<Tensor> {
        let Some(ad) = &self.lora else {
            let y = matmul::matmul(x, &self.w.t()?)?;
            return Ok(match &self.b {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            });
        };
        let mask = match dropout {
            Some(d) if d.p > 0.0 => Some(d.mask(x, ad.stream)?),
            _ => None,
        };
        Ok(lora_op::lora_linear(
            x,
            &self.w,
            self.b.as_ref(),
            &ad.a,
            &ad.b,
            ad.scale,
            mask.as_ref(),
        )?)
    }
}

#[derive(Clone)]
struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    /// Every tensor of the block that can be trained: weights, biases, norms and adapters.
    fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.input_norm, &self.post_norm];
        for lin in [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ] {
            v.push(&lin.w);
            v.extend(&lin.b);
            if let Some(ad) = &lin.lora {
                v.extend([&ad.a, &ad.b]);
            }
        }
        v
    }
}

/// Keys and values of earlier positions, one entry per layer, for incremental decoding.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dim(2).unwrap_or(0),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct ResponseScores {
    pub logps: Tensor,
    pub logits: Tensor,
}

/// The LoRA adapters a decoder carries: their config and tensors by PEFT key
/// (`base_model.model.<module>.lora_A.weight`), in [`LoraConfig::modules`] order, A before B.
#[derive(Clone)]
pub struct Adapters {
    pub lora: LoraConfig,
    pub tensors: Vec<(String, Tensor)>,
}

impl Adapters {
    /// Checks `pairs` against the modules `lora` targets on a decoder of `cfg`.
    pub fn new(
        cfg: &ModelConfig,
        lora: LoraConfig,
        mut pairs: BTreeMap<String, LoraPair>,
    ) -> Result<Self> {
        let mut tensors = Vec::new();
        for (path, m) in lora.modules(cfg) {
            let pair = pairs
                .remove(&path)
                .with_context(|| format!("adapter for `{path}` missing"))?;
            let (i, o) = m.features(cfg);
            for (which, t, shape) in [('A', pair.a, [lora.r, i]), ('B', pair.b, [o, lora.r])] {
                let key = lora::peft_key(&path, which);
                if t.dims() != shape {
                    bail!(
                        "tensor `{key}` has shape {:?} but the base model with r = {} implies {shape:?}",
                        t.dims(),
                        lora.r
                    );
                }
                tensors.push((key, t));
            }
        }
        if let Some(extra) = pairs.keys().next() {
            bail!("adapter for `{extra}`: not a module the LoRA config targets");
        }
        Ok(Self { lora, tensors })
    }

    /// Trainable parameters.
    pub fn num_params(&self) -> usize {
        self.tensors.iter().map(|(_, t)| t.elem_count()).sum()
    }
}

#[derive(Clone)]
pub struct CausalLm {
    pub cfg: ModelConfig,
    /// Weights by name, in `param_specs` order.
    weights: Vec<(String, Tensor)>,
    adapters: Option<Adapters>,
    /// LoRA dropout of the next forward passes (training only).
    dropout: Option<Dropout>,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// What a forward pass with activation recomputation kept: each layer's input (no graph) and
/// the last layer's output as the leaf of the head's graph. [`CausalLm::backward_layers`]
/// turns the head's gradients into the layers' by recomputing one layer at a time.
pub struct Recompute {
    ids: Tensor,
    inputs: Vec<Tensor>,
    top: Var,
}

impl CausalLm {
    /// Builds a decoder from named tensors (moved out of `map`), checking names and shapes.
    pub fn from_tensors(cfg: ModelConfig, map: HashMap<String, Tensor>) -> Result<Self> {
        Self::assemble(cfg, map, None, None)
    }

    fn assemble(
        cfg: ModelConfig,
        mut map: HashMap<String, Tensor>,
        rope: Option<(Tensor, Tensor)>,
        adapters: Option<Adapters>,
    ) -> Result<Self> {
        let specs = param_specs(&cfg);
        let mut weights = Vec::with_capacity(specs.len());
        for spec in &specs {
            let t = map
                .remove(&spec.name)
                .with_context(|| format!("missing tensor `{}`", spec.name))?;
            if t.dims() != spec.shape.as_slice() {
                bail!(
                    "tensor `{}` has shape {:?} but config.json implies {:?}",
                    spec.name,
                    t.dims(),
                    spec.shape
                );
            }
            weights.push((spec.name.clone(), t));
        }
        let device = weights[0].1.device().clone();
        let dtype = weights[0].1.dtype();
        let by_name: HashMap<&str, &Tensor> =
            weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let adapter_by_key: HashMap<&str, &Tensor> = adapters
            .iter()
            .flat_map(|a| a.tensors.iter().map(|(n, t)| (n.as_str(), t)))
            .collect();
        let scale = adapters.as_ref().map_or(1.0, |a| a.lora.scale());
        let get = |n: &str| by_name.get(n).map(|t| (*t).clone());
        // Every name the spec lists was checked above; a miss here is a spec without it.
        let need = |n: &str| get(n).with_context(|| format!("missing tensor `{n}`"));
        let mut stream = 0u64;
        let mut lin = |n: &str| -> Result<Linear> {
            stream += 1;
            let adapter = |which: char| {
                adapter_by_key
                    .get(lora::peft_key(n, which).as_str())
                    .map(|t| (*t).clone())
            };
            let lora = match (adapter('A'), adapter('B')) {
                (Some(a), Some(b)) => Some(Adapter {
                    a,
                    b,
                    scale,
                    stream,
                }),
                _ => None,
            };
            Ok(Linear {
                w: need(&format!("{n}.weight"))?,
                b: get(&format!("{n}.bias")),
                lora,
            })
        };
        let mut layers = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                input_norm: need(&format!("{p}.input_layernorm.weight"))?,
                q: lin(&format!("{p}.self_attn.q_proj"))?,
                k: lin(&format!("{p}.self_attn.k_proj"))?,
                v: lin(&format!("{p}.self_attn.v_proj"))?,
                o: lin(&format!("{p}.self_attn.o_proj"))?,
                post_norm: need(&format!("{p}.post_attention_layernorm.weight"))?,
                gate: lin(&format!("{p}.mlp.gate_proj"))?,
                up: lin(&format!("{p}.mlp.up_proj"))?,
                down: lin(&format!("{p}.mlp.down_proj"))?,
            });
        }
        let embed = need("model.embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            need("lm_head.weight")?
        };
        let norm = need("model.norm.weight")?;
        let (cos, sin) = match rope {
            Some(tables) => tables,
            None => rope_tables(&cfg, &device, dtype)?,
        };
        Ok(Self {
            cfg,
            weights,
            adapters,
            dropout: None,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
        })
    }

    /// A freshly initialised decoder (Hugging Face's scheme: N(0, 0.02) weights, unit norms,
    /// zero biases), deterministic for a seed.
    pub fn random(cfg: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let mut map = HashMap::new();
        for spec in param_specs(&cfg) {
            let n: usize = spec.shape.iter().product();
            let data: Vec<f32> = match spec.init {
                Init::Normal => (0..n).map(|_| (rng.normal() * 0.02) as f32).collect(),
                Init::Ones => vec![1.0; n],
                Init::Zeros => vec![0.0; n],
            };
            map.insert(
                spec.name,
                Tensor::from_vec(data, spec.shape.as_slice(), device)?,
            );
        }
        Self::from_tensors(cfg, map)
    }

    /// The base weights (adapters apart).
    pub fn weights(&self) -> &[(String, Tensor)] {
        &self.weights
    }

    /// The LoRA adapters, when the decoder carries some.
    pub fn adapters(&self) -> Option<&Adapters> {
        self.adapters.as_ref()
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// This decoder with LoRA adapters on the modules `lora` targets (checked against the
    /// shapes), in the decoder's dtype.
    pub fn with_adapters(
        self,
        lora: LoraConfig,
        pairs: BTreeMap<String, LoraPair>,
    ) -> Result<Self> {
        let dtype = self.dtype();
        let pairs = pairs
            .into_iter()
            .map(|(k, p)| {
                Ok((
                    k,
                    LoraPair {
                        a: p.a.to_dtype(dtype)?,
                        b: p.b.to_dtype(dtype)?,
                    },
                ))
            })
            .collect::<Result<_>>()?;
        let adapters = Adapters::new(&self.cfg, lora, pairs)?;
        self.rebuild_with(|t| Ok(t.clone()), Some(adapters))
    }

    /// The same base weights with the adapters switched off (shared storage, no copy): the
    /// reference of a LoRA run.
    pub fn without_adapters(&self) -> Result<Self> {
        self.rebuild_with(|t| Ok(t.clone()), None)
    }

    /// The base with every adapter folded in (W + scale · B·A, computed in f32 and stored in
    /// the base's dtype), without adapters: what `gaplab merge` writes.
    pub fn merged(&self) -> Result<Self> {
        let Some(ad) = &self.adapters else {
            return self.without_adapters();
        };
        let map = lora::fold(&self.weights, ad.lora.scale(), &ad.tensors)?
            .into_iter()
            .collect();
        Self::assemble(
            self.cfg.clone(),
            map,
            Some((self.cos.clone(), self.sin.clone())),
            None,
        )
    }

    /// The same decoder drawing LoRA dropout masks from `seed` in its forward passes (a cheap
    /// copy; no dropout when the adapters have none).
    pub fn with_dropout(&self, seed: u64) -> Self {
        let mut m = self.clone();
        m.dropout = m
            .adapters
            .as_ref()
            .filter(|a| a.lora.dropout > 0.0)
            .map(|a| Dropout {
                p: a.lora.dropout,
                seed,
            });
        m
    }

    /// Rebuilds the decoder over other tensors of the same names (e.g. optimizer variables),
    /// base and adapters alike.
    fn rebuild(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let adapters = match &self.adapters {
            Some(a) => Some(Adapters {
                lora: a.lora.clone(),
                tensors: a
                    .tensors
                    .iter()
                    .map(|(n, t)| Ok((n.clone(), f(t)?)))
                    .collect::<Result<_>>()?,
            }),
            None => None,
        };
        self.rebuild_with(f, adapters)
    }

    fn rebuild_with(
        &self,
        f: impl Fn(&Tensor) -> Result<Tensor>,
        adapters: Option<Adapters>,
    ) -> Result<Self> {
        let map = self
            .weights
            .iter()
            .map(|(n, t)| Ok((n.clone(), f(t)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let mut m = Self::assemble(
            self.cfg.clone(),
            map,
            Some((self.cos.clone(), self.sin.clone())),
            adapters,
        )?;
        m.dropout = self.dropout;
        Ok(m)
    }

    /// A copy with its own storage: an optimizer updating this model leaves the copy alone
    /// (a reference model made with `detach` would move with the policy).
    pub fn deep_copy(&self) -> Result<Self> {
        self.rebuild(|t| Ok(t.detach().copy()?))
    }

    /// The same weights without gradient tracking, for evaluation and sampling (no dropout).
    pub fn detached(&self) -> Result<Self> {
        let mut m = self.rebuild(|t| Ok(t.detach()))?;
        m.dropout = None;
        Ok(m)
    }

    /// Turns the weights into trainable variables (named, in `param_specs` order). A decoder
    /// with adapters trains only them (named by their PEFT keys); its base stays frozen.
    pub fn into_trainable(self) -> Result<(Self, Vec<(String, Var)>)> {
        let rope = Some((self.cos.clone(), self.sin.clone()));
        if let Some(ad) = &self.adapters {
            let vars: Vec<(String, Var)> = ad
                .tensors
                .iter()
                .map(|(n, t)| Ok((n.clone(), Var::from_tensor(&t.detach().copy()?)?)))
                .collect::<Result<_>>()?;
            let adapters = Adapters {
                lora: ad.lora.clone(),
                tensors: vars
                    .iter()
                    .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                    .collect(),
            };
            let base = self
                .weights
                .iter()
                .map(|(n, t)| (n.clone(), t.detach()))
                .collect();
            return Ok((
                Self::assemble(self.cfg.clone(), base, rope, Some(adapters))?,
                vars,
            ));
        }
        let vars: Vec<(String, Var)> = self
            .weights
            .iter()
            .map(|(n, t)| Ok((n.clone(), Var::from_tensor(&t.detach().copy()?)?)))
            .collect::<Result<_>>()?;
        let map = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        Ok((Self::assemble(self.cfg.clone(), map, rope, None)?, vars))
    }

    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut m = self.rebuild(|t| Ok(t.to_dtype(dtype)?))?;
        // Tables computed for the new dtype, as a freshly loaded model gets them.
        let (cos, sin) = rope_tables(&self.cfg, self.device(), dtype)?;
        m.cos = cos;
        m.sin = sin;
        Ok(m)
    }

    /// Final-normed hidden states of every position: ids [batch, seq] -> [batch * seq, hidden].
    pub fn hidden_states(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.check_len(t)?;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, b, t, &cos, &sin, None)?;
        }
        Ok(ops::rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)?)
    }

    /// Logits of hidden states [n, hidden] -> [n, vocab].
    pub fn project(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(matmul::matmul(hidden, &self.lm_head.t()?)?)
    }

    /// Log-probs of every row's response tokens, packed as in [`SeqBatch`] ([tokens]), with the
    /// logits they come from ([tokens, vocab]). Only response positions reach the LM head.
    pub fn response_scores(&self, batch: &SeqBatch) -> Result<ResponseScores> {
        let h = self.hidden_states(&batch.ids)?;
        self.head_scores(&h, batch)
    }

    fn head_scores(&self, h: &Tensor, batch: &SeqBatch) -> Result<ResponseScores> {
        let h = h.index_select(&batch.predict_pos, 0)?;
        let logits = self.project(&h)?;
        let logps = ops::target_logprob(&logits, &batch.targets)?;
        Ok(ResponseScores { logps, logits })
    }

    /// [`Self::response_scores`] with activation recomputation: the layers run without a
    /// graph, keeping only each layer's input; only the head (final norm and LM head) records
    /// one. After `loss.backward()`, [`Self::backward_layers`] completes the gradients.
    pub fn response_scores_recomputed(
        &self,
        batch: &SeqBatch,
    ) -> Result<(ResponseScores, Recompute)> {
        let (b, t) = batch.ids.dims2()?;
        self.check_len(t)?;
        let frozen = self.detached_keeping_dropout()?;
        let mut x = frozen.embed.index_select(&batch.ids.flatten_all()?, 0)?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        for layer in &frozen.layers {
            inputs.push(x.clone());
            x = frozen.layer_forward(layer, &x, b, t, &cos, &sin, None)?;
        }
        let top = Var::from_tensor(&x)?;
        let h = ops::rms_norm(top.as_tensor(), &self.norm, self.cfg.rms_norm_eps)?;
        let scores = self.head_scores(&h, batch)?;
        let rc = Recompute {
            ids: batch.ids.clone(),
            inputs,
            top,
        };
        Ok((scores, rc))
    }

    /// Completes `grads` (of a loss over [`Self::response_scores_recomputed`]'s scores) with
    /// the gradients of every layer's variables and of the embedding: each layer is run again
    /// with a graph, from its saved input, and back-propagated alone, last layer first. The
    /// same operations in the same order as one backward pass, so results are identical.
    pub fn backward_layers(&self, grads: GradStore, rc: Recompute) -> Result<GradStore> {
        let (b, t) = rc.ids.dims2()?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let mut head = grads;
        let mut g = head
            .remove(rc.top.as_tensor())
            .context("recomputation: the loss does not depend on the decoder's layers")?
            .detach();
        let mut grads = self.detach_grads(head);
        let Recompute {
            ids, mut inputs, ..
        } = rc;
        for layer in self.layers.iter().rev() {
            // Each input is dropped once its layer is done.
            let input = inputs
                .pop()
                .context("recomputation: fewer saved inputs than layers")?;
            let x = Var::from_tensor(&input)?;
            let y = self.layer_forward(layer, x.as_tensor(), b, t, &cos, &sin, None)?;
            let mut layer_grads = (y * &g)?.sum_all()?.backward()?;
            g = layer_grads
                .remove(x.as_tensor())
                .context("recomputation: no gradient reached a layer's input")?
                .detach();
            for w in layer.tensors() {
                if let Some(gw) = layer_grads.remove(w) {
                    add_grad(&mut grads, w, gw.detach())?;
                }
            }
        }
        if self.embed.is_variable() {
            // The lookup's gradient added into the LM head's (tied weights) as one backward
            // pass adds it: row by row, on top of what is there.
            let ids = ids.flatten_all()?.contiguous()?;
            let head = match grads.remove(&self.embed) {
                Some(h) => h,
                None => self.embed.zeros_like()?,
            };
            grads.insert(&self.embed, head.index_add(&ids, &g, 0)?);
        }
        Ok(grads)
    }

    /// The gradients of this decoder's trainable tensors in `grads`, detached: candle's
    /// gradients keep the backward pass's graph (and with it every activation) alive, which
    /// would hold a whole step's activations through gradient accumulation and undo
    /// recomputation's savings.
    pub fn detach_grads(&self, mut grads: GradStore) -> GradStore {
        let mut out = GradStore::default();
        let trainable = match &self.adapters {
            Some(a) => a.tensors.as_slice(),
            None => self.weights.as_slice(),
        };
        for (_, t) in trainable {
            if let Some(g) = grads.remove(t) {
                out.insert(t, g.detach());
            }
        }
        out
    }

    /// The same decoder without gradient tracking but with its dropout (the recomputed
    /// forward draws the same masks).
    fn detached_keeping_dropout(&self) -> Result<Self> {
        let mut m = self.detached()?;
        m.dropout = self.dropout;
        Ok(m)
    }

    /// Logits of every position: ids [batch, seq] -> [batch, seq, vocab].
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.hidden_states(ids)?;
        Ok(self.project(&h)?.reshape((b, t, self.cfg.vocab_size))?)
    }

    /// Logits of the last position after feeding `ids` [batch, n] on top of `cache`.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, n) = ids.dims2()?;
        let offset = cache.len();
        self.check_len(offset + n)?;
        if cache.layers.len() != self.layers.len() {
            cache.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?;
        let cos = self.cos.narrow(0, offset, n)?;
        let sin = self.sin.narrow(0, offset, n)?;
        for (layer, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = self.layer_forward(layer, &x, b, n, &cos, &sin, Some(c))?;
        }
        let last = x
            .reshape((b, n, self.cfg.hidden_size))?
            .narrow(1, n - 1, 1)?;
        let last = last.reshape((b, self.cfg.hidden_size))?;
        let h = ops::rms_norm(&last, &self.norm, self.cfg.rms_norm_eps)?;
        self.project(&h)
    }

    fn check_len(&self, t: usize) -> Result<()> {
        if t > self.cos.dim(0)? {
            bail!(
                "sequence of {t} tokens is longer than the model's max_position_embeddings ({})",
                self.cos.dim(0)?
            );
        }
        Ok(())
    }

    /// One pre-norm transformer block on x [batch * t, hidden].
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        b: usize,
        t: usize,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let drop = self.dropout.as_ref();
        let h = ops::rms_norm(x, &layer.input_norm, cfg.rms_norm_eps)?;
        let q = layer.q.forward(&h, drop)?.reshape((b, t, nh, hd))?;
        let k = layer.k.forward(&h, drop)?.reshape((b, t, nkv, hd))?;
        let v = layer.v.forward(&h, drop)?.reshape((b, t, nkv, hd))?;
        let q = ops::rope(&q, cos, sin)?.transpose(1, 2)?.contiguous()?;
        let mut k = ops::rope(&k, cos, sin)?.transpose(1, 2)?.contiguous()?;
        let mut v = v.transpose(1, 2)?.contiguous()?;
        let mut offset = 0;
        if let Some(c) = cache {
            if let Some((pk, pv)) = c.as_ref() {
                offset = pk.dim(2)?;
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *c = Some((k.clone(), v.clone()));
        }
        // Grouped-query attention without repeating keys: the query heads sharing a kv head
        // are stacked along the rows, one matmul per kv head.
        let rep = nh / nkv;
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let o = if ops::fused_ok(&q) {
            // The CPU's fused softmax keeps only its output for backward.
            let scores = matmul::matmul(&q, &k.t()?)?;
            let p = ops::causal_softmax(&scores, t, offset, scale)?;
            matmul::matmul(&p, &v)?
        } else {
            // Elsewhere composite ops would keep seven score-sized tensors a layer.
            attention::attention(&q, &k, &v, t, offset, scale)?
        };
        let o = o.reshape((b, nh, t, hd))?;
        let o = o.transpose(1, 2)?.contiguous()?.reshape((b * t, nh * hd))?;
        let x = (x + layer.o.forward(&o, drop)?)?;
        let h = ops::rms_norm(&x, &layer.post_norm, cfg.rms_norm_eps)?;
        let m = ops::silu_mul(&layer.gate.forward(&h, drop)?, &layer.up.forward(&h, drop)?)?;
        Ok((x + layer.down.forward(&m, drop)?)?)
    }
}

/// Adds `grad` into `total`'s gradient of `t`.
fn add_grad(total: &mut GradStore, t: &Tensor, grad: Tensor) -> Result<()> {
    let sum = match total.remove(t) {
        Some(old) => (old + grad)?,
        None => grad,
    };
    total.insert(t, sum);
    Ok(())
}

/// cos/sin tables [max_positions, head_dim / 2], computed in f64 like transformers' f32 path
/// (the difference is far below the parity tolerance).
fn rope_tables(cfg: &ModelConfig, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    let inv = cfg.rope_inv_freq();
    let n = cfg.max_position_embeddings;
    let half = inv.len();
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for f in &inv {
            // transformers computes the angle in f32: match it for parity.
            let angle = (p as f32) * (*f as f32);
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}
