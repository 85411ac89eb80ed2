//! The architecture of a decoder, read from (and written to) a Hugging Face `config.json`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The decoder families gaplab trains. They share one implementation: Llama is the base,
/// Mistral is Llama (the sliding window only matters beyond `sliding_window` tokens), Qwen2 adds
/// q/k/v biases and usually ties the embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }

    fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }
}

/// Frequency scaling of rotary embeddings for long-context checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1 / 3.2: low frequencies divided by `factor`, high ones kept, smooth in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v projections (always on for Qwen2, `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias` covers it too).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The checkpoint's storage dtype as named in config.json ("float32", "bfloat16", ...).
    pub stored_dtype: String,
    /// The original config.json, kept so that saving a loaded model preserves every field.
    pub raw: Option<Value>,
}

/// Shape and seed of a from-scratch decoder: `[model.scratch]` of gaplab.toml, whose fields,
/// defaults and TOML form are these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScratchSpec {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Seed of the initial weights (shared by every variant).
    pub seed: u64,
}

impl Default for ScratchSpec {
    fn default() -> Self {
        Self {
            arch: Arch::Llama,
            hidden_size: 128,
            intermediate_size: 344,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            max_position_embeddings: 512,
            rope_theta: 10000.0,
            tie_word_embeddings: true,
            seed: 0,
        }
    }
}

impl ModelConfig {
    /// The config of a from-scratch decoder of shape `s` over a vocabulary of `vocab_size`
    /// (no special tokens: a tokenizer supplies them).
    pub fn from_scratch(s: &ScratchSpec, vocab_size: usize) -> Result<Self> {
        let arch = s.arch;
        if s.num_attention_heads == 0
            || !s.hidden_size.is_multiple_of(s.num_attention_heads)
            || s.num_key_value_heads == 0
            || !s.num_attention_heads.is_multiple_of(s.num_key_value_heads)
        {
            bail!(
                "hidden_size {} / num_attention_heads {} / num_key_value_heads {}: hidden must divide by heads, heads by kv heads",
                s.hidden_size, s.num_attention_heads, s.num_key_value_heads
            );
        }
        let head_dim = s.hidden_size / s.num_attention_heads;
        if !head_dim.is_multiple_of(2) {
            bail!("head dimension {head_dim} must be even for rotary embeddings");
        }
        Ok(Self {
            arch,
            vocab_size,
            hidden_size: s.hidden_size,
            intermediate_size: s.intermediate_size,
            num_hidden_layers: s.num_hidden_layers,
            num_attention_heads: s.num_attention_heads,
            num_key_value_heads: s.num_key_value_heads,
            head_dim,
            rms_norm_eps: 1e-5,
            rope_theta: s.rope_theta,
            rope_scaling: None,
            max_position_embeddings: s.max_position_embeddings,
            tie_word_embeddings: s.tie_word_embeddings,
            qkv_bias: arch == Arch::Qwen2,
            o_bias: false,
            mlp_bias: false,
            sliding_window: None,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
            stored_dtype: "float32".into(),
            raw: None,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = super::parse_json(path, &text)?;
        Self::from_json(&v).with_context(|| format!("{}", path.display()))
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v.as_object().context("expected a JSON object")?;
        let model_type = obj
            .get("model_type")
            .and_then(Value::as_str)
            .context("field `model_type` missing")?;
        let arch = Arch::parse(model_type).with_context(|| {
            format!("unsupported architecture `model_type: \"{model_type}\"` (gaplab trains llama, mistral and qwen2)")
        })?;
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                bail!("field `hidden_act`: \"{act}\" is not supported (expected \"silu\")");
            }
        }
        let hidden_size = usize_field(obj, "hidden_size")?;
        let num_attention_heads = usize_field(obj, "num_attention_heads")?;
        let num_key_value_heads =
            opt_usize_field(obj, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim =
            opt_usize_field(obj, "head_dim")?.unwrap_or(hidden_size / num_attention_heads.max(1));
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || !num_attention_heads.is_multiple_of(num_key_value_heads)
        {
            bail!("field `num_key_value_heads`: {num_key_value_heads} must divide num_attention_heads {num_attention_heads}");
        }
        if !head_dim.is_multiple_of(2) {
            bail!("head dimension {head_dim} must be even");
        }
        // transformers >= 5 keeps rope settings in `rope_parameters`, older versions at the top
        // level and in `rope_scaling`.
        let rope_params = obj.get("rope_parameters").and_then(Value::as_object);
        let rope_theta = rope_params
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| obj.get("rope_theta"))
            .map(|x| x.as_f64().context("field `rope_theta`: expected a number"))
            .transpose()?
            .unwrap_or(10000.0);
        let scaling = obj
            .get("rope_scaling")
            .filter(|v| !v.is_null())
            .and_then(Value::as_object)
            .or(rope_params);
        let rope_scaling = match scaling {
            Some(s) => parse_rope_scaling(s)?,
            None => None,
        };
        let attention_bias = obj
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let sliding_window = match arch {
            Arch::Mistral => opt_usize_field(obj, "sliding_window")?,
            Arch::Qwen2 if obj.get("use_sliding_window").and_then(Value::as_bool) == Some(true) => {
                opt_usize_field(obj, "sliding_window")?
            }
            _ => None,
        };
        let eos_token_ids = match obj.get("eos_token_id") {
            Some(Value::Number(n)) => vec![n.as_u64().context("field `eos_token_id`")? as u32],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().map(|x| x as u32).context("field `eos_token_id`"))
                .collect::<Result<_>>()?,
            _ => vec![],
        };
        let token = |k: &str| obj.get(k).and_then(Value::as_u64).map(|x| x as u32);
        let stored_dtype = obj
            .get("dtype")
            .or_else(|| obj.get("torch_dtype"))
            .and_then(Value::as_str)
            .unwrap_or("float32")
            .to_string();
        Ok(Self {
            arch,
            vocab_size: usize_field(obj, "vocab_size")?,
            hidden_size,
            intermediate_size: usize_field(obj, "intermediate_size")?,
            num_hidden_layers: usize_field(obj, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: obj
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: opt_usize_field(obj, "max_position_embeddings")?
                .unwrap_or(4096),
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch != Arch::Qwen2 && attention_bias,
            mlp_bias: obj
                .get("mlp_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            sliding_window,
            bos_token_id: token("bos_token_id"),
            eos_token_ids,
            pad_token_id: token("pad_token_id"),
            stored_dtype,
            raw: Some(v.clone()),
        })
    }

    /// The config.json to write next to saved weights: the original file unchanged (every field
    /// a loader may need survives), or a fresh one in transformers' format for a from-scratch
    /// model.
    pub fn to_hf_json(&self) -> Value {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut m = Map::new();
        m.insert("architectures".into(), json!([self.arch.hf_class()]));
        m.insert("model_type".into(), json!(self.arch.model_type()));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_hidden_layers));
        m.insert(
            "num_attention_heads".into(),
            json!(self.num_attention_heads),
        );
        m.insert(
            "num_key_value_heads".into(),
            json!(self.num_key_value_heads),
        );
        m.insert("head_dim".into(), json!(self.head_dim));
        m.insert("hidden_act".into(), json!("silu"));
        m.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        // Both spellings, so transformers 4.x and 5.x read the same theta.
        m.insert("rope_theta".into(), json!(self.rope_theta));
        m.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": self.rope_theta}),
        );
        m.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        m.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        if self.arch != Arch::Qwen2 {
            m.insert("attention_bias".into(), json!(self.qkv_bias));
            m.insert("mlp_bias".into(), json!(self.mlp_bias));
        }
        if self.arch == Arch::Qwen2 {
            m.insert("use_sliding_window".into(), json!(false));
        }
        if let Some(b) = self.bos_token_id {
            m.insert("bos_token_id".into(), json!(b));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [e] => {
                m.insert("eos_token_id".into(), json!(e));
            }
            es => {
                m.insert("eos_token_id".into(), json!(es));
            }
        }
        if let Some(p) = self.pad_token_id {
            m.insert("pad_token_id".into(), json!(p));
        }
        m.insert("dtype".into(), json!(self.stored_dtype));
        m.insert("torch_dtype".into(), json!(self.stored_dtype));
        Value::Object(m)
    }

    /// Number of parameters, counting tied embeddings once.
    pub fn num_params(&self) -> usize {
        let (d, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (h, kv) = (self.num_attention_heads, self.num_key_value_heads);
        let attn = d * h * hd + 2 * d * kv * hd + h * hd * d;
        let attn_bias = if self.qkv_bias {
            h * hd + 2 * kv * hd
        } else {
            0
        };
        let mlp = 3 * d * i;
        let layer = attn + attn_bias + mlp + 2 * d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.num_hidden_layers * layer + d + head
    }

    /// Inverse frequencies of the rotary embedding, with the checkpoint's scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let hd = self.head_dim;
        let base: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / hd as f64))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            }) => {
                let low_freq_wavelen = old_ctx / low_freq_factor;
                let high_freq_wavelen = old_ctx / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

fn parse_rope_scaling(s: &Map<String, Value>) -> Result<Option<RopeScaling>> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        s.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("field `rope_scaling.{k}` missing or not a number"))
    };
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => bail!(
            "field `rope_scaling.rope_type`: \"{other}\" is not supported (expected default, linear or llama3)"
        ),
    })
}

