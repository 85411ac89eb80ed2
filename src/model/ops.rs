//! Differentiable building blocks of the decoder, with fused CPU kernels.
//!
//! candle's fast kernels for rms-norm, rope and softmax have no backward pass and silently cut
//! the autograd graph, and the composite (differentiable) versions allocate many temporaries.
//! Each op here is a fused candle `CustomOp` with its own backward on CPU (f32 and f64), and
//! falls back to a differentiable composite of candle ops on any other device or dtype, so the
//! same model code trains everywhere. The composite versions double as test oracles.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, D,
};
use num_traits::Float;
use rayon::prelude::*;

/// Floating-point element types the fused kernels run on.
pub trait Real: WithDType + Float + Send + Sync + std::iter::Sum {}
impl Real for f32 {}
impl Real for f64 {}

/// Whether gaplab's fused CPU kernels run on `t` (f32 or f64 on the CPU).
pub fn fused_ok(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// bf16 and f16 tensors: norms, softmaxes and log-probs widen them to f32 (as transformers
/// does), so half precision rounds the activations but not the statistics over a row.
fn is_half(t: &Tensor) -> bool {
    matches!(t.dtype(), DType::BF16 | DType::F16)
}

/// `x` in the kernel's float type (f32 or f64: every size and scale here is representable).
fn float<T: num_traits::NumCast>(
    x: impl num_traits::ToPrimitive + Copy + std::fmt::Display,
) -> Result<T> {
    T::from(x).ok_or_else(|| candle_core::Error::Msg(format!("{x} is not representable")))
}

fn contiguous_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused op expects a contiguous tensor"),
    }
}

/// Dispatches a CPU kernel on the storage's float dtype.
macro_rules! on_float {
    ($storage:expr, $f:ident ( $($arg:expr),* )) => {
        match $storage {
            CpuStorage::F32(_) => $f::<f32>($($arg),*),
            CpuStorage::F64(_) => $f::<f64>($($arg),*),
            _ => candle_core::bail!("fused op: unsupported dtype"),
        }
    };
}

fn owned<T: Real>(v: Vec<T>, shape: &Shape) -> Result<(CpuStorage, Shape)> {
    Ok((T::to_cpu_storage_owned(v), shape.clone()))
}

fn rows_of(l: &Layout) -> (usize, usize) {
    let d = l.dims()[l.dims().len() - 1];
    (l.shape().elem_count() / d.max(1), d)
}

// ---------------------------------------------------------------------------------------------
// RMS norm: y = x / sqrt(mean(x^2) + eps) * w, over the last dimension.

struct RmsNorm {
    eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "gaplab-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            eps: f64,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let x = contiguous_slice::<T>(s1, l1)?;
            let w = contiguous_slice::<T>(s2, l2)?;
            let (_, d) = rows_of(l1);
            let eps = float::<T>(eps)?;
            let n = float::<T>(d)?;
            let mut y = vec![T::zero(); x.len()];
            y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
                let ss: T = x.iter().map(|&v| v * v).sum();
                let inv = (ss / n + eps).sqrt().recip();
                for i in 0..d {
                    y[i] = x[i] * inv * w[i];
                }
            });
            owned(y, l1.shape())
        }
        on_float!(s1, run(self.eps, s1, l1, s2, l2))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // One kernel yields both gradients: rows 0..n are dx, the extra last row is dw.
        let packed = x.apply_op3_no_bwd(w, &dy, &RmsNormBwd { eps: self.eps })?;
        let n = packed.dim(0)? - 1;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        // A frozen norm weight (LoRA) gets no gradient.
        let dw = w.track_op().then(|| packed.get(n)).transpose()?;
        Ok((Some(dx), dw))
    }
}

