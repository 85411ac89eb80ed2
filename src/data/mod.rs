//! Preference data: reading pairs, tokenizing them by gaplab's convention, and packing rows into
//! right-padded batches with the positions whose predictions score each response token.

pub mod stats;

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::model::Tok;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// Reads a JSONL file of `{"prompt", "chosen", "rejected"}` objects; blank lines are skipped.
/// Errors name the file and line.
pub fn read_pairs_jsonl(path: &Path) -> Result<Vec<PreferencePair>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}:{}: invalid JSON: {e}",
                path.display(),
                i + 1,
                e.column()
            )
        })?;
        let pair = PreferencePair::deserialize(&v).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: expected an object with string fields `prompt`, `chosen`, `rejected`: {e}",
                path.display(),
                i + 1
            )
        })?;
        pairs.push(pair);
    }
    if pairs.is_empty() {
        bail!("{}: no preference pairs", path.display());
    }
    Ok(pairs)
}

/// A pair in token ids: responses end with EOS.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizedPair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl TokenizedPair {
    /// k = min(|y_w|, |y_l|), the prefix length POET keeps.
    pub fn k(&self) -> usize {
        self.chosen.len().min(self.rejected.len())
    }
}

pub fn tokenize_pair(tok: &Tok, pair: &PreferencePair) -> Result<TokenizedPair> {
    let prompt = tok.encode_prompt(&pair.prompt)?;
    if prompt.is_empty() {
        bail!("the prompt has no tokens (the tokenizer adds no BOS and the text is empty)");
    }
    Ok(TokenizedPair {
        prompt,
        chosen: tok.encode_response(&pair.chosen)?,
        rejected: tok.encode_response(&pair.rejected)?,
    })
}

/// Tokenizes every pair; errors name the file and line of the pair (`source` = the file).
pub fn tokenize_pairs(
    tok: &Tok,
    pairs: &[PreferencePair],
    source: &Path,
    vocab_size: usize,
) -> Result<Vec<TokenizedPair>> {
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let t = tokenize_pair(tok, p)
                .with_context(|| format!("{}: pair {}", source.display(), i + 1))?;
            if let Some(&id) = t
                .prompt
                .iter()
                .chain(&t.chosen)
                .chain(&t.rejected)
                .find(|&&id| id as usize >= vocab_size)
            {
                bail!(
                    "{}: pair {}: token id {id} is outside the model's vocabulary ({vocab_size})",
                    source.display(),
                    i + 1
                );
            }
            Ok(t)
        })
        .collect()
}

/// Token limits of a pair: the prompt alone, and prompt plus the longer response.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LengthLimits {
    pub max_prompt_len: usize,
    pub max_len: usize,
}

/// Fits a pair into `limits` the way TRL does: when prompt + longer response is too long, the
/// prompt keeps its last `max_prompt_len` tokens (and its BOS), then both responses are cut to
/// what is left (a cut response loses its EOS). Returns whether anything was cut.
pub fn fit_lengths(p: &mut TokenizedPair, limits: LengthLimits, bos: Option<u32>) -> bool {
    let longest = p.chosen.len().max(p.rejected.len());
    if p.prompt.len() + longest <= limits.max_len {
        return false;
    }
    if p.prompt.len() > limits.max_prompt_len {
        let keep_bos = bos.is_some() && p.prompt.first() == bos.as_ref();
        let cut = p.prompt.len() - limits.max_prompt_len;
        if keep_bos {
            p.prompt.drain(1..1 + cut);
        } else {
            p.prompt.drain(..cut);
        }
    }
    let room = limits.max_len.saturating_sub(p.prompt.len()).max(1);
    p.chosen.truncate(room);
    p.rejected.truncate(room);
    true
}

/// Rows of prompt + response packed for one forward pass.
///
/// `ids` is right-padded [rows, seq]. The response tokens of all rows are packed without padding:
/// token t of row r's response sits at index `offsets[r] + t`, is `targets[..]`, and is predicted
/// by the hidden state at flat position `predict_pos[..]` (= r * seq + prompt_len + t - 1).
#[derive(Debug)]
pub struct SeqBatch {
    pub ids: Tensor,
    pub predict_pos: Tensor,
    pub targets: Tensor,
    pub prompt_lens: Vec<usize>,
    pub response_lens: Vec<usize>,
    pub offsets: Vec<usize>,
    pub seq_len: usize,
}

