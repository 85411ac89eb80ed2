//! `gaplab sample`: KV-cached generation from a checkpoint folder.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device};
use serde::Serialize;

use crate::model::{io, sample};
use crate::rng::Rng;

pub struct SampleArgs {
    pub model: PathBuf,
    pub prompt: String,
    pub params: sample::SampleParams,
    pub seed: u64,
    pub device: Device,
    pub dtype: DType,
}

#[derive(Serialize)]
pub struct SampleOutput {
    pub token_ids: Vec<u32>,
    pub text: String,
}

pub fn run(args: &SampleArgs) -> Result<SampleOutput> {
    let (model, tok) = io::load_dir(&args.model, &args.device, args.dtype)?;
    let prompt = tok.encode_prompt(&args.prompt)?;
    anyhow::ensure!(
        !prompt.is_empty(),
        "--prompt: the prompt has no tokens (the tokenizer adds no BOS and the text is empty)"
    );
    let mut rng = Rng::new(args.seed);
    let token_ids = sample::generate(&model, &prompt, &tok.stop, &args.params, &mut rng)?;
    let text = tok.decode(&token_ids)?;
    Ok(SampleOutput { token_ids, text })
}
