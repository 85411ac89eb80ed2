//! LoRA adapters in PEFT's layout: low-rank updates W + s·B·A on chosen linear layers of the
//! decoder, trained while the base weights stay frozen.
//!
//! PEFT's conventions, kept exactly so adapters move between gaplab, PEFT/TRL and vLLM:
//! A is [r, in] (Kaiming-uniform with a = √5, i.e. U(±1/√in)), B is [out, r] (zeros), the
//! scale s is alpha / r (alpha / √r with rsLoRA), dropout applies to the input of A only, and a
//! folder holds `adapter_config.json` and `adapter_model.safetensors` whose keys read
//! `base_model.model.<module>.lora_A.weight`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::safetensors_check::{self, Expectation, Expected, FileSet, Summary, Unexpected};
use super::ModelConfig;
use crate::rng::Rng;

/// The files of a PEFT adapter folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// PEFT's prefix of every saved key (the PeftModel wrapping the causal LM).
const KEY_PREFIX: &str = "base_model.model.";

/// A linear layer of a decoder block that can carry an adapter, by PEFT's module name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Module {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl Module {
    /// Every linear layer of a block, in the order of the forward pass. PEFT's "all-linear"
    /// means these (every linear layer but the LM head).
    pub const ALL: [Module; 7] = [
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::OProj,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::QProj => "q_proj",
            Self::KProj => "k_proj",
            Self::VProj => "v_proj",
            Self::OProj => "o_proj",
            Self::GateProj => "gate_proj",
            Self::UpProj => "up_proj",
            Self::DownProj => "down_proj",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The module's path inside block `layer` ("model.layers.3.self_attn.q_proj").
    pub fn path(self, layer: usize) -> String {
        let group = match self {
            Self::QProj | Self::KProj | Self::VProj | Self::OProj => "self_attn",
            _ => "mlp",
        };
        format!("model.layers.{layer}.{group}.{}", self.name())
    }

    /// (in, out) features of this linear layer in a decoder of `cfg`.
    pub fn features(self, cfg: &ModelConfig) -> (usize, usize) {
        let (d, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (h, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        match self {
            Self::QProj => (d, h * hd),
            Self::KProj | Self::VProj => (d, kv * hd),
            Self::OProj => (h * hd, d),
            Self::GateProj | Self::UpProj => (d, i),
            Self::DownProj => (i, d),
        }
    }
}

impl std::fmt::Display for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `lora.target_modules`: PEFT's module names, or "all-linear".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// "all-linear" (PEFT's shorthand); any other string is refused by [`TargetModules::resolve`].
    Named(String),
    List(Vec<String>),
}

impl Default for TargetModules {
    fn default() -> Self {
        Self::Named(ALL_LINEAR.to_string())
    }
}

pub const ALL_LINEAR: &str = "all-linear";