struct RmsNormBwd {
    eps: f64,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "gaplab-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        #[allow(clippy::too_many_arguments)]
        fn run<T: Real>(
            eps: f64,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let x = contiguous_slice::<T>(s1, l1)?;
            let w = contiguous_slice::<T>(s2, l2)?;
            let dy = contiguous_slice::<T>(s3, l3)?;
            let (rows, d) = rows_of(l1);
            let eps = float::<T>(eps)?;
            let n = float::<T>(d)?;
            let mut out = vec![T::zero(); (rows + 1) * d];
            let (dx_all, dw_out) = out.split_at_mut(rows * d);
            // Weight gradients are summed per fixed block of rows, then the blocks in order, so
            // the result does not depend on how rayon splits the work (runs are reproducible).
            const BLOCK: usize = 64;
            let partials: Vec<Vec<T>> = dx_all
                .par_chunks_mut(d * BLOCK)
                .zip(x.par_chunks(d * BLOCK).zip(dy.par_chunks(d * BLOCK)))
                .map(|(dx_b, (x_b, dy_b))| {
                    let mut dw = vec![T::zero(); d];
                    for (dx, (x, dy)) in dx_b.chunks_mut(d).zip(x_b.chunks(d).zip(dy_b.chunks(d))) {
                        let ss: T = x.iter().map(|&v| v * v).sum();
                        let inv = (ss / n + eps).sqrt().recip();
                        // dot = mean(dy * w * xhat)
                        let mut dot = T::zero();
                        for i in 0..d {
                            let xhat = x[i] * inv;
                            dot += dy[i] * w[i] * xhat;
                            dw[i] += dy[i] * xhat;
                        }
                        dot /= n;
                        for i in 0..d {
                            dx[i] = inv * (dy[i] * w[i] - x[i] * inv * dot);
                        }
                    }
                    dw
                })
                .collect();
            let mut dw = vec![T::zero(); d];
            for p in partials {
                dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
            }
            dw_out.copy_from_slice(&dw);
            owned(out, &Shape::from((rows + 1, d)))
        }
        on_float!(s1, run(self.eps, s1, l1, s2, l2, s3, l3))
    }
}

/// RMS norm over the last dimension with a learned scale, differentiable in `x` and `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if is_half(x) {
        let y = rms_norm(&x.to_dtype(DType::F32)?, &w.to_dtype(DType::F32)?, eps)?;
        return y.to_dtype(x.dtype());
    }
    if fused_ok(x) {
        x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
    } else {
        rms_norm_composite(x, w, eps)
    }
}

