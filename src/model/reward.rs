//! Reward models: Hugging Face `LlamaForSequenceClassification`,
//! `Qwen2ForSequenceClassification` and `MistralForSequenceClassification` checkpoints.
//!
//! Such a checkpoint is the decoder (`model.*` tensors, no `lm_head`) and a bias-free linear
//! head `score.weight` [num_labels, hidden] applied to the final-normed hidden states. The
//! reward of a sequence is the head's output at one position, chosen exactly as transformers'
//! `GenericForSequenceClassification.forward` chooses it: the rightmost token whose id is not
//! `config.pad_token_id` (position 0 when every token is a pad), or the last token when the
//! config has no `pad_token_id`. A consequence worth knowing: when `pad_token_id` equals the
//! EOS id, a response that ends with EOS is read at the token before its EOS (transformers does
//! the same, and gaplab reproduces it rather than "fixing" it, so scores match the model's
//! training).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use super::io;
use super::safetensors_check::{self, Expected, FileSet, Header, Summary, Unexpected};
use super::{matmul, param_specs, Arch, CausalLm, ModelConfig, Tok};
use crate::rng::Rng;

/// The name of the head's weight in Hugging Face files.
pub const SCORE_WEIGHT: &str = "score.weight";

/// The Hugging Face class of a reward model of `arch`.
pub fn hf_class(arch: Arch) -> &'static str {
    match arch {
        Arch::Llama => "LlamaForSequenceClassification",
        Arch::Mistral => "MistralForSequenceClassification",
        Arch::Qwen2 => "Qwen2ForSequenceClassification",
    }
}

/// A sequence-classification reward model with one label.
#[derive(Clone)]
pub struct RewardModel {
    /// The checkpoint's own config (its `tie_word_embeddings` as the file says; the decoder
    /// inside is built with tied embeddings so that it needs no `lm_head`).
    pub cfg: ModelConfig,
    decoder: CausalLm,
    /// [1, hidden]
    score: Tensor,
}

/// The config a reward model's decoder is built with: the file's, with tied embeddings so that
/// no `lm_head` is expected (a reward model has none; the "LM head" of the decoder is never
/// used).
fn decoder_cfg(cfg: &ModelConfig) -> ModelConfig {
    let mut c = cfg.clone();
    c.tie_word_embeddings = true;
    c
}

/// The number of labels transformers gives a config: the size of `id2label` when it is there,
/// else `num_labels`, else its default of 2. The field it came from is returned for messages.
pub fn num_labels(config: &Value) -> Result<(usize, &'static str)> {
    if let Some(m) = config.get("id2label").filter(|v| !v.is_null()) {
        let m = m
            .as_object()
            .context("field `id2label`: expected an object of label names")?;
        return Ok((m.len(), "id2label"));
    }
    match config.get("num_labels") {
        None | Some(Value::Null) => {
            Ok((2, "transformers' default (no `id2label` or `num_labels`)"))
        }
        Some(v) => Ok((
            v.as_u64().with_context(|| {
                format!("field `num_labels`: expected a non-negative integer, got {v}")
            })? as usize,
            "num_labels",
        )),
    }
}

/// The position transformers reads a sequence's reward at (see the module doc).
pub fn reward_position(ids: &[u32], pad_token_id: Option<u32>) -> usize {
    match pad_token_id {
        None => ids.len().saturating_sub(1),
        Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
    }
}

