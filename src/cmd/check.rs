//! `gaplab check`: validate a workspace (config, model folder, tokenizer, data) without
//! training, and print data statistics.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::Workspace;
use crate::data::stats::{self, DataStats, Spread};
use crate::data::FileKind;
use crate::event::count;
use crate::model::reward::RewardModel;
use crate::model::safetensors_check::Summary;
use crate::model::{io, lora, DeviceSpec, ModelConfig};
use crate::train::dataset::load_dataset;
use crate::train::initial::ModelSource;
use crate::train::memory;

fn spread_row(out: &mut String, name: &str, s: &Spread) {
    let _ = writeln!(
        out,
        "  {name:<12} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>8.1}",
        s.min, s.p5, s.p50, s.p95, s.max, s.mean
    );
}

fn render_stats(out: &mut String, title: &str, s: &DataStats) {
    let _ = writeln!(
        out,
        "{title}: {} pairs (lengths in tokens; responses include EOS)",
        s.pairs
    );
    let _ = writeln!(
        out,
        "  {:<12} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "", "min", "p5", "p50", "p95", "max", "mean"
    );
    spread_row(out, "prompt", &s.prompt);
    spread_row(out, "chosen", &s.chosen);
    spread_row(out, "rejected", &s.rejected);
    spread_row(out, "k = min", &s.k);
    spread_row(out, "|y_w|-|y_l|", &s.length_diff);
    let _ = writeln!(
        out,
        "  chosen longer in {:.0}% of pairs, equal length in {:.0}%; POET keeps {:.0}% of response tokens",
        100.0 * s.chosen_longer,
        100.0 * s.equal_length,
        100.0 * s.poet_kept
    );
    let hist: Vec<String> = s
        .k_histogram
        .iter()
        .map(|(b, n)| format!("<={b}: {n}"))
        .collect();
    let _ = writeln!(out, "  k distribution: {}", hist.join(", "));
}

/// `s` quoted with escapes; a long one shows its start and its end.
fn preview(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(max * 2 / 3).collect();
    let tail: String = s.chars().skip(n - max / 3).collect();
    format!("{head:?} ... {tail:?} ({n} characters)")
}

/// Validate a workspace (config, model, tokenizer, data) and print data statistics; given a
/// reward-model folder, check that instead.
#[derive(clap::Args, Clone, Debug)]
pub struct CheckArgs {
    pub workspace: PathBuf,
}

pub fn run(args: &CheckArgs) -> Result<()> {
    super::print(&report(&args.workspace)?);
    Ok(())
}

/// The line (and warnings) of a checkpoint's weights checked from their safetensors headers.
fn weights_lines(out: &mut String, what: &str, s: &Summary) {
    let _ = writeln!(out, "{what}: OK ({s})");
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
}

/// The adapters a LoRA workspace trains, and the adapter it starts from checked against the
/// base from its header (every tensor present once with the shape the base implies).
fn lora_lines(
    out: &mut String,
    cfg: &crate::config::RunConfig,
    model_cfg: &ModelConfig,
) -> Result<()> {
    let Some(l) = cfg.lora_settings()? else {
        return Ok(());
    };
    let adapter = match &cfg.model.adapter {
        Some(dir) => Some(lora::check_adapter(dir, model_cfg)?.1),
        None => None,
    };
    let targets: Vec<&str> = l.targets.iter().map(|m| m.name()).collect();
    let trainable = l.num_params(model_cfg);
    let start = match &cfg.model.adapter {
        Some(dir) => format!(", starting from {}", dir.display()),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "lora: r {} alpha {} (scale {:.3}{}) dropout {} on {}{start} · trainable {} of {} params",
        l.r,
        l.alpha,
        l.scale(),
        if l.use_rslora { ", rsLoRA" } else { "" },
        l.dropout,
        targets.join(", "),
        count(trainable),
        count(model_cfg.num_params())
    );
    if let Some(s) = adapter {
        weights_lines(out, "adapter", &s);
    }
    Ok(())
}

/// Whether `path` is a reward-model folder rather than a workspace: a folder without
/// gaplab.toml whose config.json names a *ForSequenceClassification architecture.
fn is_reward_model_dir(path: &Path) -> bool {
    if !path.is_dir() || path.join("gaplab.toml").exists() {
        return false;
    }
    std::fs::read_to_string(path.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("architectures").cloned())
        .and_then(|a| {
            a.as_array().map(|a| {
                a.iter().any(|x| {
                    x.as_str()
                        .is_some_and(|x| x.ends_with("ForSequenceClassification"))
                })
            })
        })
        .unwrap_or(false)
}

/// What `check` prints for a reward-model folder: its weights checked from their headers,
/// its tokenizer, and how its reward is read.
fn reward_model_report(dir: &Path) -> Result<String> {
    let summary = RewardModel::check_dir(dir)?;
    let cfg = ModelConfig::load(&dir.join("config.json"))?;
    let tok = crate::model::Tok::load(dir, Some(&cfg))?;
    // A reward model has no LM head, whatever tie_word_embeddings says.
    let params = ModelConfig {
        tie_word_embeddings: true,
        ..cfg.clone()
    }
    .num_params()
        + cfg.hidden_size;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: reward model ({}, {:.2}M parameters with the score head, vocab {}, max {} positions)",
        dir.display(),
        crate::model::reward::hf_class(cfg.arch),
        params as f64 / 1e6,
        cfg.vocab_size,
        cfg.max_position_embeddings
    );
    weights_lines(&mut out, "weights", &summary);
    let read = match cfg.pad_token_id {
        Some(p) if cfg.eos_token_ids.contains(&p) => format!(
            "at the rightmost token that is not pad_token_id {p}; it is also an EOS id, so a response that ends with EOS is scored at the token before its EOS (as transformers does)"
        ),
        Some(p) => format!("at the rightmost token that is not pad_token_id {p}"),
        None => "at the last token (config.json has no pad_token_id)".to_string(),
    };
    let _ = writeln!(out, "reward: read {read}");
    let _ = writeln!(
        out,
        "tokenizer: {} (eos {}, chat template {})",
        tok.dir.display(),
        tok.eos,
        tok.chat_template.as_ref().map_or(
            "none: conversational data cannot be scored".to_string(),
            |t| t.origin.clone()
        )
    );
    Ok(out)
}