pub fn rms_norm_composite(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

// ---------------------------------------------------------------------------------------------
// Rotary position embedding (non-interleaved halves, as in Hugging Face's rotate_half) applied to
// x of shape [batch, seq, heads, head_dim] with cos/sin tables of shape [seq, head_dim / 2].

struct Rope {
    /// The backward pass is the rotation by the opposite angle.
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "gaplab-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        #[allow(clippy::too_many_arguments)]
        fn run<T: Real>(
            inverse: bool,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let x = contiguous_slice::<T>(s1, l1)?;
            let cos = contiguous_slice::<T>(s2, l2)?;
            let sin = contiguous_slice::<T>(s3, l3)?;
            let dims = l1.dims();
            let (t, h, hd) = (dims[1], dims[2], dims[3]);
            let half = hd / 2;
            let mut y = vec![T::zero(); x.len()];
            y.par_chunks_mut(h * hd)
                .zip(x.par_chunks(h * hd))
                .enumerate()
                .for_each(|(bt, (y, x))| {
                    let pos = bt % t;
                    let c = &cos[pos * half..(pos + 1) * half];
                    let s = &sin[pos * half..(pos + 1) * half];
                    for (y, x) in y.chunks_mut(hd).zip(x.chunks(hd)) {
                        let (x1, x2) = x.split_at(half);
                        let (y1, y2) = y.split_at_mut(half);
                        for i in 0..half {
                            let si = if inverse { -s[i] } else { s[i] };
                            y1[i] = x1[i] * c[i] - x2[i] * si;
                            y2[i] = x2[i] * c[i] + x1[i] * si;
                        }
                    }
                });
            owned(y, l1.shape())
        }
        on_float!(s1, run(self.inverse, s1, l1, s2, l2, s3, l3))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = dy.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &Rope {
                inverse: !self.inverse,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

/// Rotary embedding of `x` [batch, seq, heads, head_dim]; `cos`/`sin` are [seq, head_dim/2].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused_ok(x) {
        x.contiguous()?.apply_op3(
            &cos.contiguous()?,
            &sin.contiguous()?,
            Rope { inverse: false },
        )
    } else {
        rope_composite(x, cos, sin)
    }
}

pub fn rope_composite(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_b, t, _h, hd) = x.dims4()?;
    let half = hd / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.reshape((1, t, 1, hd))?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.reshape((1, t, 1, hd))?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

// ---------------------------------------------------------------------------------------------
// Causal softmax over attention scores [..., rows, keys]. Row r holds the query at position
// `r % period + offset` (grouped-query heads are stacked along the rows, so `period` is the
// number of new queries) and may attend to keys 0..=position. Right padding needs no extra mask:
// a real token only ever sees earlier positions, which are real too.

struct CausalSoftmax {
    period: usize,
    offset: usize,
    scale: f64,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "gaplab-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            op: &CausalSoftmax,
            s: &CpuStorage,
            l: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let x = contiguous_slice::<T>(s, l)?;
            let dims = l.dims();
            let rows = dims[dims.len() - 2];
            let keys = dims[dims.len() - 1];
            let scale = float::<T>(op.scale)?;
            let mut y = vec![T::zero(); x.len()];
            y.par_chunks_mut(keys)
                .zip(x.par_chunks(keys))
                .enumerate()
                .for_each(|(m, (y, x))| {
                    let pos = (m % rows) % op.period + op.offset;
                    let n = (pos + 1).min(keys);
                    let mut max = T::neg_infinity();
                    for &v in &x[..n] {
                        max = Float::max(max, v * scale);
                    }
                    let mut sum = T::zero();
                    for j in 0..n {
                        let e = (x[j] * scale - max).exp();
                        y[j] = e;
                        sum += e;
                    }
                    let inv = sum.recip();
                    for v in &mut y[..n] {
                        *v *= inv;
                    }
                });
            owned(y, l.shape())
        }
        on_float!(s, run(self, s, l))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = y.apply_op2_no_bwd(&dy.contiguous()?, &CausalSoftmaxBwd { scale: self.scale })?;
        Ok(Some(dx))
    }
}

struct CausalSoftmaxBwd {
    scale: f64,
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "gaplab-causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            scale: f64,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let y = contiguous_slice::<T>(s1, l1)?;
            let dy = contiguous_slice::<T>(s2, l2)?;
            let (_, keys) = rows_of(l1);
            let scale = float::<T>(scale)?;
            let mut dx = vec![T::zero(); y.len()];
            dx.par_chunks_mut(keys)
                .zip(y.par_chunks(keys).zip(dy.par_chunks(keys)))
                .for_each(|(dx, (y, dy))| {
                    let dot: T = y.iter().zip(dy).map(|(&a, &b)| a * b).sum();
                    for j in 0..keys {
                        dx[j] = scale * y[j] * (dy[j] - dot);
                    }
                });
            owned(dx, l1.shape())
        }
        on_float!(s1, run(self.scale, s1, l1, s2, l2))
    }
}

/// Softmax of `scale * x` over the last dimension under a causal mask (see above).
pub fn causal_softmax(x: &Tensor, period: usize, offset: usize, scale: f64) -> Result<Tensor> {
    if is_half(x) {
        let p = causal_softmax(&x.to_dtype(DType::F32)?, period, offset, scale)?;
        return p.to_dtype(x.dtype());
    }
    if fused_ok(x) {
        x.contiguous()?.apply_op1(CausalSoftmax {
            period,
            offset,
            scale,
        })
    } else {
        causal_softmax_composite(x, period, offset, scale)
    }
}

