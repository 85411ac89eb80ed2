//! Hugging Face checkpoint folders: load (single or sharded safetensors) and save.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::lora::{self, ADAPTER_CONFIG};
use super::safetensors_check::{self, Expectation, Expected, FileSet, Summary, Unexpected};
use super::{param_specs, CausalLm, ModelConfig, Tok};

/// Files copied along with the weights so a saved folder is a complete checkpoint.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// The `weight_map` (tensor name -> shard file) of a sharded checkpoint folder's
/// model.safetensors.index.json, or None when the folder is not sharded.
fn shard_index(dir: &Path) -> Result<Option<BTreeMap<String, String>>> {
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Ok(None);
    }
    safetensors_check::read_index(&index).map(Some)
}

/// The safetensors files of a checkpoint folder, from its shard index when it has one.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(FileSet::of_dir(dir, "model")?.files)
}

/// The tensors a checkpoint of `cfg` holds, as [`load_model`] reads them (a tied LM head has
/// none of its own; qwen2's attention biases are there).
pub fn expectation(cfg: &ModelConfig) -> Expectation {
    Expectation {
        tensors: param_specs(cfg)
            .into_iter()
            .map(|s| Expected {
                name: s.name,
                shape: s.shape,
            })
            .collect(),
        shapes_from: "config.json".to_string(),
        mismatch_hint: String::new(),
        unexpected: Unexpected::Warn,
    }
}

/// Checks the weights of the checkpoint folder `dir` against `cfg` (its config.json) from the
/// safetensors headers alone: a truncated file, a shape config.json does not imply, a missing
/// tensor or shard, or an unsupported dtype is an error before any tensor is read.
pub fn check_weights(dir: &Path, cfg: &ModelConfig) -> Result<Summary> {
    let set = FileSet::of_dir(dir, "model")?;
    safetensors_check::check(&expectation(cfg), &set)
}

/// [`check_weights`] of the checkpoint folder `dir` against its own config.json, and of the
/// PEFT adapter folder `adapter` (when given) against that base: what a run checks before it
/// makes its run directory.
pub fn check_dir(dir: &Path, adapter: Option<&Path>) -> Result<Summary> {
    refuse_adapter_folder(dir)?;
    let cfg = ModelConfig::load(&dir.join("config.json"))?;
    let summary = check_weights(dir, &cfg)?;
    if let Some(adapter) = adapter {
        lora::check_adapter(adapter, &cfg)?;
    }
    Ok(summary)
}

/// Loads a checkpoint folder's weights in `dtype` onto `device`.
pub fn load_model(dir: &Path, device: &Device, dtype: DType) -> Result<CausalLm> {
    if !dir.is_dir() {
        bail!("{}: not a checkpoint folder", dir.display());
    }
    refuse_adapter_folder(dir)?;
    let cfg = ModelConfig::load(&dir.join("config.json"))?;
    let set = FileSet::of_dir(dir, "model")?;
    safetensors_check::check(&expectation(&cfg), &set)?;
    let files = set.files;
    // SAFETY: the files are memory-mapped read-only; gaplab never writes a checkpoint in place
    // (new checkpoints go to a temporary folder that is renamed).
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .with_context(|| format!("{}: cannot read safetensors", dir.display()))?;
    let mut map = HashMap::new();
    for spec in param_specs(&cfg) {
        let t = st.load(&spec.name, device).map_err(|_| {
            anyhow::anyhow!(
                "{}: tensor `{}` missing from the safetensors files",
                dir.display(),
                spec.name
            )
        })?;
        map.insert(spec.name, t.to_dtype(dtype)?);
    }
    CausalLm::from_tensors(cfg, map).with_context(|| dir.display().to_string())
}

/// Loads model and tokenizer of a checkpoint folder.
pub fn load_dir(dir: &Path, device: &Device, dtype: DType) -> Result<(CausalLm, Tok)> {
    let model = load_model(dir, device, dtype)?;
    let tok = Tok::load(dir, Some(&model.cfg))?;
    check_special_ids(
        dir,
        &[Some(tok.eos), tok.bos, tok.pad],
        model.cfg.vocab_size,
    )?;
    Ok((model, tok))
}

/// Every special token id of the checkpoint `dir` is inside its vocabulary.
pub fn check_special_ids(dir: &Path, ids: &[Option<u32>], vocab_size: usize) -> Result<()> {
    if let Some(&bad) = ids.iter().flatten().find(|&&id| id as usize >= vocab_size) {
        bail!(
            "{}: special token id {bad} is outside the model's vocab_size {vocab_size}",
            dir.display()
        );
    }
    Ok(())
}

