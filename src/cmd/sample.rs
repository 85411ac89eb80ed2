//! `gaplab sample`: KV-cached generation from a checkpoint folder.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use serde::Serialize;

use crate::data::chat::ChatTemplate;
use crate::model::{io, sample};
use crate::rng::Rng;

pub struct SampleArgs {
    pub model: PathBuf,
    pub prompt: String,
    /// Render the prompt with the model's chat template: an optional system message, the
    /// prompt as a user message, and the generation prompt.
    pub chat: bool,
    pub system: Option<String>,
    pub params: sample::SampleParams,
    pub seed: u64,
    pub device: Device,
    pub dtype: DType,
}

#[derive(Serialize)]
pub struct SampleOutput {
    /// The prompt as the model saw it.
    pub prompt_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
}

pub fn run(args: &SampleArgs) -> Result<SampleOutput> {
    let (model, tok) = io::load_dir(&args.model, &args.device, args.dtype)?;
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
    let token_ids = sample::generate(&model, &prompt, &tok.stop, &args.params, &mut rng)?;
    let text = tok.decode(&token_ids)?;
    Ok(SampleOutput {
        prompt_ids: prompt,
        token_ids,
        text,
    })
}