pub fn causal_softmax_composite(
    x: &Tensor,
    period: usize,
    offset: usize,
    scale: f64,
) -> Result<Tensor> {
    let dims = x.dims();
    let rows = dims[dims.len() - 2];
    let keys = dims[dims.len() - 1];
    let mask: Vec<f32> = (0..rows * keys)
        .map(|i| {
            let (r, j) = (i / keys, i % keys);
            if j <= r % period + offset {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (rows, keys), x.device())?.to_dtype(x.dtype())?;
    candle_nn::ops::softmax(&(x * scale)?.broadcast_add(&mask)?, D::Minus1)
}

// ---------------------------------------------------------------------------------------------
// SwiGLU gate: silu(g) * u.

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "gaplab-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let g = contiguous_slice::<T>(s1, l1)?;
            let u = contiguous_slice::<T>(s2, l2)?;
            let mut y = vec![T::zero(); g.len()];
            y.par_chunks_mut(4096)
                .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
                .for_each(|(y, (g, u))| {
                    for i in 0..y.len() {
                        y[i] = g[i] / (T::one() + (-g[i]).exp()) * u[i];
                    }
                });
            owned(y, l1.shape())
        }
        on_float!(s1, run(s1, l1, s2, l2))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One kernel yields both gradients, stacked along a new leading axis.
        let packed = g.apply_op3_no_bwd(u, &dy.contiguous()?, &SiluMulBwd)?;
        Ok((Some(packed.get(0)?), Some(packed.get(1)?)))
    }
}

struct SiluMulBwd;

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "gaplab-silu-mul-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let g = contiguous_slice::<T>(s1, l1)?;
            let u = contiguous_slice::<T>(s2, l2)?;
            let dy = contiguous_slice::<T>(s3, l3)?;
            let n = g.len();
            let mut out = vec![T::zero(); 2 * n];
            let (dg, du) = out.split_at_mut(n);
            dg.par_chunks_mut(4096)
                .zip(du.par_chunks_mut(4096))
                .zip(
                    g.par_chunks(4096)
                        .zip(u.par_chunks(4096))
                        .zip(dy.par_chunks(4096)),
                )
                .for_each(|((dg, du), ((g, u), dy))| {
                    for i in 0..dg.len() {
                        let sig = (T::one() + (-g[i]).exp()).recip();
                        let silu = g[i] * sig;
                        du[i] = dy[i] * silu;
                        dg[i] = dy[i] * u[i] * sig * (T::one() + g[i] * (T::one() - sig));
                    }
                });
            let mut dims = vec![2];
            dims.extend_from_slice(l1.dims());
            owned(out, &Shape::from(dims))
        }
        on_float!(s1, run(s1, l1, s2, l2, s3, l3))
    }
}

/// silu(g) * u, differentiable in both.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if fused_ok(g) {
        g.contiguous()?.apply_op2(&u.contiguous()?, SiluMul)
    } else {
        g.silu()? * u
    }
}

// ---------------------------------------------------------------------------------------------
// Log-probability of the target token: logits [n, vocab], targets [n] (u32) -> [n].
// Never materialises the full log-softmax; the backward recomputes the softmax row by row.

struct TargetLogProb;

impl CustomOp2 for TargetLogProb {
    fn name(&self) -> &'static str {
        "gaplab-target-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let logits = contiguous_slice::<T>(s1, l1)?;
            let targets = contiguous_slice::<u32>(s2, l2)?;
            let (rows, v) = rows_of(l1);
            let mut out = vec![T::zero(); rows];
            out.par_iter_mut()
                .zip(logits.par_chunks(v).zip(targets.par_iter()))
                .for_each(|(o, (row, &t))| {
                    *o = row[t as usize] - log_sum_exp(row);
                });
            owned(out, &Shape::from(rows))
        }
        check_targets(s1, l1, s2, l2)?;
        on_float!(s1, run(s1, l1, s2, l2))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dl = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &TargetLogProbBwd)?;
        Ok((Some(dl), None))
    }
}

fn check_targets(s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
    let (rows, v) = rows_of(l1);
    let targets = contiguous_slice::<u32>(s2, l2)?;
    if targets.len() != rows {
        candle_core::bail!(
            "target-logprob: {} targets for {} rows",
            targets.len(),
            rows
        );
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("target-logprob: token id {t} outside the vocabulary of {v}");
    }
    let _ = s1;
    Ok(())
}

fn log_sum_exp<T: Real>(row: &[T]) -> T {
    let max = row.iter().fold(T::neg_infinity(), |m, &x| Float::max(m, x));
    let sum: T = row.iter().map(|&x| (x - max).exp()).sum();
    max + sum.ln()
}

