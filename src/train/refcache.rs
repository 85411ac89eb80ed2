//! Reference log-probs computed once before training and cached on disk, so that a DPO step
//! then costs about what a SimPO step costs (no reference forward pass).
//!
//! The cache holds per-token log-probs of every response, keyed by the reference checkpoint
//! and the exact token ids of the data; POET and other token weightings are applied on top, so
//! toggling them (even live) reuses the cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::data::TokenizedPair;
use crate::hash::Fnv;
use crate::model::CausalLm;
use crate::model::SeqBatch;

/// Per-token reference log-probs of each pair's chosen and rejected response.
#[derive(Clone, Debug, PartialEq)]
pub struct RefLogps {
    pub chosen: Vec<Vec<f32>>,
    pub rejected: Vec<Vec<f32>>,
}

impl RefLogps {
    /// Packed like `SeqBatch::from_pairs` of the pairs `idx`: chosen rows, then rejected rows.
    pub fn packed(&self, idx: &[usize]) -> Vec<f32> {
        let mut v = Vec::new();
        for &i in idx {
            v.extend_from_slice(&self.chosen[i]);
        }
        for &i in idx {
            v.extend_from_slice(&self.rejected[i]);
        }
        v
    }
}

/// Identity of a checkpoint folder without reading its weights: names, sizes and
/// modification times of its files, and its config.json.
pub fn checkpoint_fingerprint(dir: &Path, h: &mut Fnv) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    h.bytes(dir.to_string_lossy().as_bytes());
    for p in entries {
        let meta = std::fs::metadata(&p)?;
        h.bytes(p.file_name().unwrap_or_default().as_encoded_bytes());
        h.bytes(&meta.len().to_le_bytes());
        if let Ok(m) = meta.modified() {
            let t = m
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            h.bytes(&t.to_le_bytes());
        }
    }
    Ok(())
}

pub fn cache_key(reference_dirs: &[&Path], pairs: &[TokenizedPair]) -> Result<u64> {
    let mut h = Fnv::default();
    for dir in reference_dirs {
        checkpoint_fingerprint(dir, &mut h)?;
    }
    for p in pairs {
        h.u32s(&p.prompt).u32s(&p.chosen).u32s(&p.rejected);
    }
    Ok(h.0)
}

pub fn compute(
    reference: &CausalLm,
    pairs: &[TokenizedPair],
    batch_pairs: usize,
    pad: u32,
    device: &Device,
) -> Result<RefLogps> {
    let mut out = RefLogps {
        chosen: Vec::with_capacity(pairs.len()),
        rejected: Vec::with_capacity(pairs.len()),
    };
    for chunk in pairs.chunks(batch_pairs.max(1)) {
        let batch = SeqBatch::from_pairs(chunk, pad, device)?;
        let logps = super::reference_logps(reference, &batch)?;
        let rows = batch.split(&logps);
        let b = chunk.len();
        out.chosen.extend(rows[..b].iter().map(|r| r.to_vec()));
        out.rejected.extend(rows[b..].iter().map(|r| r.to_vec()));
    }
    Ok(out)
}

fn save(path: &Path, r: &RefLogps) -> Result<()> {
    let flat: Vec<f32> = r
        .chosen
        .iter()
        .zip(&r.rejected)
        .flat_map(|(c, l)| c.iter().chain(l).copied())
        .collect();
    let lens: Vec<u32> = r
        .chosen
        .iter()
        .zip(&r.rejected)
        .flat_map(|(c, l)| [c.len() as u32, l.len() as u32])
        .collect();
    let n = flat.len();
    let m = lens.len();
    let tensors = HashMap::from([
        (
            "logps".to_string(),
            Tensor::from_vec(flat, n, &Device::Cpu)?,
        ),
        ("lens".to_string(), Tensor::from_vec(lens, m, &Device::Cpu)?),
    ]);
    let tmp = path.with_extension("tmp~");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn load(path: &Path) -> Result<RefLogps> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)?;
    let (Some(flat), Some(lens)) = (t.get("logps"), t.get("lens")) else {
        bail!("{}: not a reference cache", path.display());
    };
    let flat: Vec<f32> = flat.to_vec1()?;
    let lens: Vec<u32> = lens.to_vec1()?;
    let mut out = RefLogps {
        chosen: vec![],
        rejected: vec![],
    };
    let mut at = 0;
    for pair in lens.chunks(2) {
        let (c, l) = (pair[0] as usize, pair[1] as usize);
        if at + c + l > flat.len() {
            bail!("{}: truncated reference cache", path.display());
        }
        out.chosen.push(flat[at..at + c].to_vec());
        out.rejected.push(flat[at + c..at + c + l].to_vec());
        at += c + l;
    }
    Ok(out)
}

/// Loads the cached reference log-probs of `pairs`, or computes and caches them. Returns them
/// and whether the cache was hit.
pub fn load_or_compute(
    cache_dir: &Path,
    reference_dirs: &[&Path],
    reference: impl FnOnce() -> Result<CausalLm>,
    pairs: &[TokenizedPair],
    batch_pairs: usize,
    pad: u32,
    device: &Device,
) -> Result<(RefLogps, bool)> {
    let key = cache_key(reference_dirs, pairs)?;
    let path = cache_dir.join(format!("ref-{key:016x}.safetensors"));
    if let Ok(r) = load(&path) {
        let fits = r.chosen.len() == pairs.len()
            && pairs
                .iter()
                .zip(&r.chosen)
                .zip(&r.rejected)
                .all(|((p, c), l)| p.chosen.len() == c.len() && p.rejected.len() == l.len());
        if fits {
            return Ok((r, true));
        }
    }
    let model = reference()?;
    let r = compute(&model, pairs, batch_pairs, pad, device)?;
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("cannot create {}", cache_dir.display()))?;
    save(&path, &r)?;
    Ok((r, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_like_seq_batch() {
        let r = RefLogps {
            chosen: vec![vec![1.0, 2.0], vec![3.0]],
            rejected: vec![vec![4.0], vec![5.0, 6.0]],
        };
        assert_eq!(r.packed(&[1, 0]), vec![3.0, 1.0, 2.0, 5.0, 6.0, 4.0]);
    }

    #[test]
    fn round_trips_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        let r = RefLogps {
            chosen: vec![vec![-1.0, -2.5], vec![-0.5]],
            rejected: vec![vec![-3.0], vec![]],
        };
        save(&p, &r).unwrap();
        assert_eq!(load(&p).unwrap(), r);
    }
}
