//! Causal attention that keeps no score matrix: the GPU (and half-precision) path.
//!
//! On devices without gaplab's fused kernels, attention as composite candle ops keeps about
//! seven [rows x keys] tensors per layer alive for backward (f32 scores, their scaled, masked
//! and shifted copies, exponentials, probabilities, and the half-precision ends), which at
//! 2048-token rows is gigabytes per row. Here the forward pass runs over chunks of query rows
//! without a graph and keeps only the output and each row's log-sum-exp; a custom op attaches
//! that output to q, k and v, and its backward recomputes the probabilities chunk by chunk (the
//! FlashAttention recurrence, written with tensor ops so it runs on any device). Scores,
//! softmax and their gradients are computed in f32 whatever the input dtype.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

use super::matmul::matmul;

/// Bytes one chunk's [rows x keys] f32 score block may take, summed over the batch and heads.
pub const CHUNK_BYTES: usize = 64 << 20;

/// softmax(scale * q k^T + causal mask) v for q [b, g, rows, hd] and k, v [b, g, keys, hd]:
/// query row r sits at position r % period + offset and sees keys 0..=that position (the
/// grouped-query layout of the decoder stacks `rows / period` heads along the rows).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    period: usize,
    offset: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, g, _, _) = q.dims4()?;
    let keys = k.dim(2)?;
    let chunk = (CHUNK_BYTES / (4 * b * g * keys).max(1)).max(16);
    attention_in_chunks(q, k, v, period, offset, scale, chunk)
}

/// [`attention`] with an explicit number of query rows per chunk (tests use small ones).
pub fn attention_in_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    period: usize,
    offset: usize,
    scale: f64,
    chunk: usize,
) -> Result<Tensor> {
    let shape = Causal {
        period,
        offset,
        scale,
        chunk: chunk.max(1),
    };
    let (out, lse) = shape.forward(&q.detach(), &k.detach(), &v.detach())?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(out);
    }
    let shape_out = out.shape().clone();
    q.apply_op3(
        k,
        v,
        Attached {
            shape,
            out: std::sync::Mutex::new(Some(out)),
            out_shape: shape_out,
            lse,
        },
    )
}

#[derive(Clone, Copy, Debug)]
struct Causal {
    period: usize,
    offset: usize,
    scale: f64,
    chunk: usize,
}