impl TargetModules {
    /// The modules named, or what is wrong: an entry that matches no module lists those that
    /// exist.
    pub fn resolve(&self) -> Result<Vec<Module>, String> {
        let names: Vec<&str> = match self {
            Self::Named(s) if s == ALL_LINEAR => return Ok(Module::ALL.to_vec()),
            Self::Named(s) => vec![s.as_str()],
            Self::List(v) => v.iter().map(String::as_str).collect(),
        };
        if names.is_empty() {
            return Err("an empty list targets no module".into());
        }
        let mut out = Vec::new();
        for n in names {
            // PEFT matches a list entry against the end of a module's path.
            let short = n.rsplit('.').next().unwrap_or(n);
            match Module::from_name(short) {
                Some(m) if !out.contains(&m) => out.push(m),
                Some(_) => {}
                None => {
                    let known: Vec<&str> = Module::ALL.iter().map(|m| m.name()).collect();
                    return Err(format!(
                        "\"{n}\" matches no module of the decoder; its linear layers are {} (or \"{ALL_LINEAR}\")",
                        known.join(", ")
                    ));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The adapter's shape and scaling: `[lora]`, or a PEFT folder's adapter_config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Module>,
    pub use_rslora: bool,
}

impl LoraConfig {
    /// The factor of B·A: alpha / r, or alpha / √r with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Every adapter tensor of a decoder of `cfg`: (module path, module, [r, in] and [out, r]).
    pub fn modules(&self, cfg: &ModelConfig) -> Vec<(String, Module)> {
        (0..cfg.num_hidden_layers)
            .flat_map(|l| self.targets.iter().map(move |&m| (m.path(l), m)))
            .collect()
    }

    /// Parameters the adapters add (the trainable ones of a LoRA run).
    pub fn num_params(&self, cfg: &ModelConfig) -> usize {
        self.modules(cfg)
            .iter()
            .map(|(_, m)| {
                let (i, o) = m.features(cfg);
                self.r * (i + o)
            })
            .sum()
    }

    /// adapter_config.json as PEFT 0.21 writes it (every field it writes, at its defaults), so
    /// `PeftModel.from_pretrained(base, DIR)` loads the folder.
    pub fn to_peft_json(&self, base_model: &str) -> Value {
        let targets: Vec<&str> = self.targets.iter().map(|m| m.name()).collect();
        json!({
            "alora_invocation_tokens": null,
            "alpha_pattern": {},
            "arrow_config": null,
            "auto_mapping": null,
            "base_model_name_or_path": base_model,
            "bias": "none",
            "corda_config": null,
            "ensure_weight_tying": false,
            "eva_config": null,
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "kasa_config": null,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_alpha": json_number(self.alpha),
            "lora_bias": false,
            "lora_dropout": self.dropout,
            "lora_ga_config": null,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": null,
            "monteclora_config": null,
            "peft_type": "LORA",
            "peft_version": "0.21.2",
            "qalora_group_size": 16,
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": targets,
            "target_parameters": null,
            "task_type": "CAUSAL_LM",
            "trainable_token_indices": null,
            "use_bdlora": null,
            "use_dora": false,
            "use_qalora": false,
            "use_rslora": self.use_rslora,
            "velora_config": null
        })
    }

    /// Reads a PEFT adapter_config.json, refusing what gaplab cannot apply as PEFT would.
    pub fn from_peft_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "{}: cannot read (a PEFT adapter folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})",
                path.display()
            )
        })?;
        let v: Value = super::parse_json(path, &text)?;
        let at = |field: &str, what: &str| -> anyhow::Error {
            anyhow::anyhow!("{}: field `{field}`: expected {what}", path.display())
        };
        match v.get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            other => bail!(
                "{}: field `peft_type` is {:?}; gaplab reads LoRA adapters (\"LORA\")",
                path.display(),
                other.unwrap_or("missing")
            ),
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| at("r", "a positive integer"))? as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| at("lora_alpha", "a number"))?;
        let dropout = v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        let use_rslora = v
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let targets: TargetModules =
            serde_json::from_value(v.get("target_modules").cloned().unwrap_or(Value::Null))
                .map_err(|_| at("target_modules", "a list of module names or \"all-linear\""))?;
        let targets = targets
            .resolve()
            .map_err(|e| anyhow::anyhow!("{}: field `target_modules`: {e}", path.display()))?;
        let unsupported = |field: &str, x: &Value| match field {
            "use_dora" | "fan_in_fan_out" => x.as_bool() == Some(true),
            "bias" => x.as_str().is_some_and(|s| s != "none"),
            "modules_to_save" => !(x.is_null() || x.as_array().is_some_and(|a| a.is_empty())),
            _ => !x.is_null(),
        };
        for field in [
            "use_dora",
            "bias",
            "fan_in_fan_out",
            "modules_to_save",
            "layers_to_transform",
        ] {
            if let Some(x) = v.get(field).filter(|x| unsupported(field, x)) {
                bail!(
                    "{}: field `{field}` is {x}; gaplab supports plain LoRA adapters (use_dora false, bias \"none\", no modules_to_save or layers_to_transform)",
                    path.display()
                );
            }
        }
        for field in ["rank_pattern", "alpha_pattern"] {
            if v.get(field)
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty())
            {
                bail!(
                    "{}: field `{field}` is not empty; gaplab supports one rank and alpha for every module",
                    path.display()
                );
            }
        }
        Ok(Self {
            r,
            alpha,
            dropout,
            targets,
            use_rslora,
        })
    }
}

/// Writes alpha as an integer when it is one (PEFT's configs usually hold integers).
fn json_number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// One module's adapter pair.
#[derive(Clone, Debug)]
pub struct LoraPair {
    /// [r, in]
    pub a: Tensor,
    /// [out, r]
    pub b: Tensor,
}