impl SeqBatch {
    pub fn new(rows: &[(&[u32], &[u32])], pad: u32, device: &Device) -> Result<Self> {
        let seq_len = rows
            .iter()
            .map(|(p, r)| p.len() + r.len())
            .max()
            .unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * seq_len);
        let mut predict_pos = Vec::new();
        let mut targets = Vec::new();
        let mut offsets = Vec::with_capacity(rows.len());
        for (r, (prompt, response)) in rows.iter().enumerate() {
            if prompt.is_empty() {
                bail!("row {r}: empty prompt (a response token needs a position to predict it)");
            }
            offsets.push(targets.len());
            ids.extend_from_slice(prompt);
            ids.extend_from_slice(response);
            ids.resize((r + 1) * seq_len, pad);
            for (t, &tok) in response.iter().enumerate() {
                predict_pos.push((r * seq_len + prompt.len() + t - 1) as u32);
                targets.push(tok);
            }
        }
        let n = targets.len();
        Ok(Self {
            ids: Tensor::from_vec(ids, (rows.len(), seq_len), device)?,
            predict_pos: Tensor::from_vec(predict_pos, n, device)?,
            targets: Tensor::from_vec(targets, n, device)?,
            prompt_lens: rows.iter().map(|(p, _)| p.len()).collect(),
            response_lens: rows.iter().map(|(_, r)| r.len()).collect(),
            offsets,
            seq_len,
        })
    }

    /// Chosen rows first, then rejected rows, in pair order.
    pub fn from_pairs(pairs: &[TokenizedPair], pad: u32, device: &Device) -> Result<Self> {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .chain(
                pairs
                    .iter()
                    .map(|p| (p.prompt.as_slice(), p.rejected.as_slice())),
            )
            .collect();
        Self::new(&rows, pad, device)
    }

    /// Chosen rows only (supervised fine-tuning).
    pub fn chosen_only(pairs: &[TokenizedPair], pad: u32, device: &Device) -> Result<Self> {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .collect();
        Self::new(&rows, pad, device)
    }

    pub fn rows(&self) -> usize {
        self.response_lens.len()
    }

    pub fn num_response_tokens(&self) -> usize {
        self.response_lens.iter().sum()
    }

    /// Tokens run through the model, padding excluded.
    pub fn num_tokens(&self) -> usize {
        self.prompt_lens.iter().sum::<usize>() + self.num_response_tokens()
    }

    /// Splits a packed per-token vector into one slice per row.
    pub fn split<'a, T>(&self, packed: &'a [T]) -> Vec<&'a [T]> {
        self.offsets
            .iter()
            .zip(&self.response_lens)
            .map(|(&o, &n)| &packed[o..o + n])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_response_positions() {
        let rows: Vec<(&[u32], &[u32])> = vec![(&[1, 2], &[3, 4, 5]), (&[1], &[6])];
        let b = SeqBatch::new(&rows, 0, &Device::Cpu).unwrap();
        assert_eq!(b.seq_len, 5);
        assert_eq!(
            b.ids.to_vec2::<u32>().unwrap(),
            vec![vec![1, 2, 3, 4, 5], vec![1, 6, 0, 0, 0]]
        );
        // Row 0: tokens 3,4,5 predicted at positions 1,2,3; row 1: token 6 at 5 + 0.
        assert_eq!(b.predict_pos.to_vec1::<u32>().unwrap(), vec![1, 2, 3, 5]);
        assert_eq!(b.targets.to_vec1::<u32>().unwrap(), vec![3, 4, 5, 6]);
        assert_eq!(b.offsets, vec![0, 3]);
        assert_eq!(b.num_tokens(), 7);
        let packed = [10, 11, 12, 13];
        assert_eq!(b.split(&packed), vec![&[10, 11, 12][..], &[13][..]]);
    }

    #[test]
    fn long_pairs_are_cut_like_trl() {
        let limits = LengthLimits {
            max_prompt_len: 3,
            max_len: 6,
        };
        let mut p = TokenizedPair {
            prompt: vec![0, 1, 2, 3, 4],
            chosen: vec![7, 8, 9, 1],
            rejected: vec![5, 1],
        };
        assert!(fit_lengths(&mut p, limits, Some(0)));
        assert_eq!(
            p.prompt,
            vec![0, 3, 4],
            "BOS and the end of the prompt survive"
        );
        assert_eq!(
            p.chosen,
            vec![7, 8, 9],
            "the long response loses its tail and EOS"
        );
        assert_eq!(p.rejected, vec![5, 1]);
        let mut short = TokenizedPair {
            prompt: vec![0, 1],
            chosen: vec![2, 1],
            rejected: vec![3, 1],
        };
        assert!(!fit_lengths(&mut short, limits, Some(0)));
    }

    #[test]
    fn bad_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{\"prompt\": 3}\n",
        )
        .unwrap();
        let e = format!("{:#}", read_pairs_jsonl(&p).unwrap_err());
        assert!(e.contains("d.jsonl:2"), "{e}");
        std::fs::write(&p, "{\"prompt\":\"a\",\n").unwrap();
        let e = format!("{:#}", read_pairs_jsonl(&p).unwrap_err());
        assert!(e.contains("d.jsonl:1") && e.contains("invalid JSON"), "{e}");
    }
}