impl Causal {
    /// 0 where query row r (of rows r0..r1) may see key j, -inf elsewhere: [r1 - r0, keys].
    fn mask(&self, r0: usize, r1: usize, keys: usize, like: &Tensor) -> Result<Tensor> {
        let mask: Vec<f32> = (r0..r1)
            .flat_map(|r| {
                let last = r % self.period + self.offset;
                (0..keys).map(move |j| if j <= last { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        Tensor::from_vec(mask, (r1 - r0, keys), like.device())
    }

    /// Scaled, masked f32 scores of query rows r0..r1: [b, g, r1 - r0, keys].
    fn scores(&self, q32: &Tensor, k32t: &Tensor, r0: usize, r1: usize) -> Result<Tensor> {
        let qc = q32.narrow(2, r0, r1 - r0)?;
        let s = (matmul(&qc, k32t)? * self.scale)?;
        s.broadcast_add(&self.mask(r0, r1, k32t.dim(3)?, q32)?)
    }

    /// The output (in q's dtype) and each row's log-sum-exp (f32, [b, g, rows, 1]), without a
    /// graph.
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let rows = q.dim(2)?;
        let q32 = q.to_dtype(DType::F32)?;
        let k32t = k.to_dtype(DType::F32)?.t()?.contiguous()?;
        let v32 = v.to_dtype(DType::F32)?;
        let (mut outs, mut lses) = (Vec::new(), Vec::new());
        for r0 in (0..rows).step_by(self.chunk) {
            let r1 = (r0 + self.chunk).min(rows);
            let s = self.scores(&q32, &k32t, r0, r1)?;
            let m = s.max_keepdim(D::Minus1)?;
            let p = s.broadcast_sub(&m)?.exp()?;
            let l = p.sum_keepdim(D::Minus1)?;
            outs.push(matmul(&p, &v32)?.broadcast_div(&l)?);
            lses.push((m + l.log()?)?);
        }
        let out = Tensor::cat(&outs, 2)?.to_dtype(q.dtype())?.contiguous()?;
        Ok((out, Tensor::cat(&lses, 2)?))
    }
}

/// The chunked forward's output attached to q, k and v, with the recomputing backward.
struct Attached {
    shape: Causal,
    /// Handed over (and released) by the forward pass: backward reads the op's result.
    out: std::sync::Mutex<Option<Tensor>>,
    out_shape: Shape,
    lse: Tensor,
}

impl Attached {
    fn take_out(&self) -> Result<Tensor> {
        let out = self.out.lock().unwrap_or_else(|e| e.into_inner()).take();
        out.ok_or_else(|| candle_core::Error::Msg("chunked attention: forward ran twice".into()))
    }
}

impl CustomOp3 for Attached {
    fn name(&self) -> &'static str {
        "chunked-causal-attention"
    }

    // The output was computed before the op was applied; forward hands over a copy of it.
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let out = self.take_out()?;
        let (storage, layout) = out.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(s) => Ok((s.try_clone(layout)?, self.out_shape.clone())),
            _ => candle_core::bail!("chunked attention: output is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let out = self.take_out()?;
        let (storage, layout) = out.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cuda(s) => Ok((s.try_clone(layout)?, self.out_shape.clone())),
            _ => candle_core::bail!("chunked attention: output is not on the GPU"),
        }
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.shape;
        let rows = q.dim(2)?;
        let q32 = q.detach().to_dtype(DType::F32)?;
        let k32 = k.detach().to_dtype(DType::F32)?;
        let k32t = k32.t()?.contiguous()?;
        let v32t = v.detach().to_dtype(DType::F32)?.t()?.contiguous()?;
        let do32 = grad.to_dtype(DType::F32)?;
        // D_r = sum_d dO_rd O_rd: the softmax backward's row term.
        let delta = (&do32 * res.detach().to_dtype(DType::F32)?)?.sum_keepdim(D::Minus1)?;
        let mut dk = k32.zeros_like()?;
        let mut dv = k32.zeros_like()?;
        let mut dq = Vec::new();
        for r0 in (0..rows).step_by(c.chunk) {
            let r1 = (r0 + c.chunk).min(rows);
            let n = r1 - r0;
            let s = c.scores(&q32, &k32t, r0, r1)?;
            let p = s.broadcast_sub(&self.lse.narrow(2, r0, n)?)?.exp()?;
            let doc = do32.narrow(2, r0, n)?;
            let pt = p.t()?.contiguous()?;
            dv = (dv + matmul(&pt, &doc)?)?;
            let dp = matmul(&doc, &v32t)?;
            let ds = (p * dp.broadcast_sub(&delta.narrow(2, r0, n)?)?)?;
            dq.push((matmul(&ds, &k32)? * c.scale)?);
            let qc = q32.narrow(2, r0, n)?;
            dk = (dk + (matmul(&ds.t()?.contiguous()?, &qc)? * c.scale)?)?;
        }
        let dq = Tensor::cat(&dq, 2)?.to_dtype(q.dtype())?;
        Ok((
            Some(dq),
            Some(dk.to_dtype(k.dtype())?),
            Some(dv.to_dtype(v.dtype())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops;
    use crate::model::testutil::{max_diff, randn};
    use candle_core::Var;

    /// The decoder's composite attention: scores, causal softmax, values.
    fn composite(q: &Tensor, k: &Tensor, v: &Tensor, period: usize, offset: usize) -> Tensor {
        let scale = 0.3;
        let s = matmul(q, &k.t().unwrap()).unwrap();
        let p = ops::causal_softmax_composite(&s, period, offset, scale).unwrap();
        matmul(&p, v).unwrap()
    }

    /// Output and q/k/v gradients equal the composite ops' (f64, several chunk sizes, grouped
    /// queries, with and without a cache offset).
    #[test]
    fn matches_composite_attention_and_its_gradients() {
        // (batch, kv groups, queries per group, period, offset, head dim)
        for (b, g, rep, t, offset, hd) in [(2, 2, 2, 5, 0, 4), (1, 1, 3, 4, 3, 6)] {
            let rows = rep * t;
            let keys = offset + t;
            let q = Var::from_tensor(&randn(&[b, g, rows, hd], 1)).unwrap();
            let k = Var::from_tensor(&randn(&[b, g, keys, hd], 2)).unwrap();
            let v = Var::from_tensor(&randn(&[b, g, keys, hd], 3)).unwrap();
            let w = randn(&[b, g, rows, hd], 4);
            let want = composite(&q, &k, &v, t, offset);
            let want_g = (&want * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for chunk in [1, 3, rows] {
                let got =
                    attention_in_chunks(q.as_tensor(), &k, &v, t, offset, 0.3, chunk).unwrap();
                assert!(max_diff(&got, &want) < 1e-6, "chunk {chunk}: output");
                let got_g = (&got * &w).unwrap().sum_all().unwrap().backward().unwrap();
                for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
                    let d = max_diff(
                        got_g.get(var.as_tensor()).unwrap(),
                        want_g.get(var.as_tensor()).unwrap(),
                    );
                    assert!(d < 1e-6, "chunk {chunk}: d{name} differs by {d}");
                }
            }
        }
    }

    #[test]
    fn half_precision_and_inference() {
        let (t, hd) = (6, 8);
        let q = randn(&[1, 2, 2 * t, hd], 5).to_dtype(DType::F32).unwrap();
        let k = randn(&[1, 2, t, hd], 6).to_dtype(DType::F32).unwrap();
        let v = randn(&[1, 2, t, hd], 7).to_dtype(DType::F32).unwrap();
        let full = attention(&q, &k, &v, t, 0, 0.3).unwrap();
        assert!(max_diff(&full, &composite(&q, &k, &v, t, 0)) < 1e-5);
        let half = |x: &Tensor| x.to_dtype(DType::BF16).unwrap();
        let qv = Var::from_tensor(&half(&q)).unwrap();
        let out = attention(qv.as_tensor(), &half(&k), &half(&v), t, 0, 0.3).unwrap();
        assert_eq!(out.dtype(), DType::BF16);
        assert!(max_diff(&out, &full) < 0.05);
        let g = out
            .to_dtype(DType::F32)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dq = g.get(qv.as_tensor()).unwrap();
        assert_eq!(dq.dtype(), DType::BF16);
        assert!(max_diff(dq, &dq.zeros_like().unwrap()) > 0.0);
    }
}