/// The key a PEFT file stores for `module`'s A or B.
pub fn peft_key(module: &str, which: char) -> String {
    format!("{KEY_PREFIX}{module}.lora_{which}.weight")
}

/// PEFT's flat, keyed form of `pairs` (module path -> pair): A then B of each module.
pub fn flatten(pairs: &BTreeMap<String, LoraPair>) -> Vec<(String, Tensor)> {
    pairs
        .iter()
        .flat_map(|(path, p)| {
            [
                (peft_key(path, 'A'), p.a.clone()),
                (peft_key(path, 'B'), p.b.clone()),
            ]
        })
        .collect()
}

/// `weights` with every adapter of `adapters` (PEFT-keyed, [`flatten`]'s form) folded in:
/// W + scale·B·A computed in f32 and rounded once to W's dtype, as PEFT's merge_and_unload
/// stores it. Every adapter must find its weight.
pub fn fold(
    weights: &[(String, Tensor)],
    scale: f64,
    adapters: &[(String, Tensor)],
) -> Result<Vec<(String, Tensor)>> {
    let by_key: HashMap<&str, &Tensor> = adapters.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut used = 0;
    let out = weights
        .iter()
        .map(|(name, w)| {
            let module = name.strip_suffix(".weight").unwrap_or(name);
            let pair = (
                by_key.get(peft_key(module, 'A').as_str()),
                by_key.get(peft_key(module, 'B').as_str()),
            );
            let t = match pair {
                (Some(a), Some(b)) => {
                    used += 1;
                    fold_one(w, a, b, scale)?
                }
                _ => w.detach(),
            };
            Ok((name.clone(), t))
        })
        .collect::<Result<Vec<_>>>()?;
    let pairs = adapters.len() / 2;
    if used != pairs {
        bail!(
            "{} of {pairs} adapters found no weight of the base to merge into",
            pairs - used
        );
    }
    Ok(out)
}

/// W + scale·B·A for one weight W [out, in], A [r, in], B [out, r].
fn fold_one(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let f32 = |t: &Tensor| t.detach().to_dtype(DType::F32);
    let delta = (f32(b)?.matmul(&f32(a)?)? * scale)?;
    Ok((f32(w)? + delta)?.to_dtype(w.dtype())?)
}

/// Fresh adapters as PEFT initialises them (A ~ U(±1/√in), B = 0), deterministic for a seed.
pub fn init_adapters(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<BTreeMap<String, LoraPair>> {
    let mut rng = Rng::new(seed ^ 0x6c6f_7261);
    let mut out = BTreeMap::new();
    for (path, m) in lora.modules(cfg) {
        let (i, o) = m.features(cfg);
        let bound = 1.0 / (i as f64).sqrt();
        let a: Vec<f32> = (0..lora.r * i)
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (lora.r, i), device)?.to_dtype(dtype)?;
        let b = Tensor::zeros((o, lora.r), dtype, device)?;
        out.insert(path, LoraPair { a, b });
    }
    Ok(out)
}

/// The config of the PEFT adapter folder `dir`; a folder that is not one is named, with what
/// it looks like instead.
pub fn adapter_config(dir: &Path) -> Result<LoraConfig> {
    if !dir.is_dir() {
        bail!("{}: not an adapter folder", dir.display());
    }
    let config_path = dir.join(ADAPTER_CONFIG);
    if !config_path.exists() {
        let hint = if dir.join("config.json").exists() {
            " (it holds config.json: a full checkpoint, not a LoRA adapter; pass it as the model)"
        } else {
            ""
        };
        bail!(
            "{}: no {ADAPTER_CONFIG}; a PEFT adapter folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}{hint}",
            dir.display()
        );
    }
    LoraConfig::from_peft_json(&config_path)
}

/// The tensors an adapter folder of `lora` holds for a decoder of `cfg`: A [r, in] and
/// B [out, r] of every targeted module of every layer, in [`LoraConfig::modules`] order.
fn expectation(lora: &LoraConfig, cfg: &ModelConfig) -> Expectation {
    let mut tensors = Vec::new();
    for (path, m) in lora.modules(cfg) {
        let (i, o) = m.features(cfg);
        for (which, shape) in [('A', vec![lora.r, i]), ('B', vec![o, lora.r])] {
            tensors.push(Expected {
                name: peft_key(&path, which),
                shape,
            });
        }
    }
    Expectation {
        tensors,
        shapes_from: format!("the base model with r = {}", lora.r),
        mismatch_hint: ": an adapter made for another base?".to_string(),
        // The loader has nowhere to put them: an adapter for modules this config does not
        // target would silently change nothing.
        unexpected: Unexpected::Refuse,
    }
}

