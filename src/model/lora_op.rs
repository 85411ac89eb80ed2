//! A linear layer and its LoRA adapter as one node of the graph.
//!
//! Written with separate ops, y = x Wᵀ + b + s·((x ⊙ m) Aᵀ) Bᵀ leaves the base output, the
//! adapter's up-projection, its scaled copy and their sum alive until backward: three
//! activations of the layer's output size more than full fine-tuning keeps. As one node only
//! y stays (and x, which the layer's input keeps anyway); backward recomputes the rank-r
//! product, which costs 2·n·r·in flops.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::matmul::matmul;

/// The node of y given x, A and B; W, b, the scale and the dropout mask are constants of it.
struct LoraLinear {
    w: Tensor,
    scale: f64,
    /// Dropout's mask (already scaled by 1 / (1 − p)), when there is dropout.
    mask: Option<Tensor>,
    /// The value, computed without a graph and handed to the node once.
    value: Mutex<Option<Tensor>>,
}

impl LoraLinear {
    fn take_value(&self) -> Result<Tensor> {
        let v = self
            .value
            .lock()
            .map_err(|_| candle_core::Error::Msg("lora linear: poisoned value".into()))?
            .take();
        v.ok_or_else(|| candle_core::Error::Msg("lora linear: forward ran twice".into()))
    }
}

/// An owned copy of `t`'s storage (contiguous).
fn owned<S>(t: &Tensor, pick: impl Fn(&Storage) -> Option<&S>) -> Result<(S, Shape)>
where
    S: BackendStorage,
{
    let t = t.contiguous()?;
    let (st, layout) = t.storage_and_layout();
    let s = pick(&st).ok_or_else(|| candle_core::Error::Msg("lora linear: device".into()))?;
    Ok((s.try_clone(layout)?, layout.shape().clone()))
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "gaplab-lora-linear"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        owned(&self.take_value()?, |s| match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        })
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
        owned(&self.take_value()?, |s| match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let x_tracks = x.track_op();
        let (x, a_d, b_d) = (x.detach(), a.detach(), b.detach());
        let xd = match &self.mask {
            Some(m) => (&x * m)?,
            None => x.clone(),
        };
        let low = matmul(&xd, &a_d.t()?)?;
        // d(s·low Bᵀ): the scale folds into the up-projection's incoming gradient.
        let g_up = (g * self.scale)?;
        let gb = b.track_op().then(|| matmul(&g_up.t()?, &low)).transpose()?;
        let g_low = matmul(&g_up, &b_d)?;
        let ga = a.track_op().then(|| matmul(&g_low.t()?, &xd)).transpose()?;
        let dx = match x_tracks {
            false => None,
            true => {
                let through_adapter = matmul(&g_low, &a_d)?;
                let through_adapter = match &self.mask {
                    Some(m) => (through_adapter * m)?,
                    None => through_adapter,
                };
                Some((matmul(g, &self.w)? + through_adapter)?)
            }
        };
        Ok((dx, ga, gb))
    }
}

/// x [n, in] -> x Wᵀ + bias + scale·((x ⊙ mask) Aᵀ) Bᵀ [n, out], as one graph node when a
/// gradient flows (x, A or B tracks one), else plainly.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let value = |x: &Tensor, a: &Tensor, b: &Tensor| -> Result<Tensor> {
        let y = matmul(x, &w.t()?)?;
        let y = match bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        let xd = match mask {
            Some(m) => (x * m)?,
            None => x.clone(),
        };
        let up = matmul(&matmul(&xd, &a.t()?)?, &b.t()?)?;
        y + (up * scale)?
    };
    if !(x.track_op() || a.track_op() || b.track_op()) {
        return value(x, a, b);
    }
    let op = LoraLinear {
        w: w.detach(),
        scale,
        mask: mask.map(Tensor::detach),
        value: Mutex::new(Some(value(&x.detach(), &a.detach(), &b.detach())?)),
    };
    x.apply_op3(a, b, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{max_diff, randn};
    use candle_core::Var;

    #[test]
    fn value_and_gradients_match_the_composite_ops() {
        let (n, i, o, r) = (7, 5, 6, 3);
        let w = randn(&[o, i], 1);
        let bias = randn(&[o], 2);
        let mask = randn(&[n, i], 3)
            .ge(0.0)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        for mask in [None, Some(&mask)] {
            let x = Var::from_tensor(&randn(&[n, i], 4)).unwrap();
            let a = Var::from_tensor(&randn(&[r, i], 5)).unwrap();
            let b = Var::from_tensor(&randn(&[o, r], 6)).unwrap();
            let proj = randn(&[n, o], 7);
            let fused = lora_linear(
                x.as_tensor(),
                &w,
                Some(&bias),
                a.as_tensor(),
                b.as_tensor(),
                1.5,
                mask,
            )
            .unwrap();
            let xd = match mask {
                Some(m) => (x.as_tensor() * m).unwrap(),
                None => x.as_tensor().clone(),
            };
            let composite = (x
                .as_tensor()
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap()
                + (xd
                    .matmul(&a.as_tensor().t().unwrap())
                    .unwrap()
                    .matmul(&b.as_tensor().t().unwrap())
                    .unwrap()
                    * 1.5)
                    .unwrap())
            .unwrap();
            assert!(max_diff(&fused, &composite) < 1e-12);
            let g1 = (&fused * &proj)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&composite * &proj)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &a, &b] {
                assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-10);
            }
        }
    }
}
