//! The model a workspace starts from: a Hugging Face checkpoint folder (`model.path`) or a
//! seeded from-scratch decoder over a tokenizer folder (`[model.scratch]`). `gaplab check`
//! inspects it without reading weights; training starts every variant from its folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::refcache::checkpoint_fingerprint;
use crate::config::ModelSection;
use crate::hash::Fnv;
use crate::model::{io, CausalLm, ModelConfig, ScratchSpec, Tok};

/// Where the initial weights come from.
#[derive(Clone, Copy, Debug)]
pub enum ModelSource<'a> {
    /// `model.path`: a Hugging Face checkpoint folder.
    Checkpoint(&'a Path),
    /// `[model.scratch]`: a fresh decoder over the vocabulary of `model.tokenizer`.
    Scratch {
        spec: &'a ScratchSpec,
        tokenizer: &'a Path,
    },
}

impl<'a> ModelSource<'a> {
    /// The source `[model]` names (a checkpoint folder wins, as validation allows only one).
    pub fn of(model: &'a ModelSection) -> Result<Self> {
        match (&model.path, &model.scratch) {
            (Some(dir), _) => Ok(Self::Checkpoint(dir)),
            (None, Some(spec)) => Ok(Self::Scratch {
                spec,
                tokenizer: model
                    .tokenizer
                    .as_deref()
                    .context("model.tokenizer: a scratch model needs a tokenizer folder")?,
            }),
            (None, None) => bail!("model: expected `path` or `[model.scratch]`"),
        }
    }

    /// The model's config and tokenizer, without reading a weight (a checkpoint's weight files
    /// must be there).
    pub fn inspect(&self) -> Result<(ModelConfig, Tok)> {
        match *self {
            Self::Checkpoint(dir) => {
                let mc = ModelConfig::load(&dir.join("config.json"))?;
                io::weight_files(dir)?;
                let tok = Tok::load(dir, Some(&mc))?;
                Ok((mc, tok))
            }
            Self::Scratch { spec, tokenizer } => {
                let tok = Tok::load(tokenizer, None)?;
                Ok((scratch_config(spec, &tok)?, tok))
            }
        }
    }

    /// The HF folder every variant starts from before any SFT: the checkpoint itself, or the
    /// seeded from-scratch model, saved once under `runs_root/init-<hash>` (reused while the
    /// spec and the tokenizer files stay the same).
    pub fn initial_dir(&self, runs_root: &Path) -> Result<PathBuf> {
        let (spec, tok_dir) = match *self {
            Self::Checkpoint(dir) => return Ok(dir.to_path_buf()),
            Self::Scratch { spec, tokenizer } => (spec, tokenizer),
        };
        let dir = runs_root.join(format!("init-{:016x}", scratch_key(spec, tok_dir)?));
        if dir.join("config.json").exists() {
            return Ok(dir);
        }
        let tok = Tok::load(tok_dir, None)?;
        let model = CausalLm::random(scratch_config(spec, &tok)?, spec.seed, &Device::Cpu)?;
        super::save_dir_atomic(&dir, |tmp| io::save_dir(&model, Some(tok_dir), tmp))?;
        Ok(dir)
    }
}

/// The cache key of a from-scratch model: the spec as TOML and the tokenizer files. (Existing
/// `init-*` folders stay valid only while this hashes the same bytes.)
fn scratch_key(spec: &ScratchSpec, tok_dir: &Path) -> Result<u64> {
    let mut h = Fnv::default();
    h.bytes(toml::to_string(spec)?.as_bytes());
    checkpoint_fingerprint(tok_dir, &mut h)?;
    Ok(h.0)
}

/// The config of a from-scratch model over `tok`'s vocabulary and special tokens.
fn scratch_config(spec: &ScratchSpec, tok: &Tok) -> Result<ModelConfig> {
    let mut mc = ModelConfig::from_scratch(spec, tok.vocab_size())?;
    mc.bos_token_id = tok.bos;
    mc.eos_token_ids = vec![tok.eos];
    mc.pad_token_id = tok.pad;
    Ok(mc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_spec_hashes_as_it_always_did() {
        // The TOML text is part of every `init-*` cache key: a renamed, reordered or retyped
        // field would orphan the folders made before.
        let text = toml::to_string(&ScratchSpec::default()).unwrap();
        assert_eq!(
            text,
            "arch = \"llama\"\nhidden_size = 128\nintermediate_size = 344\nnum_hidden_layers = 2\nnum_attention_heads = 4\nnum_key_value_heads = 4\nmax_position_embeddings = 512\nrope_theta = 10000.0\ntie_word_embeddings = true\nseed = 0\n"
        );
    }

    #[test]
    fn sources_follow_the_model_section() {
        let mut m = ModelSection {
            path: Some("ckpt".into()),
            ..Default::default()
        };
        assert!(
            matches!(ModelSource::of(&m).unwrap(), ModelSource::Checkpoint(p) if p == Path::new("ckpt"))
        );
        m.path = None;
        let e = ModelSource::of(&m).unwrap_err().to_string();
        assert!(e.contains("expected `path` or `[model.scratch]`"), "{e}");
        m.scratch = Some(ScratchSpec::default());
        let e = ModelSource::of(&m).unwrap_err().to_string();
        assert!(e.contains("model.tokenizer"), "{e}");
        m.tokenizer = Some("tok".into());
        assert!(matches!(
            ModelSource::of(&m).unwrap(),
            ModelSource::Scratch { tokenizer, .. } if tokenizer == Path::new("tok")
        ));
    }
}