/// Checks the PEFT adapter folder `dir` against a base of `cfg` from its config and the
/// safetensors header alone (every pair present once, shaped for the base, in a supported
/// dtype, inside the file), before any tensor is read.
pub fn check_adapter(dir: &Path, cfg: &ModelConfig) -> Result<(LoraConfig, Summary)> {
    let lora = adapter_config(dir)?;
    let set = FileSet::single(dir.join(ADAPTER_WEIGHTS));
    let summary = safetensors_check::check(&expectation(&lora, cfg), &set)?;
    Ok((lora, summary))
}

/// Reads a PEFT adapter folder for a decoder of `cfg`: its config and every pair, checked
/// against the shapes the base implies (from the header first, see [`check_adapter`]).
pub fn load_adapter(
    dir: &Path,
    cfg: &ModelConfig,
    device: &Device,
    dtype: DType,
) -> Result<(LoraConfig, BTreeMap<String, LoraPair>)> {
    let (lora, _) = check_adapter(dir, cfg)?;
    let weights = dir.join(ADAPTER_WEIGHTS);
    let mut map: HashMap<String, Tensor> = candle_core::safetensors::load(&weights, device)
        .with_context(|| format!("{}: cannot read safetensors", weights.display()))?;
    let mut out = BTreeMap::new();
    for (path, _) in lora.modules(cfg) {
        let mut take = |which: char| -> Result<Tensor> {
            let key = peft_key(&path, which);
            let t = map
                .remove(&key)
                .with_context(|| format!("{}: tensor `{key}` missing", weights.display()))?;
            Ok(t.to_dtype(dtype)?)
        };
        let a = take('A')?;
        let b = take('B')?;
        out.insert(path, LoraPair { a, b });
    }
    Ok((lora, out))
}

