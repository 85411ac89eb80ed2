//! Matrix multiplication with its own work splitting.
//!
//! candle's CPU matmul hands every product to the `gemm` crate's multithreaded driver, which
//! barely scales beyond one core on the shapes of small-model training (a 2048 x 256 x 256 product
//! runs at ~100 GFLOP/s on two cores against ~90 on one). Here each core runs gemm's
//! single-threaded kernel on its own block of the output (a block of rows or columns, or whole
//! matrices of a batch), which scales almost linearly. The backward pass is two more products
//! of the same op on transposed views (no copies).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::ops::Real;

struct MatMul;

/// (batch, m, k, n) of a [..., m, k] x [..., k, n] product (same batch dimensions, no
/// broadcasting), or why the shapes don't multiply.
fn product_dims(l1: &Layout, l2: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (da, db) = (l1.dims(), l2.dims());
    let r = da.len();
    if r < 2 || db.len() != r || da[..r - 2] != db[..r - 2] || da[r - 1] != db[r - 2] {
        candle_core::bail!("matmul: incompatible shapes {da:?} x {db:?}");
    }
    let batch = da[..r - 2].iter().product();
    Ok((batch, da[r - 2], da[r - 1], db[r - 1]))
}

/// The product's shape: the batch dimensions of the left operand, then [m, n].
fn out_shape(l1: &Layout, m: usize, n: usize) -> Shape {
    let da = l1.dims();
    let mut dims = da[..da.len() - 2].to_vec();
    dims.extend([m, n]);
    Shape::from(dims)
}

/// A raw pointer that may cross threads: every task writes a disjoint block of the output.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Stride between consecutive matrices of a batched layout, when all batch dimensions can be
/// walked with one stride (always true for contiguous tensors).
fn batch_stride(l: &Layout) -> Option<usize> {
    let r = l.dims().len();
    // Size-1 dimensions can carry any stride (candle still calls such layouts contiguous).
    let batch: Vec<(usize, usize)> = l.dims()[..r.saturating_sub(2)]
        .iter()
        .zip(l.stride())
        .filter(|(&d, _)| d > 1)
        .map(|(&d, &s)| (d, s))
        .collect();
    for w in batch.windows(2) {
        if w[0].1 != w[1].1 * w[1].0 {
            return None;
        }
    }
    Some(batch.last().map_or(0, |b| b.1))
}

fn walkable(l: &Layout) -> bool {
    batch_stride(l).is_some()
}

struct Operand<T> {
    ptr: *const T,
    batch_stride: usize,
    rs: isize,
    cs: isize,
}