fn opt_usize_field(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|x| Some(x as usize))
            .with_context(|| format!("field `{key}`: expected a non-negative integer, got {v}")),
    }
}

fn usize_field(obj: &Map<String, Value>, key: &str) -> Result<usize> {
    opt_usize_field(obj, key)?.with_context(|| format!("field `{key}` missing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_json() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 100, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            "eos_token_id": [1, 2]
        })
    }

    #[test]
    fn scratch_configs_take_the_vocabulary_apart_from_the_spec() {
        let spec = ScratchSpec {
            arch: Arch::Qwen2,
            ..Default::default()
        };
        let c = ModelConfig::from_scratch(&spec, 300).unwrap();
        assert_eq!((c.arch, c.vocab_size, c.head_dim), (Arch::Qwen2, 300, 32));
        assert!(c.qkv_bias && c.tie_word_embeddings);
        let e = toml::from_str::<ScratchSpec>("arch = \"gpt2\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpt2") && e.contains("qwen2"), "{e}");
    }

    #[test]
    fn reads_rope_theta_from_rope_parameters() {
        let c = ModelConfig::from_json(&llama_json()).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.head_dim, 8);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert!(c.rope_scaling.is_none());
    }

    #[test]
    fn rejects_unsupported_architecture() {
        let mut v = llama_json();
        v["model_type"] = json!("gpt2");
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("gpt2") && e.contains("llama"), "{e}");
    }

    #[test]
    fn llama3_scaling_keeps_high_and_scales_low_frequencies() {
        let mut v = llama_json();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32});
        let c = ModelConfig::from_json(&v).unwrap();
        let plain = ModelConfig::from_json(&llama_json())
            .unwrap()
            .rope_inv_freq();
        let scaled = c.rope_inv_freq();
        assert_eq!(scaled[0], plain[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-15);
    }
}
