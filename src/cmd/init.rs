//! `gaplab init`: writes a commented starter workspace.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::FILE_NAME;

const STARTER: &str = r#"# gaplab workspace: one experiment, usually a controlled comparison of variants.
# Paths are relative to this folder. `gaplab check .` validates it and prints data statistics;
# `gaplab train .` runs every variant in order.

[model]
# A Hugging Face checkpoint folder (config.json, model.safetensors, tokenizer.json) ...
path = "{MODEL}"
# ... or a decoder trained from scratch with an existing tokenizer folder:
# tokenizer = "path/to/tokenizer-folder"
# [model.scratch]
# arch = "llama"            # llama | mistral | qwen2
# hidden_size = 128
# intermediate_size = 344
# num_hidden_layers = 2
# num_attention_heads = 4
# num_key_value_heads = 4
# max_position_embeddings = 512
# tie_word_embeddings = true
# seed = 0
# adapter = "path/to/peft-adapter"  # start from a PEFT LoRA adapter (e.g. an SFT LoRA)

[data]
# JSONL, one object a line with string fields "prompt", "chosen", "rejected" (standard), or
# conversational: "chosen"/"rejected" lists of {"role", "content"} messages with a "prompt"
# list, or without one (the messages chosen and rejected share are the prompt). Parquet files
# (.parquet) read the same way, and a glob reads shards in name order, e.g.
# train = "ultrafeedback_binarized/data/train_prefs-*.parquet".
train = "data/train.jsonl"
eval = "data/eval.jsonl"
max_prompt_len = {MAX_PROMPT}        # an over-long pair's prompt is cut to this (see prompt_truncation)
max_len = {MAX_LEN}               # prompt + longer response (see overlong)
# prompt_truncation = "keep_end"   # keep_end (TRL's: the end, and a BOS) | keep_start
# overlong = "truncate"      # still too long once the prompt is cut: truncate the responses | drop the pair
# format = "auto"            # auto (per file, from its first row) | standard | conversational
# prompt_field = "prompt"    # field names; other fields are ignored
# chosen_field = "chosen"
# rejected_field = "rejected"
# chat_template = ""         # conversational data: "" = the checkpoint's, a .jinja file, or inline

# Train LoRA adapters (PEFT's layout) over the frozen base instead of every weight: how a
# 7-8B model fits one GPU. The reference is then the base with the adapters off.
# [lora]
# r = 16
# alpha = 32
# dropout = 0.05
# target_modules = "all-linear"   # or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# use_rslora = false

# Optional supervised stage on the chosen responses; its result is the initial policy and the
# reference of every variant.
# [sft]
# steps = 100
# lr = 1e-3
# batch_size = 8

[train]
objective = "dpo"           # dpo | simpo | ipo
beta = 0.1                  # DPO/IPO: 0.01-0.1; SimPO: 2-10
gamma = 1.0                 # SimPO's target margin (absolute)
poet = false                # count only the first k = min(|y_w|, |y_l|) response tokens
lr = 5e-6
schedule = "cosine"         # cosine | linear | constant
warmup_ratio = 0.1
weight_decay = 0.0
batch_size = 4              # pairs per micro-batch
grad_accum = 1
max_grad_norm = 1.0         # 0 turns clipping off
epochs = 1.0                # or: steps = 200
seed = 0
device = "cpu"              # auto | cpu | cuda:N (build with --features cuda)
dtype = "f32"               # f32 | bf16 | f16 (f32 optimizer state and loss math either way)
memory_check = true         # refuse to start when the memory estimate exceeds the device's
max_memory_gb = 0.0         # cap for the estimate in GiB (0: the device's free memory)
precompute_ref = false      # score the data with the reference once, cache it on disk
gradient_checkpointing = false  # recompute each layer in backward: far less activation memory
max_bad_steps = 3           # consecutive non-finite steps before the run stops

[eval]
interval = 10               # steps between evaluations (0: start and end only)
pairs = 64
prefix_lengths = []         # empty: 1, 2, 4, ... up to the longest k
heatmap_pairs = 8
health = true               # eval_gen/*: length, stop share, repetition, KL of the generations
kl_positions = 32           # response positions of the KL-by-position profile
token_view_pairs = 4        # eval pairs recorded token by token for the token view (T)
token_view_tokens = 64      # tokens recorded per response of those pairs

