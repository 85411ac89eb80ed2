//! `gaplab merge`: fold a LoRA adapter into its base model and write a full checkpoint folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde::Serialize;

use crate::model::lora;
use crate::model::{io, ModelConfig};

use super::print;

/// Fold a LoRA adapter into its base model (W + scale·B·A) and write a full checkpoint
/// folder that transformers and vLLM load without PEFT.
#[derive(clap::Args, Clone, Debug)]
pub struct MergeArgs {
    /// Hugging Face checkpoint folder of the base model.
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT adapter folder (adapter_config.json and adapter_model.safetensors) made for --model.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Folder to write; refused when it exists and is not empty, unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out when it exists and is not empty.
    #[arg(long)]
    pub force: bool,
    /// Print one JSON document instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// auto, cpu or cuda:N (the weights keep the base's stored dtype; the merge runs in f32).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// What `merge` did, as `--json` prints it.
#[derive(Serialize)]
pub struct MergeReport {
    pub model: PathBuf,
    pub adapter: PathBuf,
    pub out: PathBuf,
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub scale: f64,
    pub target_modules: Vec<String>,
    /// Weights that received an adapter's update.
    pub merged_tensors: usize,
    /// Every tensor written.
    pub tensors: usize,
    /// The stored dtype of the base, kept by the merged folder.
    pub dtype: String,
}

/// Merges and prints what was written (a summary, or JSON with `--json`).
pub fn run(args: &MergeArgs) -> Result<()> {
    check_out(&args.out, args.force, &[&args.model, &args.adapter])?;
    let report = merge(args)?;
    if args.json {
        print(&(serde_json::to_string(&report)? + "\n"));
    } else {
        print(&render(&report));
    }
    Ok(())
}

/// Loads base and adapter, folds the adapter in and writes `args.out` atomically.
pub fn merge(args: &MergeArgs) -> Result<MergeReport> {
    let device = crate::model::select_device(&args.device)?;
    io::refuse_adapter_folder(&args.model)?;
    // Headers of both first: a mismatch is named before the base is loaded.
    io::check_dir(&args.model, Some(&args.adapter))?;
    let cfg = ModelConfig::load(&args.model.join("config.json"))?;
    let dtype = io::hf_dtype(&cfg.stored_dtype).unwrap_or(DType::F32);
    let base = io::load_model(&args.model, &device, dtype)?;
    // The adapter stays in f32 whatever the base's dtype, as PEFT keeps it on a half-precision
    // base, so the merged weight is rounded once.
    let (lora, pairs) = lora::load_adapter(&args.adapter, &base.cfg, &device, DType::F32)?;
    let weights = lora::fold(base.weights(), lora.scale(), &lora::flatten(&pairs))?;
    drop(base);
    crate::train::save_dir_atomic(&args.out, |tmp| {
        let written = io::save_weights(&cfg, &weights, Some(&args.model), tmp);
        if written.is_err() {
            // Nothing half-written is left behind, not even the temporary folder.
            let _ = std::fs::remove_dir_all(tmp);
        }
        written
    })
    .with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(MergeReport {
        model: args.model.clone(),
        adapter: args.adapter.clone(),
        out: args.out.clone(),
        r: lora.r,
        alpha: lora.alpha,
        use_rslora: lora.use_rslora,
        scale: lora.scale(),
        target_modules: lora.targets.iter().map(|m| m.name().to_string()).collect(),
        merged_tensors: pairs.len(),
        tensors: weights.len(),
        dtype: cfg.stored_dtype.clone(),
    })
}

/// `--out` may be a new or empty folder, or (with `force`) a non-empty one, but never a folder
/// that is or holds one of the inputs: replacing it would delete what is being read.
fn check_out(out: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        bail!("--out {}: exists and is not a folder", out.display());
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let out_c = canon(out);
    if let Some(input) = inputs.iter().find(|i| canon(i).starts_with(&out_c)) {
        bail!(
            "--out {}: holds the input {}; write the merged model to another folder",
            out.display(),
            input.display()
        );
    }
    let empty = std::fs::read_dir(out)
        .with_context(|| format!("--out {}: cannot read the folder", out.display()))?
        .next()
        .is_none();
    if !empty && !force {
        bail!(
            "--out {}: the folder exists and is not empty; pass --force to replace it",
            out.display()
        );
    }
    Ok(())
}

/// The summary printed without `--json`.
pub fn render(r: &MergeReport) -> String {
    format!(
        "merged {} into {}\n  lora     r {}, alpha {}{} (scale {}), targets {}\n  tensors  {} of {} merged, stored as {}\n  wrote    {}\n",
        r.adapter.display(),
        r.model.display(),
        r.r,
        r.alpha,
        if r.use_rslora { ", rsLoRA" } else { "" },
        r.scale,
        r.target_modules.join(", "),
        r.merged_tensors,
        r.tensors,
        r.dtype,
        r.out.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_must_be_new_empty_or_forced_and_never_an_input() {
        let tmp = tempfile::tempdir().unwrap();
        let (out, input) = (tmp.path().join("out"), tmp.path().join("base"));
        std::fs::create_dir_all(&input).unwrap();
        assert!(check_out(&out, false, &[&input]).is_ok());
        std::fs::create_dir_all(&out).unwrap();
        assert!(check_out(&out, false, &[&input]).is_ok());
        std::fs::write(out.join("x"), "").unwrap();
        let e = check_out(&out, false, &[&input]).unwrap_err().to_string();
        assert!(e.contains("not empty") && e.contains("--force"), "{e}");
        assert!(check_out(&out, true, &[&input]).is_ok());
        let e = check_out(tmp.path(), true, &[&input])
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds the input"), "{e}");
        let e = check_out(&out.join("x"), true, &[&input])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a folder"), "{e}");
    }
}