/// The architectures a config.json names, e.g. ["LlamaForCausalLM"].
fn architectures(config: &Value) -> Vec<String> {
    config
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What a reward-model folder must hold, given its config (decoder tensors and the head).
fn expectation(cfg: &ModelConfig) -> safetensors_check::Expectation {
    let mut tensors: Vec<Expected> = param_specs(&decoder_cfg(cfg))
        .into_iter()
        .map(|s| Expected {
            name: s.name,
            shape: s.shape,
        })
        .collect();
    tensors.push(Expected {
        name: SCORE_WEIGHT.into(),
        shape: vec![1, cfg.hidden_size],
    });
    safetensors_check::Expectation {
        tensors,
        shapes_from: "config.json (num_labels 1)".into(),
        mismatch_hint: String::new(),
        unexpected: Unexpected::Warn,
    }
}

/// The config of the reward-model folder `dir` after the checks that say what the folder is
/// (a causal LM, a classifier with several labels), its weight files and what their checked
/// headers hold.
fn check(dir: &Path) -> Result<(ModelConfig, FileSet, Summary)> {
    if !dir.is_dir() {
        bail!("{}: not a reward-model folder", dir.display());
    }
    io::refuse_adapter_folder(dir)?;
    let path = dir.join("config.json");
    let cfg = ModelConfig::load(&path)?;
    let raw = cfg.raw.clone().unwrap_or(Value::Null);
    let not_rm = |why: String| -> anyhow::Error {
        anyhow::anyhow!(
            "{}: {why}: it has no `score` head and is not a reward model (a {} checkpoint is needed, e.g. one saved by transformers' AutoModelForSequenceClassification with num_labels=1)",
            dir.display(),
            hf_class(cfg.arch)
        )
    };
    let archs = architectures(&raw);
    if !archs.is_empty()
        && !archs
            .iter()
            .any(|a| a.ends_with("ForSequenceClassification"))
    {
        return Err(not_rm(format!(
            "config.json names architectures [{}], a {}",
            archs.join(", "),
            if archs.iter().any(|a| a.ends_with("ForCausalLM")) {
                "causal LM"
            } else {
                "model without a classification head"
            }
        )));
    }
    let set = FileSet::of_dir(dir, "model")?;
    let headers = set
        .files
        .iter()
        .map(|f| Header::read(f))
        .collect::<Result<Vec<_>>>()?;
    let head = headers
        .iter()
        .flat_map(|h| h.entries.iter())
        .find(|e| e.name == SCORE_WEIGHT);
    let Some(head) = head else {
        return Err(not_rm(format!("its safetensors hold no `{SCORE_WEIGHT}`")));
    };
    let (labels, from) = num_labels(&raw).with_context(|| path.display().to_string())?;
    if labels != 1 {
        bail!(
            "{}: the classifier has {labels} labels (from {from}; `{SCORE_WEIGHT}` has shape {:?}); a reward model has num_labels = 1 (one scalar per sequence)",
            path.display(),
            head.shape
        );
    }
    let summary = safetensors_check::validate(&expectation(&cfg), &set, &headers)?;
    Ok((cfg, set, summary))
}

impl RewardModel {
    /// Headers-only check of a reward-model folder (used by load and by `gaplab check`).
    pub fn check_dir(dir: &Path) -> Result<Summary> {
        check(dir).map(|(_, _, s)| s)
    }

    /// Loads DIR (config.json, safetensors, tokenizer) after checking it; f32 on CPU, any dtype.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<(RewardModel, Tok)> {
        Self::load_checked(dir, device, dtype).map(|(rm, tok, _)| (rm, tok))
    }

    /// [`Self::load`], also returning what the headers' check found (warnings for the user).
    pub fn load_checked(
        dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<(RewardModel, Tok, Summary)> {
        let (cfg, set, summary) = check(dir)?;
        // SAFETY: the files are memory-mapped read-only; gaplab never writes a checkpoint in
        // place (see io::load_model).
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&set.files) }
            .with_context(|| format!("{}: cannot read safetensors", dir.display()))?;
        let load = |name: &str| -> Result<Tensor> {
            let t = st.load(name, device).map_err(|_| {
                anyhow::anyhow!(
                    "{}: tensor `{name}` missing from the safetensors files",
                    dir.display()
                )
            })?;
            Ok(t.to_dtype(dtype)?)
        };
        let dcfg = decoder_cfg(&cfg);
        let mut map = HashMap::new();
        for spec in param_specs(&dcfg) {
            map.insert(spec.name.clone(), load(&spec.name)?);
        }
        let decoder =
            CausalLm::from_tensors(dcfg, map).with_context(|| dir.display().to_string())?;
        let score = load(SCORE_WEIGHT)?;
        let tok = Tok::load(dir, Some(&cfg))?;
        io::check_special_ids(
            dir,
            &[Some(tok.eos), tok.bos, cfg.pad_token_id],
            cfg.vocab_size,
        )?;
        let rm = RewardModel {
            cfg,
            decoder,
            score,
        };
        Ok((rm, tok, summary))
    }

    /// A new reward model on `decoder` with a fresh score head N(0, 0.02) from `seed`. The
    /// decoder's LM head is dropped and LoRA adapters are folded into its weights.
    pub fn from_decoder(decoder: CausalLm, pad_token_id: Option<u32>, seed: u64) -> Result<Self> {
        let cfg = decoder.cfg.clone();
        let base = decoder.merged()?;
        let map: HashMap<String, Tensor> = base
            .weights()
            .iter()
            .filter(|(n, _)| n != "lm_head.weight")
            .cloned()
            .collect();
        let dec = CausalLm::from_tensors(decoder_cfg(&cfg), map)?;
        let mut rng = Rng::new(seed);
        let w: Vec<f32> = (0..cfg.hidden_size)
            .map(|_| (rng.normal() * 0.02) as f32)
            .collect();
        let score =
            Tensor::from_vec(w, (1, cfg.hidden_size), dec.device())?.to_dtype(dec.dtype())?;
        let mut cfg = cfg;
        cfg.pad_token_id = pad_token_id;
        Ok(RewardModel {
            cfg,
            decoder: dec,
            score,
        })
    }

    pub fn device(&self) -> &Device {
        self.decoder.device()
    }

    pub fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    /// The decoder under the head (tied embeddings, no `lm_head`).
    pub fn decoder(&self) -> &CausalLm {
        &self.decoder
    }

    /// Rewards of rows of `ids` [b, t] read at `last[i]`, with the autograd graph (for
    /// training): [b], in the model's dtype.
    pub fn rewards(&self, ids: &Tensor, last: &[usize]) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        anyhow::ensure!(
            last.len() == b,
            "rewards: {} positions for {b} rows",
            last.len()
        );
        if let Some(&bad) = last.iter().find(|&&p| p >= t) {
            bail!("rewards: position {bad} is outside rows of {t} tokens");
        }
        let h = self.decoder.hidden_states(ids)?;
        let rows: Vec<u32> = last
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * t + p) as u32)
            .collect();
        let rows = Tensor::new(rows.as_slice(), h.device())?;
        let h = h.index_select(&rows, 0)?;
        let r = matmul::matmul(&h, &self.score.t()?)?;
        Ok(r.reshape(b)?)
    }

    /// The reward of each token sequence (prompt + response ids), batched (right padding).
    /// Rows are grouped by length so that a batch pads little; results come back in order.
    pub fn score(&self, seqs: &[Vec<u32>], batch_size: usize) -> Result<Vec<f64>> {
        anyhow::ensure!(batch_size > 0, "batch size must be at least 1");
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            bail!("sequence {} to score is empty", i + 1);
        }
        let max = self.cfg.max_position_embeddings;
        if let Some((i, s)) = seqs.iter().enumerate().find(|(_, s)| s.len() > max) {
            bail!(
                "sequence {} has {} tokens, more than the reward model's max_position_embeddings ({max})",
                i + 1,
                s.len()
            );
        }
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let model = self.detached()?;
        let mut out = vec![0.0; seqs.len()];
        for chunk in order.chunks(batch_size) {
            let rows: Vec<&[u32]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
            let (ids, last) = self.padded(&rows)?;
            let r: Vec<f32> = model
                .rewards(&ids, &last)?
                .to_dtype(DType::F32)?
                .to_vec1()?;
            for (&i, r) in chunk.iter().zip(r) {
                out[i] = r as f64;
            }
        }
        Ok(out)
    }

    /// `rows` right-padded into one [b, t] tensor of ids, with the position each row's reward
    /// is read at ([`reward_position`] of the row as given). Padded positions come after every
    /// real token, so causal attention keeps them out of the real ones: any id works; the pad
    /// id keeps the rule's meaning visible.
    pub fn padded(&self, rows: &[&[u32]]) -> Result<(Tensor, Vec<usize>)> {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if t == 0 {
            bail!("a batch of empty sequences");
        }
        let pad = self.pad_token_id();
        let mut ids = Vec::with_capacity(rows.len() * t);
        let mut last = Vec::with_capacity(rows.len());
        for r in rows {
            ids.extend_from_slice(r);
            ids.resize(ids.len() + t - r.len(), pad.unwrap_or(0));
            last.push(reward_position(r, pad));
        }
        Ok((Tensor::from_vec(ids, (rows.len(), t), self.device())?, last))
    }

    /// `config.pad_token_id`: the reward is read at the rightmost token that is not this id.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.cfg.pad_token_id
    }

    /// "LlamaForSequenceClassification", ...
    pub fn arch_name(&self) -> &'static str {
        hf_class(self.cfg.arch)
    }

    /// The same weights without gradient tracking.
    pub fn detached(&self) -> Result<Self> {
        Ok(RewardModel {
            decoder: self.decoder.detached()?,
            score: self.score.detach(),
            ..self.clone()
        })
    }

    /// The decoder's and the head's tensors as optimizer variables (names as in the HF files).
    pub fn into_trainable(self) -> Result<(Self, Vec<(String, Var)>)> {
        let (decoder, mut vars) = self.decoder.into_trainable()?;
        let score = Var::from_tensor(&self.score.detach().copy()?)?;
        let t = score.as_tensor().clone();
        vars.push((SCORE_WEIGHT.to_string(), score));
        Ok((
            RewardModel {
                decoder,
                score: t,
                ..self
            },
            vars,
        ))
    }

    /// Every tensor as saved, in order: the decoder's then `score.weight`.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        let mut w = self.decoder.weights().to_vec();
        w.push((SCORE_WEIGHT.to_string(), self.score.clone()));
        w
    }

    /// The config.json of a saved reward model: the checkpoint's own fields with the
    /// sequence-classification class, one label and the pad id the reward is read by.
    pub fn hf_config(&self) -> Value {
        let mut v = self.cfg.to_hf_json();
        if let Some(m) = v.as_object_mut() {
            m.insert(
                "architectures".into(),
                serde_json::json!([self.arch_name()]),
            );
            m.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
            m.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
            m.remove("num_labels");
            m.insert(
                "pad_token_id".into(),
                match self.pad_token_id() {
                    Some(p) => serde_json::json!(p),
                    None => Value::Null,
                },
            );
            m.insert(
                "tie_word_embeddings".into(),
                serde_json::json!(self.cfg.tie_word_embeddings),
            );
        }
        v
    }

    /// Saves an HF folder (config.json with architectures [XForSequenceClassification],
    /// num_labels 1, id2label, pad_token_id; model.safetensors; tokenizer files copied from
    /// `tokenizer_from`).
    pub fn save(&self, dir: &Path, tokenizer_from: Option<&Path>) -> Result<()> {
        let mut cfg = self.cfg.clone();
        cfg.raw = Some(self.hf_config());
        // Never sharded (`from` None): a reward model gaplab writes is one file.
        io::save_weights(&cfg, &self.weights(), None, dir)?;
        match tokenizer_from {
            Some(src) => io::copy_tokenizer_files(src, dir),
            None => Ok(()),
        }
    }

    /// Bytes of the weights in memory, for memory estimates.
    pub fn memory_bytes(&self) -> usize {
        self.decoder
            .weights()
            .iter()
            .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
            .sum::<usize>()
            + self.score.elem_count() * self.score.dtype().size_in_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_reward_is_read_at_the_rightmost_non_pad_token() {
        // No pad id: the last token, whatever it is.
        assert_eq!(reward_position(&[5, 6, 2], None), 2);
        // Trailing pads are skipped; a pad inside the sequence is not what decides.
        assert_eq!(reward_position(&[5, 2, 6, 2, 2], Some(2)), 2);
        // pad == eos: a response ending with EOS is read at the token before it.
        assert_eq!(reward_position(&[0, 7, 8, 1], Some(1)), 2);
        // Only pads: transformers' argmax over zeros gives position 0.
        assert_eq!(reward_position(&[2, 2], Some(2)), 0);
    }

    #[test]
    fn num_labels_follows_transformers() {
        assert_eq!(
            num_labels(&json!({"id2label": {"0": "LABEL_0"}}))
                .unwrap()
                .0,
            1
        );
        // id2label wins over a conflicting num_labels, as transformers' config does.
        assert_eq!(
            num_labels(&json!({"id2label": {"0": "a", "1": "b"}, "num_labels": 1}))
                .unwrap()
                .0,
            2
        );
        assert_eq!(num_labels(&json!({"num_labels": 1})).unwrap().0, 1);
        assert_eq!(num_labels(&json!({})).unwrap().0, 2);
        assert!(num_labels(&json!({"num_labels": "one"}))
            .unwrap_err()
            .to_string()
            .contains("num_labels"));
    }

    fn tiny() -> CausalLm {
        let spec = crate::model::ScratchSpec {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            max_position_embeddings: 32,
            tie_word_embeddings: false,
            ..Default::default()
        };
        let cfg = ModelConfig::from_scratch(&spec, 40).unwrap();
        CausalLm::random(cfg, 3, &Device::Cpu).unwrap()
    }

    #[test]
    fn batched_scores_equal_one_row_at_a_time_and_training_rewards() {
        let rm = RewardModel::from_decoder(tiny(), Some(2), 9).unwrap();
        let seqs = vec![
            vec![0, 5, 6, 7, 8],
            vec![0, 9],
            vec![0, 3, 4, 2, 2],
            vec![1],
        ];
        let batched = rm.score(&seqs, 3).unwrap();
        for (s, b) in seqs.iter().zip(&batched) {
            let one = rm.score(std::slice::from_ref(s), 1).unwrap()[0];
            assert!((one - b).abs() < 1e-5, "{one} vs {b}");
        }
        // A trailing pad does not change the reward (read before it).
        let trimmed = rm.score(&[vec![0, 3, 4]], 1).unwrap()[0];
        assert!((trimmed - batched[2]).abs() < 1e-5);
        // The graph version agrees.
        let (rm, vars) = rm.into_trainable().unwrap();
        assert_eq!(vars.last().unwrap().0, SCORE_WEIGHT);
        assert!(!vars.iter().any(|(n, _)| n == "lm_head.weight"));
        let ids = Tensor::new(&[[0u32, 5, 6, 7, 8]], &Device::Cpu).unwrap();
        let r = rm.rewards(&ids, &[4]).unwrap();
        let g = r.sum_all().unwrap().backward().unwrap();
        assert!(g.get(vars.last().unwrap().1.as_tensor()).is_some());
        let v: Vec<f32> = r.to_vec1().unwrap();
        assert!((v[0] as f64 - batched[0]).abs() < 1e-5);
        assert!(rm.score(&[vec![]], 1).is_err());
        assert!(rm
            .score(&[vec![0; 33]], 1)
            .unwrap_err()
            .to_string()
            .contains("max_position"));
    }

    #[test]
    fn save_then_load_gives_the_same_scores() {
        let rm = RewardModel::from_decoder(tiny(), Some(1), 4).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("rm");
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
        rm.save(&out, Some(&fixtures)).unwrap();
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            cfg["architectures"],
            json!(["LlamaForSequenceClassification"])
        );
        assert_eq!(cfg["pad_token_id"], json!(1));
        assert_eq!(cfg["tie_word_embeddings"], json!(false));
        assert_eq!(num_labels(&cfg).unwrap().0, 1);
        // The fixture tokenizer's special ids (<s> 0, </s> 1, <pad> 2) fit the scratch vocab.
        let (back, _tok) = RewardModel::load(&out, &Device::Cpu, DType::F32).unwrap();
        let seqs = vec![vec![0, 5, 6], vec![0, 7, 1]];
        assert_eq!(rm.score(&seqs, 2).unwrap(), back.score(&seqs, 2).unwrap());
        assert_eq!(rm.memory_bytes(), back.memory_bytes());
    }
}
