//! The decoder's input: rows of prompt + response packed for one forward pass, with the
//! positions whose predictions score each response token. Objectives read the same layout.
//! (Constructors from tokenized preference pairs live in `data`.)

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

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
    /// The response tokens on the host, packed as `targets` (the objective reads them: where a
    /// response ends, SamPO's seed).
    pub target_ids: Vec<u32>,
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
            targets: Tensor::from_vec(targets.clone(), n, device)?,
            target_ids: targets,
            prompt_lens: rows.iter().map(|(p, _)| p.len()).collect(),
            response_lens: rows.iter().map(|(_, r)| r.len()).collect(),
            offsets,
            seq_len,
        })
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
}