/// Loads model and tokenizer of a checkpoint folder, with the PEFT adapter folder `adapter`
/// (when given) applied to the model.
pub fn load_with_adapter(
    dir: &Path,
    adapter: Option<&Path>,
    device: &Device,
    dtype: DType,
) -> Result<(CausalLm, Tok)> {
    let Some(adapter) = adapter else {
        return load_dir(dir, device, dtype);
    };
    // Both from their headers before the base's weights are read: a mismatched adapter is
    // named in a moment, not after a 16 GB load.
    check_dir(dir, Some(adapter))?;
    let (model, tok) = load_dir(dir, device, dtype)?;
    let (lora, pairs) = lora::load_adapter(adapter, &model.cfg, device, dtype)?;
    Ok((model.with_adapters(lora, pairs)?, tok))
}

/// A PEFT adapter folder given where a full checkpoint belongs is named as such (rather than
/// as a folder without config.json), with its base model when adapter_config.json names one.
pub fn refuse_adapter_folder(dir: &Path) -> Result<()> {
    let config = dir.join(ADAPTER_CONFIG);
    if dir.join("config.json").exists() || !config.exists() {
        return Ok(());
    }
    let base = std::fs::read_to_string(&config)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["base_model_name_or_path"].as_str().map(str::to_string))
        .map(|b| format!(" (\"{b}\")"))
        .unwrap_or_default();
    bail!(
        "{}: a LoRA adapter folder ({ADAPTER_CONFIG}), not a full checkpoint: give its base model{base} as the model (--model) and this folder as the adapter (--adapter)",
        dir.display()
    )
}

pub fn hf_dtype(name: &str) -> Option<DType> {
    match name {
        "float32" => Some(DType::F32),
        "bfloat16" => Some(DType::BF16),
        "float16" => Some(DType::F16),
        _ => None,
    }
}

/// Writes `model` as a Hugging Face folder (config.json + safetensors in the checkpoint's own
/// dtype) and copies the tokenizer files found in `tokenizer_from`; see [`save_weights`].
pub fn save_dir(model: &CausalLm, tokenizer_from: Option<&Path>, dir: &Path) -> Result<()> {
    save_weights(&model.cfg, model.weights(), tokenizer_from, dir)
}

/// Writes `weights` as a Hugging Face folder for `cfg`: tensors in the checkpoint's own dtype
/// (`cfg.stored_dtype`), in the same shard files as the folder `from` when it was sharded
/// (else one model.safetensors), config.json, and the tokenizer, chat-template and
/// generation-config files found in `from`, so transformers and vLLM load it as they loaded the
/// original.
pub fn save_weights(
    cfg: &ModelConfig,
    weights: &[(String, Tensor)],
    from: Option<&Path>,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dtype = hf_dtype(&cfg.stored_dtype).unwrap_or(DType::F32);
    let shard_of = match from {
        Some(src) => shard_index(src)?.unwrap_or_default(),
        None => BTreeMap::new(),
    };
    // BTreeMap: shard files are written, and listed in the index, in a stable order.
    let mut shards: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
    let mut total_size = 0usize;
    for (n, t) in weights {
        let t = t.detach().to_dtype(dtype)?.to_device(&Device::Cpu)?;
        total_size += t.elem_count() * dtype.size_in_bytes();
        let file = shard_of
            .get(n)
            .cloned()
            .unwrap_or_else(|| "model.safetensors".to_string());
        shards.entry(file).or_default().push((n.clone(), t));
    }
    if !shard_of.is_empty() {
        let mut weight_map = serde_json::Map::new();
        for (file, tensors) in &shards {
            for (n, _) in tensors {
                weight_map.insert(n.clone(), serde_json::json!(file));
            }
        }
        let index = serde_json::json!({
            "metadata": {"total_size": total_size},
            "weight_map": weight_map,
        });
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, serde_json::to_string_pretty(&index)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    for (file, tensors) in shards {
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let path = dir.join(&file);
        safetensors::serialize_to_file(tensors, Some(metadata), &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let config = serde_json::to_string_pretty(&cfg.to_hf_json())?;
    std::fs::write(dir.join("config.json"), config + "\n")
        .with_context(|| format!("cannot write {}/config.json", dir.display()))?;
    match from {
        Some(src) => copy_tokenizer_files(src, dir),
        None => Ok(()),
    }
}

/// Copies the tokenizer, chat-template and generation-config files found in `src` to `dir`.
pub fn copy_tokenizer_files(src: &Path, dir: &Path) -> Result<()> {
    for f in TOKENIZER_FILES {
        let from = src.join(f);
        if from.exists() {
            std::fs::copy(&from, dir.join(f))
                .with_context(|| format!("cannot copy {}", from.display()))?;
        }
    }
    Ok(())
}