fn operand<T: WithDType>(s: &CpuStorage, l: &Layout) -> Result<Operand<T>> {
    let data = s.as_slice::<T>()?;
    let r = l.dims().len();
    let Some(batch_stride) = batch_stride(l) else {
        candle_core::bail!("matmul: batch dimensions cannot be walked with one stride");
    };
    Ok(Operand {
        ptr: data[l.start_offset()..].as_ptr(),
        batch_stride,
        rs: l.stride()[r - 2] as isize,
        cs: l.stride()[r - 1] as isize,
    })
}

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "gaplab-matmul"
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
            let (batch, m, k, n) = product_dims(l1, l2)?;
            let a = operand::<T>(s1, l1)?;
            let b = operand::<T>(s2, l2)?;
            let mut out = vec![T::zero(); batch * m * n];
            let shape = out_shape(l1, m, n);
            if k == 0 || out.is_empty() {
                return Ok((T::to_cpu_storage_owned(out), shape));
            }
            // Blocks: whole matrices when the batch keeps every core busy, else slices of rows
            // (or columns, whichever side is longer) of each matrix.
            let threads = rayon::current_num_threads().max(1);
            let small = m * n * k < 32 * 32 * 32;
            let parts = if batch >= threads || small {
                1
            } else {
                threads.div_ceil(batch).min(m.max(n).div_ceil(16))
            };
            let split_rows = m >= n;
            let len = if split_rows { m } else { n };
            let block = len.div_ceil(parts);
            let dst = SendPtr(out.as_mut_ptr());
            let (ap, bp) = (SendPtr(a.ptr as *mut T), SendPtr(b.ptr as *mut T));
            (0..batch * parts).into_par_iter().for_each(|task| {
                let (bi, part) = (task / parts, task % parts);
                let start = part * block;
                let size = block.min(len - start.min(len));
                if size == 0 {
                    return;
                }
                let (dst, ap, bp) = (dst, ap, bp);
                // SAFETY: the blocks of `out` are disjoint; operands are read-only and the
                // offsets stay inside the storages (checked shapes and strides).
                unsafe {
                    let mut d = dst.0.add(bi * m * n);
                    let mut pa = ap.0.add(bi * a.batch_stride) as *const T;
                    let mut pb = bp.0.add(bi * b.batch_stride) as *const T;
                    let (mm, nn) = if split_rows {
                        d = d.add(start * n);
                        pa = pa.offset(start as isize * a.rs);
                        (size, n)
                    } else {
                        d = d.add(start);
                        pb = pb.offset(start as isize * b.cs);
                        (m, size)
                    };
                    gemm::gemm(
                        mm,
                        nn,
                        k,
                        d,
                        1,
                        n as isize,
                        false,
                        pa,
                        a.cs,
                        a.rs,
                        pb,
                        b.cs,
                        b.rs,
                        T::zero(),
                        T::one(),
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
            Ok((T::to_cpu_storage_owned(out), shape))
        }
        match s1 {
            CpuStorage::F32(_) => run::<f32>(s1, l1, s2, l2),
            CpuStorage::F64(_) => run::<f64>(s1, l1, s2, l2),
            _ => candle_core::bail!("matmul: unsupported dtype"),
        }
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _c: &Tensor,
        dc: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        operand_grads(a, b, dc)
    }
}

/// Gradients of a [..., m, k] x b [..., k, n] for the operands that track one: a frozen
/// weight (LoRA's base, an embedding used as LM head) gets none, which saves a weight-sized
/// product per layer and keeps weight-sized gradients out of the store.
fn operand_grads(a: &Tensor, b: &Tensor, dc: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let r = a.rank();
    let da = match a.track_op() {
        true => Some(matmul(dc, &b.transpose(r - 2, r - 1)?)?),
        false => None,
    };
    let db = match b.track_op() {
        true => Some(matmul(&a.transpose(r - 2, r - 1)?, dc)?),
        false => None,
    };
    Ok((da, db))
}

/// The backend's own matmul (any device, any dtype) with the backward of [`operand_grads`]:
/// candle's built-in matmul computes both operands' gradients.
struct BackendMatMul;

fn backend_matmul<S: BackendStorage>(
    s1: &S,
    l1: &Layout,
    s2: &S,
    l2: &Layout,
) -> Result<(S, Shape)> {
    let (batch, m, k, n) = product_dims(l1, l2)?;
    Ok((
        s1.matmul(s2, (batch, m, n, k), l1, l2)?,
        out_shape(l1, m, n),
    ))
}

impl CustomOp2 for BackendMatMul {
    fn name(&self) -> &'static str {
        "gaplab-backend-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        backend_matmul(s1, l1, s2, l2)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        backend_matmul(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _c: &Tensor,
        dc: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        operand_grads(a, b, dc)
    }
}

/// a [..., m, k] x b [..., k, n] -> [..., m, n] (same batch dimensions, no broadcasting).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fused = a.device().is_cpu()
        && matches!(a.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
        && a.dtype() == b.dtype();
    if !fused {
        if a.track_op() != b.track_op() && a.elem_count() > 0 && b.elem_count() > 0 {
            return a.apply_op2(b, BackendMatMul);
        }
        return a.matmul(b);
    }
    let a = if walkable(a.layout()) {
        a.clone()
    } else {
        a.contiguous()?
    };
    let b = if walkable(b.layout()) {
        b.clone()
    } else {
        b.contiguous()?
    };
    a.apply_op2(&b, MatMul)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{max_diff, randn};
    use candle_core::Var;

    #[test]
    fn matches_candle_on_views_and_batches() {
        // Row split, column split, transposed operands, batched and single-matrix cases.
        let cases: Vec<(Tensor, Tensor)> = vec![
            (randn(&[70, 9], 1), randn(&[9, 33], 2)),
            (randn(&[5, 64], 3), randn(&[64, 90], 4)),
            (randn(&[70, 9], 5), randn(&[40, 9], 6).t().unwrap()),
            (randn(&[9, 70], 7).t().unwrap(), randn(&[9, 40], 8)),
            (
                randn(&[2, 3, 17, 8], 9),
                randn(&[2, 3, 19, 8], 10).t().unwrap(),
            ),
            (randn(&[1, 50, 40], 11), randn(&[1, 40, 60], 12)),
        ];
        for (a, b) in cases {
            let va = Var::from_tensor(&a).unwrap();
            let vb = Var::from_tensor(&b).unwrap();
            let ours = matmul(va.as_tensor(), vb.as_tensor()).unwrap();
            let theirs = va.as_tensor().matmul(vb.as_tensor()).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-10);
            let proj = randn(ours.dims(), 13);
            let g1 = (&ours * &proj)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&theirs * &proj)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&va, &vb] {
                assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-10);
            }
        }
    }
}