struct TargetLogProbBwd;

impl CustomOp3 for TargetLogProbBwd {
    fn name(&self) -> &'static str {
        "gaplab-target-logprob-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let logits = contiguous_slice::<T>(s1, l1)?;
            let targets = contiguous_slice::<u32>(s2, l2)?;
            let grad = contiguous_slice::<T>(s3, l3)?;
            let (_, v) = rows_of(l1);
            let mut dl = vec![T::zero(); logits.len()];
            dl.par_chunks_mut(v)
                .zip(logits.par_chunks(v))
                .zip(targets.par_iter().zip(grad.par_iter()))
                .for_each(|((d, row), (&t, &g))| {
                    // d logp / d logits = onehot(t) - softmax(logits)
                    let lse = log_sum_exp(row);
                    for j in 0..v {
                        d[j] = -g * (row[j] - lse).exp();
                    }
                    d[t as usize] += g;
                });
            owned(dl, l1.shape())
        }
        on_float!(s1, run(s1, l1, s2, l2, s3, l3))
    }
}

/// log softmax(logits)[target] per row: logits [n, vocab], targets [n] u32.
pub fn target_logprob(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if is_half(logits) {
        return target_logprob(&logits.to_dtype(DType::F32)?, targets);
    }
    if fused_ok(logits) {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, TargetLogProb)
    } else {
        target_logprob_composite(logits, targets)
    }
}

pub fn target_logprob_composite(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)
}

/// Entropy of the predictive distribution per row of `logits` [n, vocab] (no gradient).
pub fn entropy(logits: &Tensor) -> Result<Tensor> {
    let logits = logits.detach().to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    (logp.exp()? * &logp)?.sum(D::Minus1)?.neg()
}

/// The `k` most likely tokens of each row of `logits` [n, vocab] with their probabilities, most
/// likely first (no gradient). Found by k argmax passes on the device, so only n * k numbers
/// reach the host whatever the vocabulary (a sort of 128k columns is not on every backend).
pub fn top_k_probs(logits: &Tensor, k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
    let logits = logits.detach().to_dtype(DType::F32)?;
    let (n, v) = logits.dims2()?;
    let mut p = candle_nn::ops::softmax_last_dim(&logits.contiguous()?)?;
    let cols = Tensor::arange(0u32, v as u32, logits.device())?.unsqueeze(0)?;
    // Probabilities are >= 0: a taken column set to -1 is never the argmax again.
    let taken = Tensor::full(-1f32, (n, v), logits.device())?;
    let mut out = vec![Vec::with_capacity(k); n];
    for _ in 0..k.min(v) {
        let idx = p.argmax_keepdim(D::Minus1)?;
        let val = p.gather(&idx, 1)?;
        let ids: Vec<u32> = idx.flatten_all()?.to_vec1()?;
        let vals: Vec<f32> = val.flatten_all()?.to_vec1()?;
        for (row, (id, pr)) in out.iter_mut().zip(ids.into_iter().zip(vals)) {
            row.push((id, pr));
        }
        p = cols.broadcast_eq(&idx)?.where_cond(&taken, &p)?;
    }
    Ok(out)
}