[sample]
interval = 20
prompts = []                # empty: the prompts of the first `from_eval` eval pairs
from_eval = 2
max_new_tokens = 64
temperature = 0.0           # 0 is greedy
top_p = 1.0

[checkpoint]
interval = 50               # 0: only at the end
keep = 2

# Every eval generates for the first `prompts` eval prompts (greedy, plus `samples` sampled);
# the health metrics read those generations, and a judge scores them: a programmatic one for
# tasks a program can grade (see workspaces/demo), or a reward model (a Hugging Face
# *ForSequenceClassification folder), in full and at the first k tokens.
# [judge]
# task = "sort"
# reward_model = "path/to/reward-model"
# prefix_lengths = [1, 2, 4, 8, 16]
# prompts = 64
# samples = 1
# max_new_tokens = 32

# Alerts in the status bar, the log and events.jsonl (thresholds; all live).
# [alerts]
# enabled = true
# length_growth = 0.25      # generations 25% longer than at the first eval
# kl_max = 5.0              # per-token KL(policy || reference) of sampled generations

# TensorBoard event files of the run's metrics in RUN_DIR/tb/, tagged as TRL's Trainer tags
# them (train/loss, eval/rewards/margins); `gaplab export tensorboard RUN_DIR` writes them later.
# [log]
# tensorboard = false

# The dashboard; these (and most settings above) may be edited while a run trains.
# [ui]
# theme = "default"         # default | dark | light | mono | a themes/NAME.toml | a path
# smoothing = 0.6
# refresh_hz = 15
# color = "auto"            # auto | truecolor | 256 | 16 | none
# markers = "auto"          # auto | braille | dot

# Variants override any [train] setting; every variant starts from the same initial policy,
# reference and data order.
[[variant]]
name = "dpo"

[[variant]]
name = "dpo-poet"
poet = true
"#;

const TRAIN: &str = r#"{"prompt": "Name a primary colour.", "chosen": " Red is a primary colour.", "rejected": " Green, I think, but it depends on many things that are hard to explain."}
{"prompt": "What is two plus two?", "chosen": " Four.", "rejected": " Five."}
{"prompt": "Say hello politely.", "chosen": " Hello, nice to meet you.", "rejected": " Whatever."}
{"prompt": "Give an antonym of hot.", "chosen": " Cold.", "rejected": " Warm, or maybe also very hot, it is difficult."}
"#;

const EVAL: &str = r#"{"prompt": "What is one plus one?", "chosen": " Two.", "rejected": " Three."}
{"prompt": "Name an animal that barks.", "chosen": " A dog.", "rejected": " A cat, probably."}
"#;

/// Write a commented starter workspace.
#[derive(clap::Args, Clone, Debug)]
pub struct InitArgs {
    pub dir: PathBuf,
    /// Checkpoint folder to put in [model] path.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

pub fn run(args: &InitArgs) -> Result<()> {
    super::print(&write(&args.dir, args.model.as_deref())?);
    Ok(())
}

/// Writes DIR/gaplab.toml and example data; refuses to overwrite an existing workspace.
/// Returns what to tell the user.
pub fn write(dir: &Path, model: Option<&Path>) -> Result<String> {
    let file = dir.join(FILE_NAME);
    if file.exists() {
        bail!("{}: already exists (not overwritten)", file.display());
    }
    std::fs::create_dir_all(dir.join("data"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // Lengths that fit the model's context when it is known.
    let max_len = match model {
        Some(m) => crate::model::ModelConfig::load(&m.join("config.json"))?
            .max_position_embeddings
            .min(512),
        None => 512,
    };
    let model = model.map_or("path/to/hf-checkpoint".to_string(), |m| {
        std::path::absolute(m)
            .unwrap_or(m.to_path_buf())
            .display()
            .to_string()
    });
    let text = STARTER
        .replace("{MODEL}", &model.replace('\\', "/"))
        .replace("{MAX_LEN}", &max_len.to_string())
        .replace("{MAX_PROMPT}", &(max_len / 2).to_string());
    std::fs::write(&file, text)?;
    for (name, text) in [("train.jsonl", TRAIN), ("eval.jsonl", EVAL)] {
        let p = dir.join("data").join(name);
        if !p.exists() {
            std::fs::write(&p, text)?;
        }
    }
    Ok(format!(
        "wrote {} and example data in {}/data\nnext: edit [model] and [data], then `gaplab check {}`\n",
        file.display(),
        dir.display(),
        dir.display()
    ))
}
