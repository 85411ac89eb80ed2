//! `gaplab sample`: KV-cached generation from a checkpoint folder (with a LoRA adapter applied).

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use serde::Serialize;

use crate::config::range;
use crate::data::chat::ChatTemplate;
use crate::model::{io, sample};
use crate::rng::Rng;

use super::{check_flag, print, DeviceArgs};

/// Generate a continuation of a prompt (KV-cached; temperature 0 is greedy).
#[derive(clap::Args, Clone, Debug)]
pub struct SampleArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT LoRA adapter folder applied to --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    /// Render the prompt as a user message with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message before the prompt (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl SampleArgs {
    /// The sampling settings; a value out of range is an error naming its flag.
    pub fn params(&self) -> Result<sample::SampleParams> {
        check_flag("temperature", range::temperature(self.temperature))?;
        check_flag("top-p", range::top_p(self.top_p))?;
        Ok(sample::SampleParams {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
        })
    }
}

#[derive(Serialize)]
pub struct SampleOutput {
    /// The prompt as the model saw it.
    pub prompt_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
}

/// Generates and prints the text (or JSON with `--json`).
pub fn run(args: &SampleArgs) -> Result<()> {
    let params = args.params()?;
    let (device, dtype) = args.device.resolve()?;
    let out = generate(args, &params, &device, dtype)?;
    if args.json {
        print(&(serde_json::to_string(&out)? + "\n"));
    } else {
        print(&(out.text + "\n"));
    }
    Ok(())
}

/// The continuation of `args.prompt`; with `args.chat` the prompt is rendered with the model's
/// chat template: an optional system message, the prompt as a user message, and the
/// generation prompt.
pub fn generate(
    args: &SampleArgs,
    params: &sample::SampleParams,
    device: &Device,
    dtype: DType,
) -> Result<SampleOutput> {
    let (model, tok) = io::load_with_adapter(&args.model, args.adapter.as_deref(), device, dtype)?;
    let prompt = if args.chat {
        let src = tok.chat_template.as_ref().with_context(|| {
            format!(
                "--chat: {} has no chat template (chat_template.jinja or `chat_template` in tokenizer_config.json)",
                args.model.display()
            )
        })?;
        let tpl = ChatTemplate::for_tok(&src.text, src.origin.clone(), &tok)?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        messages.push(serde_json::json!({"role": "user", "content": args.prompt}));
        tok.encode_prompt_as(&tpl.render(&messages, true)?, true)?
    } else {
        anyhow::ensure!(args.system.is_none(), "--system needs --chat");
        tok.encode_prompt(&args.prompt)?
    };
    anyhow::ensure!(
        !prompt.is_empty(),
        "--prompt: the prompt has no tokens (the tokenizer adds no BOS and the text is empty)"
    );
    let mut rng = Rng::new(args.seed);
    let token_ids = sample::generate(&model, &prompt, &tok.stop, params, &mut rng)?;
    let text = tok.decode(&token_ids)?;
    Ok(SampleOutput {
        prompt_ids: prompt,
        token_ids,
        text,
    })
}