/// Writes a PEFT adapter folder: adapter_config.json and adapter_model.safetensors (f32, as
/// PEFT saves adapters trained in f32).
pub fn save_adapter(
    dir: &Path,
    lora: &LoraConfig,
    base_model: &str,
    adapters: &[(String, Tensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tensors = adapters
        .iter()
        .map(|(k, t)| {
            Ok((
                k.clone(),
                t.detach().to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join(ADAPTER_WEIGHTS);
    safetensors::serialize_to_file(tensors, Some(metadata), &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join(ADAPTER_CONFIG);
    let text = serde_json::to_string_pretty(&lora.to_peft_json(base_model))? + "\n";
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig::from_scratch(
            &crate::model::ScratchSpec {
                num_key_value_heads: 2,
                ..Default::default()
            },
            100,
        )
        .unwrap()
    }

    #[test]
    fn targets_resolve_like_peft() {
        let all = TargetModules::Named("all-linear".into()).resolve().unwrap();
        assert_eq!(all, Module::ALL.to_vec());
        let list = TargetModules::List(vec![
            "v_proj".into(),
            "model.layers.0.self_attn.q_proj".into(),
            "q_proj".into(),
        ]);
        assert_eq!(list.resolve().unwrap(), vec![Module::QProj, Module::VProj]);
        let bad = TargetModules::List(vec!["c_attn".into()])
            .resolve()
            .unwrap_err();
        assert!(bad.contains("c_attn") && bad.contains("gate_proj"), "{bad}");
        assert!(TargetModules::List(vec![]).resolve().is_err());
        assert!(TargetModules::Named("qkv".into()).resolve().is_err());
    }

    #[test]
    fn scale_and_sizes() {
        let c = cfg();
        let lora = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec![Module::QProj, Module::DownProj],
            use_rslora: false,
        };
        assert_eq!(lora.scale(), 2.0);
        assert_eq!(
            LoraConfig {
                use_rslora: true,
                ..lora.clone()
            }
            .scale(),
            4.0
        );
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let q = c.num_attention_heads * c.head_dim;
        assert_eq!(
            lora.num_params(&c),
            c.num_hidden_layers * 4 * ((d + q) + (i + d))
        );
    }

    #[test]
    fn a_saved_adapter_reads_back() {
        let c = cfg();
        let lora = LoraConfig {
            r: 2,
            alpha: 16.0,
            dropout: 0.05,
            targets: vec![Module::VProj, Module::UpProj],
            use_rslora: true,
        };
        let pairs = init_adapters(&c, &lora, 7, &Device::Cpu, DType::F32).unwrap();
        let flat = flatten(&pairs);
        let dir = tempfile::tempdir().unwrap();
        save_adapter(dir.path(), &lora, "base", &flat).unwrap();
        let (back, loaded) = load_adapter(dir.path(), &c, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(back, lora);
        assert_eq!(loaded.len(), pairs.len());
        let a = &pairs.values().next().unwrap().a;
        let bound = 1.0 / (c.hidden_size as f32).sqrt();
        let v: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.abs() <= bound) && v.iter().any(|x| *x != 0.0));
    }

    fn t(v: &[f32], shape: (usize, usize), dtype: DType) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn fold_adds_the_scaled_product() {
        let w = t(&[1.0, 0.0, 0.0, 1.0], (2, 2), DType::F32);
        let (a, b) = (
            t(&[1.0, 2.0], (1, 2), DType::F32),
            t(&[0.5, -1.0], (2, 1), DType::F32),
        );
        let got: Vec<Vec<f32>> = fold_one(&w, &a, &b, 2.0).unwrap().to_vec2().unwrap();
        // B·A = [[0.5, 1], [-1, -2]], times 2, plus the identity.
        assert_eq!(got, vec![vec![2.0, 2.0], vec![-2.0, -3.0]]);
    }

    #[test]
    fn fold_rounds_once_to_the_base_dtype() {
        // W = 1 in bf16 (spacing 2^-7 there), B·A = 2^-8 + 2^-20: just over half a step, so
        // the sum rounds up. Rounding A to bf16 first would give 2^-8, exactly half a step,
        // which ties to even: 1.
        let w = t(&[1.0], (1, 1), DType::BF16);
        let a = t(&[2f32.powi(-8) + 2f32.powi(-20)], (1, 1), DType::F32);
        let b = t(&[1.0], (1, 1), DType::F32);
        let got = fold_one(&w, &a, &b, 1.0).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let v: Vec<Vec<f32>> = got.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
        assert_eq!(v[0][0], 1.0 + 2f32.powi(-7));
    }

    #[test]
    fn every_adapter_needs_its_weight() {
        let w = t(&[0.0; 4], (2, 2), DType::F32);
        let weights = vec![
            (
                "model.layers.0.self_attn.q_proj.weight".to_string(),
                w.clone(),
            ),
            ("model.norm.weight".to_string(), w),
        ];
        let pair = || LoraPair {
            a: t(&[1.0, 2.0], (1, 2), DType::F32),
            b: t(&[0.5, -1.0], (2, 1), DType::F32),
        };
        let mut pairs = BTreeMap::new();
        pairs.insert("model.layers.0.self_attn.q_proj".to_string(), pair());
        let out = fold(&weights, 1.0, &flatten(&pairs)).unwrap();
        assert_eq!(out.len(), 2);
        pairs.insert("model.layers.9.self_attn.q_proj".to_string(), pair());
        let e = fold(&weights, 1.0, &flatten(&pairs))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 of 2 adapters"), "{e}");
    }

    #[test]
    fn bad_adapters_are_named() {
        let c = cfg();
        let dir = tempfile::tempdir().unwrap();
        let e = load_adapter(dir.path(), &c, &Device::Cpu, DType::F32).unwrap_err();
        assert!(e.to_string().contains("no adapter_config.json"), "{e}");
        // Made for a wider base: the tensor and both shapes are named.
        let mut wide = c.clone();
        wide.hidden_size *= 2;
        wide.head_dim *= 2;
        let lora = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: vec![Module::QProj],
            use_rslora: false,
        };
        let pairs = init_adapters(&wide, &lora, 1, &Device::Cpu, DType::F32).unwrap();
        let flat = flatten(&pairs);
        save_adapter(dir.path(), &lora, "base", &flat).unwrap();
        let e = format!(
            "{:#}",
            load_adapter(dir.path(), &c, &Device::Cpu, DType::F32).unwrap_err()
        );
        assert!(
            e.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
                && e.contains("another base"),
            "{e}"
        );
    }
}
