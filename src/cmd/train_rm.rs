//! `gaplab train-rm`: a reward model trained on preference pairs (see
//! `crate::train::reward_model`), saved as a Hugging Face `*ForSequenceClassification` folder
//! that `[judge] reward_model`, `gaplab score` and `gaplab analyze` load.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::model::reward::RewardModel;
use crate::model::{io, CausalLm, ModelConfig, ScratchSpec, Tok};
use crate::reward::inputs::load_rm_pairs;
use crate::train::reward_model::{self, RmProgress, RmTrainConfig};

use super::DeviceArgs;

/// Train a reward model (a score head on a decoder, full fine-tuning, Bradley-Terry loss
/// -log σ(r_chosen - r_rejected)) on preference pairs, and save it as a Hugging Face
/// *ForSequenceClassification folder. Prints loss and pair accuracy as it goes; writes
/// OUT/train_rm.json with the final numbers.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainRmArgs {
    /// A causal LM folder (config.json, safetensors, tokenizer) whose decoder the head is put
    /// on, e.g. an SFT checkpoint (RUNS/sft-*/checkpoint).
    #[arg(long, required_unless_present = "scratch", conflicts_with = "scratch")]
    pub init: Option<PathBuf>,
    /// A small from-scratch decoder (hidden 64, 2 layers) over the tokenizer of --tokenizer:
    /// enough for synthetic tasks such as the demo's, on a CPU in about a minute.
    #[arg(long, requires = "tokenizer")]
    pub scratch: bool,
    /// The tokenizer folder of a --scratch model (tokenizer.json, tokenizer_config.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Training pairs (JSONL or Parquet; standard or conversational).
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out pairs whose loss and accuracy are reported.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// The folder the reward model is saved to.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Pairs per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Seed of the pair order (and of the head's and a --scratch decoder's initial weights).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest prompt + response in tokens; longer ones lose their end.
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Report every N steps.
    #[arg(long, default_value_t = 50)]
    pub report_every: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The decoder of a `--scratch` reward model: small enough to train in a minute on a CPU.
pub fn scratch_spec(seed: u64) -> ScratchSpec {
    ScratchSpec {
        hidden_size: 64,
        intermediate_size: 172,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 4,
        max_position_embeddings: 64,
        seed,
        ..ScratchSpec::default()
    }
}

fn progress_line(p: &RmProgress, steps: usize) -> String {
    let mut s = format!(
        "step {:>5}/{steps}  loss {:.4}  accuracy {:.3}",
        p.step, p.loss, p.accuracy
    );
    if let Some((l, a)) = p.eval {
        s.push_str(&format!("  eval loss {l:.4}  eval accuracy {a:.3}"));
    }
    s
}

pub fn run(args: &TrainRmArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.max_len < 2 {
        bail!("--max-len must be at least 2 (a prompt token and a response token)");
    }
    let (device, dtype) = args.device.resolve()?;
    let (decoder, tok): (CausalLm, Tok) = match (&args.init, &args.tokenizer) {
        (Some(dir), _) => io::load_dir(dir, &device, dtype)
            .with_context(|| format!("--init {}", dir.display()))?,
        (None, Some(tdir)) => {
            let tok =
                Tok::load(tdir, None).with_context(|| format!("--tokenizer {}", tdir.display()))?;
            let spec = scratch_spec(args.seed);
            let cfg = ModelConfig::from_scratch(&spec, tok.vocab_size())?;
            let dec = CausalLm::random(cfg, spec.seed, &device)?;
            (dec, tok)
        }
        (None, None) => bail!("give --init MODEL_DIR or --scratch --tokenizer DIR"),
    };
    let vocab = decoder.cfg.vocab_size;
    let max_len = args.max_len.min(decoder.cfg.max_position_embeddings);
    let (train, _) = load_rm_pairs(&args.data, &tok, vocab)
        .with_context(|| format!("--data {}", args.data.display()))?;
    let eval = match &args.eval {
        Some(p) => {
            load_rm_pairs(p, &tok, vocab)
                .with_context(|| format!("--eval {}", p.display()))?
                .0
        }
        None => vec![],
    };
    let rm = RewardModel::from_decoder(decoder, tok.pad, args.seed)?;
    let cfg = RmTrainConfig {
        steps: args.steps,
        lr: args.lr,
        batch_size: args.batch_size,
        seed: args.seed,
        max_len,
        ..RmTrainConfig::default()
    };
    super::print(&format!(
        "training a reward model on {} pairs ({} eval) for {} steps of {} pairs, lr {}\n",
        train.len(),
        eval.len(),
        cfg.steps,
        cfg.batch_size,
        cfg.lr
    ));
    let start = std::time::Instant::now();
    let rm = reward_model::train(rm, &train, &eval, &cfg, args.report_every, |p| {
        super::print(&(progress_line(p, cfg.steps) + "\n"))
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let (train_loss, train_acc) = reward_model::evaluate(&rm, &train, cfg.batch_size, max_len)?;
    let eval_m = if eval.is_empty() {
        None
    } else {
        Some(reward_model::evaluate(&rm, &eval, cfg.batch_size, max_len)?)
    };
    rm.save(&args.out, Some(&tok.dir))
        .with_context(|| format!("--out {}", args.out.display()))?;
    let summary = json!({
        "steps": cfg.steps,
        "seconds": seconds,
        "train_pairs": train.len(),
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "eval_pairs": eval.len(),
        "eval_loss": eval_m.map(|m| m.0),
        "eval_accuracy": eval_m.map(|m| m.1),
    });
    let path = args.out.join("train_rm.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut end =
        format!("done in {seconds:.1}s: train loss {train_loss:.4}, train accuracy {train_acc:.3}");
    if let Some((l, a)) = eval_m {
        end.push_str(&format!(", eval loss {l:.4}, eval accuracy {a:.3}"));
    }
    super::print(&format!(
        "{end}\nsaved the reward model to {}\n",
        args.out.display()
    ));
    Ok(())
}