/// What `check` prints: "config ok", the model, data statistics and each variant's plan (or,
/// for a reward-model folder, that folder's checks).
pub fn report(path: &Path) -> Result<String> {
    if is_reward_model_dir(path) {
        return reward_model_report(path);
    }
    let ws = Workspace::load(path)?;
    let names = ws.variant_names();
    let cfgs = names
        .iter()
        .map(|n| ws.run_config(n))
        .collect::<Result<Vec<_>>>()?;
    let cfg = &cfgs[0];
    let mut out = String::new();
    let _ = writeln!(out, "{}: config ok", ws.file.display());
    let source = ModelSource::of(&cfg.model)?;
    let (model_cfg, tok) = source.inspect()?;
    // Headers only: a truncated download or a config.json that does not fit the weights fails
    // here rather than when a run loads them.
    let weights = match source {
        ModelSource::Checkpoint(dir) => Some(io::check_weights(dir, &model_cfg)?),
        ModelSource::Scratch { .. } => None,
    };
    let what = match source {
        ModelSource::Checkpoint(dir) => format!(
            "{} ({}, {:.2}M parameters, vocab {})",
            dir.display(),
            model_cfg.arch.model_type(),
            model_cfg.num_params() as f64 / 1e6,
            model_cfg.vocab_size
        ),
        ModelSource::Scratch { spec, tokenizer } => format!(
            "from scratch: {} hidden {} x {} layers, tokenizer {} (vocab {})",
            spec.arch.model_type(),
            spec.hidden_size,
            spec.num_hidden_layers,
            tokenizer.display(),
            tok.vocab_size()
        ),
    };
    let (vocab, max_pos) = (model_cfg.vocab_size, model_cfg.max_position_embeddings);
    if cfg.data.max_len > max_pos {
        bail!(
            "{}: data.max_len ({}) exceeds the model's max_position_embeddings ({max_pos})",
            ws.file.display(),
            cfg.data.max_len
        );
    }
    let _ = writeln!(out, "model: {what}");
    if let Some(s) = &weights {
        weights_lines(&mut out, "checkpoint", s);
    }
    lora_lines(&mut out, cfg, &model_cfg)?;
    let data = load_dataset(cfg, &tok, vocab)?;
    if data.train.is_empty() {
        bail!("{}: no training pairs", cfg.data.train.display());
    }
    for f in &data.files {
        let _ = writeln!(out, "data {}: {f}", f.path.display());
        if let FileKind::Conversational { first, .. } = &f.kind {
            // The first pair as the model sees it, to eyeball the template's output.
            for (name, text) in [
                ("prompt", &first.prompt),
                ("chosen", &first.chosen),
                ("rejected", &first.rejected),
            ] {
                let _ = writeln!(out, "  first {name:<9} {}", preview(text, 240));
            }
        }
    }
    for c in &cfgs {
        let per = c.train.pairs_per_step();
        let steps = c.train.total_steps(data.train.len());
        let _ = writeln!(
            out,
            "variant {}: {}{} beta {} lr {} · {steps} steps of {per} pairs",
            c.variant,
            c.train.objective,
            c.train
                .poet_rule()
                .label()
                .map_or(String::new(), |p| format!("+{p}")),
            c.train.beta,
            c.train.lr
        );
        for w in c.train.objective_warnings() {
            let _ = writeln!(out, "  warning: {w}");
        }
        // The same estimate and refusal as `gaplab train`; a GPU this machine lacks gets the
        // estimate without its free memory.
        let line = match c.train.device.select() {
            Ok(device) => memory::plan_run(c, None, &model_cfg, &device, &data.train, &data.eval),
            Err(_) if matches!(c.train.device, DeviceSpec::Cuda(_)) => {
                memory::plan_elsewhere(c, &model_cfg, &data.train, &data.eval)
            }
            Err(e) => Err(e),
        }
        .with_context(|| format!("variant {}", c.variant))?;
        let _ = writeln!(out, "  {line}");
    }
    if let Some(s) = &cfg.sft {
        if s.steps > 0 {
            let _ = writeln!(
                out,
                "sft stage: {} steps, lr {}, batch {}",
                s.steps, s.lr, s.batch_size
            );
        }
    }
    let _ = writeln!(out, "length limits: {}", cfg.data.length_limits());
    let _ = writeln!(
        out,
        "  train {}: {}",
        cfg.data.train.display(),
        data.train_fit
    );
    if data.eval_fit.pairs > 0 {
        let source = match &cfg.data.eval {
            Some(p) => p.display().to_string(),
            None => format!("(held out from {})", cfg.data.train.display()),
        };
        let _ = writeln!(out, "  eval {source}: {}", data.eval_fit);
    }
    render_stats(
        &mut out,
        &format!("train ({})", cfg.data.train.display()),
        &stats::stats(&data.train),
    );
    if data.eval.is_empty() {
        let _ = writeln!(
            out,
            "eval: none (set data.eval or data.eval_holdout for held-out metrics)"
        );
    } else {
        render_stats(&mut out, "eval", &stats::stats(&data.eval));
    }
    Ok(out)
}
