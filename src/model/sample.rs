//! KV-cached generation: greedy, temperature and nucleus (top-p) sampling.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::{CausalLm, KvCache};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct SampleParams {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
}

impl Default for SampleParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
        }
    }
}

/// Generates up to `max_new_tokens` after `prompt`, stopping after a token of `stop` (which is
/// kept in the output, as Hugging Face's `generate` does) or at the model's maximum length.
/// Returns the new token ids only.
pub fn generate(
    model: &CausalLm,
    prompt: &[u32],
    stop: &[u32],
    params: &SampleParams,
    rng: &mut Rng,
) -> Result<Vec<u32>> {
    anyhow::ensure!(!prompt.is_empty(), "cannot generate from an empty prompt");
    let model = model.detached()?;
    let max_len = model.cfg.max_position_embeddings;
    let mut cache = KvCache::default();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    while out.len() < params.max_new_tokens && cache.len() + input.len() <= max_len {
        let ids = Tensor::new(input.as_slice(), model.device())?.unsqueeze(0)?;
        let logits = model.forward_cached(&ids, &mut cache)?;
        let logits: Vec<f32> = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
        let next = pick(&logits, params, rng);
        out.push(next);
        if stop.contains(&next) {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

/// Chooses the next token from logits: argmax at temperature 0, else a draw from the
/// temperature-scaled distribution restricted to the top-p nucleus.
pub fn pick(logits: &[f32], params: &SampleParams, rng: &mut Rng) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = params.temperature;
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, ((x as f64 - max) / t).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= params.top_p {
            break;
        }
    }
    let mut u = rng.uniform() * mass;
    for p in &probs[..kept] {
        if u < p.1 {
            return p.0;
        }
        u -= p.1;
    }
    probs[kept - 1].0
}

pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_p_restricts_to_nucleus() {
        // p = [0.6, 0.3, 0.1]: top_p 0.5 keeps only the first token.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let params = SampleParams {
            max_new_tokens: 1,
            temperature: 1.0,
            top_p: 0.5,
        };
        let mut rng = Rng::new(0);
        assert!((0..200).all(|_| pick(&logits, &params, &mut rng) == 0));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let logits = [0.75f32.ln(), 0.25f32.ln()];
        let params = SampleParams {
            max_new_tokens: 1,
            temperature: 1.0,
            top_p: 1.0,
        };
        let mut rng = Rng::new(1);
        let n = 20000;
        let zeros = (0..n)
            .filter(|_| pick(&logits, &params, &mut rng) == 0)
            .count();
        let frac = zeros as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }
}