/// log Σ_v p(v)² per row of `logits` [n, vocab] (WPO's weights; no gradient).
pub fn log_sum_sq_probs(logits: &Tensor) -> Result<Tensor> {
    let logits = logits.detach().to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    (logp * 2.0)?.exp()?.sum(D::Minus1)?.log()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{max_diff as max_abs_diff, randn};
    use candle_core::{Device, Var};

    #[test]
    fn top_k_probs_by_hand() {
        let dev = Device::Cpu;
        // Row 0: softmax of [0, ln 3, ln 2, -inf-ish] = [1/6, 3/6, 2/6, ~0].
        let logits = Tensor::new(
            &[[0f32, 3f32.ln(), 2f32.ln(), -80.0], [5.0, 1.0, 1.0, 1.0]],
            &dev,
        )
        .unwrap();
        let top = top_k_probs(&logits, 3).unwrap();
        let ids: Vec<u32> = top[0].iter().map(|x| x.0).collect();
        assert_eq!(ids, vec![1, 2, 0]);
        for ((_, p), want) in top[0].iter().zip([0.5, 1.0 / 3.0, 1.0 / 6.0]) {
            assert!((p - want).abs() < 1e-6, "{p} vs {want}");
        }
        assert_eq!(top[1][0].0, 0);
        // Ties: each id once.
        let mut rest: Vec<u32> = top[1][1..].iter().map(|x| x.0).collect();
        rest.sort();
        rest.dedup();
        assert_eq!(rest.len(), 2);
        assert_eq!(top_k_probs(&logits, 9).unwrap()[0].len(), 4);
    }

    /// Checks a fused op against its composite twin: values and gradients of a random
    /// projection of the output with respect to every input.
    fn check(
        inputs: Vec<Tensor>,
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        composite: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let a = fused(&ts).unwrap();
        let b = composite(&ts).unwrap();
        assert_eq!(a.dims(), b.dims());
        assert!(max_abs_diff(&a, &b) < 1e-10, "forward differs");
        let proj = randn(a.dims(), 99);
        let ga = (&a * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        for v in &vars {
            let (ga, gb) = (ga.get(v).unwrap(), gb.get(v).unwrap());
            assert!(max_abs_diff(ga, gb) < 1e-9, "gradient differs");
        }
    }

    #[test]
    fn log_sum_sq_probs_of_uniform_and_peaked_rows() {
        // Uniform over 4: Σ p² = 1/4. All mass on one token: Σ p² = 1.
        let logits = Tensor::new(
            &[[0f32, 0., 0., 0.], [0., -100., -100., -100.]],
            &Device::Cpu,
        )
        .unwrap();
        let v: Vec<f32> = log_sum_sq_probs(&logits).unwrap().to_vec1().unwrap();
        assert!(
            (v[0] - 0.25f32.ln()).abs() < 1e-6 && v[1].abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn rms_norm_matches_composite() {
        check(
            vec![randn(&[3, 5, 8], 1), randn(&[8], 2)],
            |t| rms_norm(&t[0], &t[1], 1e-5),
            |t| rms_norm_composite(&t[0], &t[1], 1e-5),
        );
    }

    #[test]
    fn rope_matches_composite() {
        let cos = randn(&[5, 4], 3).cos().unwrap();
        let sin = randn(&[5, 4], 3).sin().unwrap();
        let (c1, s1) = (cos.clone(), sin.clone());
        check(
            vec![randn(&[2, 5, 3, 8], 4)],
            move |t| rope(&t[0], &cos, &sin),
            move |t| rope_composite(&t[0], &c1, &s1),
        );
    }

    #[test]
    fn causal_softmax_matches_composite() {
        // Two heads of grouped queries stacked along rows (period 4), with a cache offset.
        for offset in [0, 3] {
            check(
                vec![randn(&[2, 3, 8, 4 + offset], 5)],
                move |t| causal_softmax(&t[0], 4, offset, 0.5),
                move |t| causal_softmax_composite(&t[0], 4, offset, 0.5),
            );
        }
    }

    #[test]
    fn silu_mul_matches_composite() {
        check(
            vec![randn(&[4, 6], 6), randn(&[4, 6], 7)],
            |t| silu_mul(&t[0], &t[1]),
            |t| t[0].silu()? * &t[1],
        );
    }

    #[test]
    fn target_logprob_matches_composite() {
        let targets = Tensor::new(&[0u32, 6, 3, 2], &Device::Cpu).unwrap();
        let t2 = targets.clone();
        check(
            vec![(randn(&[4, 7], 8) * 3.0).unwrap()],
            move |t| target_logprob(&t[0], &targets),
            move |t| target_logprob_composite(&t[0], &t2),
        );
    }

    #[test]
    fn target_logprob_rejects_out_of_vocab() {
        let logits = randn(&[1, 4], 1).to_dtype(DType::F32).unwrap();
        let targets = Tensor::new(&[4u32], &Device::Cpu).unwrap();
        assert!(target_logprob(&logits, &targets).is_err());
    }
}
