//! AdamW (PyTorch semantics: decoupled weight decay, bias-corrected moments) with a fused
//! in-place update on CPU and global-norm gradient clipping.
//!
//! candle-nn's AdamW allocates about fifteen temporaries per parameter per step and decays every
//! variable; this one updates each parameter and its moments in one pass, and, as Hugging Face's
//! Trainer does, exempts biases and norm weights from weight decay.

use std::cell::RefCell;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

enum Moments {
    /// f32 parameters on the CPU: moments in host memory, fused update.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Any other device or dtype: moments as f32 tensors, update from tensor ops. Half-precision
    /// parameters keep an f32 master copy that the update applies to: a bf16 weight of 0.02
    /// has a spacing of ~1e-4, so DPO-sized steps (lr 5e-7) applied to it directly would round
    /// away to nothing.
    Device {
        m: Tensor,
        v: Tensor,
        master: Option<Tensor>,
    },
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Optimizer steps taken (bias correction uses it).
    pub step: u64,
    params: Vec<Param>,
}

/// Hugging Face's Trainer decays every weight except biases and normalisation scales.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("norm"))
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// Whether the update was applied (false when a gradient was not finite).
    pub applied: bool,
}

impl AdamW {
    pub fn new(named_vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let params = named_vars
            .into_iter()
            .map(|(name, var)| {
                let moments = if var.device().is_cpu() && var.dtype() == DType::F32 {
                    let n = var.elem_count();
                    Moments::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    Moments::Device {
                        m: var.zeros_like()?.to_dtype(DType::F32)?,
                        v: var.zeros_like()?.to_dtype(DType::F32)?,
                        master: (var.dtype() != DType::F32)
                            .then(|| var.as_tensor().to_dtype(DType::F32))
                            .transpose()?,
                    }
                };
                Ok(Param {
                    decay: decays(&name),
                    name,
                    var,
                    moments,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg,
            step: 0,
            params,
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// The optimized variables, in construction order.
    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    /// Global L2 norm of the gradients of all parameters (missing gradients count as zero).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                sq += sum_of_squares(g)?;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update. Gradients are scaled so their global norm is at most `max_grad_norm` (when
    /// given). A non-finite gradient norm leaves every parameter and moment untouched.
    pub fn step(&mut self, grads: &GradStore, max_grad_norm: Option<f64>) -> Result<StepReport> {
        let grad_norm = self.grad_norm(grads)?;
        if !grad_norm.is_finite() {
            return Ok(StepReport {
                grad_norm,
                applied: false,
            });
        }
        let scale = match max_grad_norm {
            Some(max) if grad_norm > max => max / (grad_norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let t = self.step as i32;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let wd = if p.decay { c.weight_decay } else { 0.0 };
            match &mut p.moments {
                Moments::Host { m, v } => {
                    let op = FusedAdamW {
                        m: RefCell::new(m),
                        v: RefCell::new(v),
                        lr: c.lr as f32,
                        beta1: c.beta1 as f32,
                        beta2: c.beta2 as f32,
                        eps: c.eps as f32,
                        decay: (1.0 - c.lr * wd) as f32,
                        bc1: bc1 as f32,
                        bc2_sqrt: bc2.sqrt() as f32,
                        scale: scale as f32,
                    };
                    p.var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
                }
                Moments::Device { m, v, master } => {
                    let g = (g.to_dtype(DType::F32)? * scale)?;
                    *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + c.eps)?)?;
                    let w = match master {
                        Some(w) => w.clone(),
                        None => p.var.as_tensor().clone(),
                    };
                    let w = ((w * (1.0 - c.lr * wd))? - (update * c.lr)?)?;
                    p.var.set(&w.to_dtype(p.var.dtype())?)?;
                    if let Some(mw) = master {
                        *mw = w;
                    }
                }
            }
        }
        Ok(StepReport {
            grad_norm,
            applied: true,
        })
    }

    /// First and second moments of every parameter, named `<param>.exp_avg` and
    /// `<param>.exp_avg_sq` (PyTorch's names), and the f32 master weights of half-precision
    /// parameters (`<param>.master`), for checkpoints.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for p in &self.params {
            let (m, v) = match &p.moments {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, p.var.shape(), &candle_core::Device::Cpu)?,
                    Tensor::from_slice(v, p.var.shape(), &candle_core::Device::Cpu)?,
                ),
                Moments::Device { m, v, master } => {
                    if let Some(w) = master {
                        out.push((format!("{}.master", p.name), w.clone()));
                    }
                    (m.clone(), v.clone())
                }
            };
            out.push((format!("{}.exp_avg", p.name), m));
            out.push((format!("{}.exp_avg_sq", p.name), v));
        }
        Ok(out)
    }

    /// The f32 master weights of half-precision parameters (empty for f32 ones), by name.
    pub fn master_weights(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .filter_map(|p| match &p.moments {
                Moments::Device {
                    master: Some(w), ..
                } => Some((p.name.clone(), w.clone())),
                _ => None,
            })
            .collect()
    }

    /// Restores moments saved by `state_tensors`.
    pub fn load_state(
        &mut self,
        mut get: impl FnMut(&str) -> Option<Tensor>,
        step: u64,
    ) -> Result<()> {
        for p in &mut self.params {
            let (Some(m_t), Some(v_t)) = (
                get(&format!("{}.exp_avg", p.name)),
                get(&format!("{}.exp_avg_sq", p.name)),
            ) else {
                bail!("optimizer state has no moments for `{}`", p.name);
            };
            if m_t.dims() != p.var.dims() || v_t.dims() != p.var.dims() {
                bail!("optimizer state for `{}` has the wrong shape", p.name);
            }
            match &mut p.moments {
                Moments::Host { m, v } => {
                    *m = m_t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                    *v = v_t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                }
                Moments::Device { m, v, master } => {
                    *m = m_t.to_device(p.var.device())?.to_dtype(DType::F32)?;
                    *v = v_t.to_device(p.var.device())?.to_dtype(DType::F32)?;
                    // A checkpoint from an f32 run has no master copy: the weights are it.
                    if let (Some(w), Some(saved)) = (master, get(&format!("{}.master", p.name))) {
                        if saved.dims() != p.var.dims() {
                            bail!("optimizer state for `{}` has the wrong shape", p.name);
                        }
                        *w = saved.to_device(p.var.device())?.to_dtype(DType::F32)?;
                    }
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Sum of the squares of a gradient's elements, accumulated in f64. On the CPU it reads the
/// f32 storage in place: an f64 copy of the embedding gradient of a 150k-token vocabulary would
/// be a gigabyte more at the step's memory peak.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    if g.device().is_cpu() && g.dtype() == DType::F32 && g.is_contiguous() {
        let (storage, layout) = g.storage_and_layout();
        if let (candle_core::Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(data[a..b]
                .par_chunks(1 << 16)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .sum());
        }
    }
    // Elsewhere: squares summed in f32 on the device (one f32 temporary, not two f64 ones).
    Ok(g.to_dtype(DType::F32)?
        .sqr()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

/// The whole AdamW update of one f32 parameter in a single pass over memory.
struct FusedAdamW<'a> {
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// 1 - lr * weight_decay
    decay: f32,
    bc1: f32,
    bc2_sqrt: f32,
    /// Gradient clipping factor.
    scale: f32,
}

impl InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "gaplab-fused-adamw"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let CpuStorage::F32(p) = dst else {
            candle_core::bail!("fused adamw expects f32 parameters");
        };
        let Some((a, b)) = dst_l.contiguous_offsets() else {
            candle_core::bail!("fused adamw expects contiguous parameters");
        };
        let p = &mut p[a..b];
        let g = gs.as_slice::<f32>()?;
        let Some((ga, gb)) = gl.contiguous_offsets() else {
            candle_core::bail!("fused adamw expects contiguous gradients");
        };
        let g = &g[ga..gb];
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        let step_size = self.lr / self.bc1;
        let (beta1, beta2, eps, decay) = (self.beta1, self.beta2, self.eps, self.decay);
        let (bc2_sqrt, scale) = (self.bc2_sqrt, self.scale);
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.len() {
                    let g = g[i] * scale;
                    m[i] = beta1 * m[i] + (1.0 - beta1) * g;
                    v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
                    let denom = v[i].sqrt() / bc2_sqrt + eps;
                    p[i] = p[i] * decay - step_size * m[i] / denom;
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Gradients equal to `g` for `var` (the gradient of sum(var * g)).
    fn grads_of(var: &Var, g: Tensor) -> GradStore {
        (var.as_tensor() * g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    /// The fused host path and the tensor path agree with each other and with a scalar
    /// transcription of torch.optim.AdamW.
    #[test]
    fn fused_matches_tensor_path_and_reference() {
        let cfg = AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let init = [1.0f32, -2.0, 0.5];
        let grads = [[0.5f32, -1.0, 2.0], [0.1, 0.3, -0.2], [1.0, 1.0, 1.0]];
        let host = Var::new(&init, &Device::Cpu).unwrap();
        let dev64 = Var::new(&init.map(|x| x as f64), &Device::Cpu).unwrap();
        let mut a = AdamW::new(vec![("w".into(), host.clone())], cfg).unwrap();
        let mut b = AdamW::new(vec![("w".into(), dev64.clone())], cfg).unwrap();
        assert!(matches!(a.params[0].moments, Moments::Host { .. }));
        assert!(matches!(b.params[0].moments, Moments::Device { .. }));
        // Scalar reference.
        let (mut p, mut m, mut v) = (init.map(|x| x as f64), [0f64; 3], [0f64; 3]);
        for (t, g) in grads.iter().enumerate() {
            let ga = grads_of(&host, Tensor::new(g, &Device::Cpu).unwrap());
            a.step(&ga, None).unwrap();
            let g64 = g.map(|x| x as f64);
            let gb = grads_of(&dev64, Tensor::new(&g64, &Device::Cpu).unwrap());
            b.step(&gb, None).unwrap();
            let t = (t + 1) as i32;
            for i in 0..3 {
                p[i] *= 1.0 - cfg.lr * cfg.weight_decay;
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g64[i];
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g64[i] * g64[i];
                let mh = m[i] / (1.0 - cfg.beta1.powi(t));
                let vh = v[i] / (1.0 - cfg.beta2.powi(t));
                p[i] -= cfg.lr * mh / (vh.sqrt() + cfg.eps);
            }
        }
        let ha: Vec<f32> = host.as_tensor().to_vec1().unwrap();
        let hb: Vec<f64> = dev64.as_tensor().to_vec1().unwrap();
        for i in 0..3 {
            assert!((ha[i] as f64 - p[i]).abs() < 1e-5, "{ha:?} {p:?}");
            assert!((hb[i] - p[i]).abs() < 1e-5, "{hb:?} {p:?}");
        }
    }

    /// A bf16 parameter updates an f32 master copy exactly as an f32 parameter would be
    /// updated, and shows the master rounded to bf16: DPO-sized steps accumulate instead of
    /// rounding away, and a checkpoint's state restores the master exactly.
    #[test]
    fn half_precision_parameters_keep_f32_master_weights() {
        let cfg = AdamWConfig {
            lr: 5e-7,
            weight_decay: 0.0,
            ..Default::default()
        };
        let init = [0.015625f32, -0.5, 1.0, 3.0]; // exact in bf16
        let dev = &Device::Cpu;
        let full = Var::new(&init, dev).unwrap();
        let half = Var::from_tensor(
            &Tensor::new(&init, dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let mut a = AdamW::new(vec![("w".into(), full.clone())], cfg).unwrap();
        let mut b = AdamW::new(vec![("w".into(), half.clone())], cfg).unwrap();
        let g = [1.0f32, -1.0, 0.5, 2.0];
        for _ in 0..20 {
            a.step(&grads_of(&full, Tensor::new(&g, dev).unwrap()), None)
                .unwrap();
            let gh = Tensor::new(&g, dev).unwrap().to_dtype(DType::BF16).unwrap();
            b.step(&grads_of(&half, gh), None).unwrap();
        }
        let want: Vec<f32> = full.as_tensor().to_vec1().unwrap();
        let master: Vec<f32> = b.master_weights()[0].1.to_vec1().unwrap();
        for i in 0..4 {
            assert!((master[i] - want[i]).abs() < 1e-9, "{master:?} vs {want:?}");
            // 20 steps of 5e-7 moved the weight by 1e-5: far below bf16's spacing here.
            assert!((want[i] - init[i]).abs() > 5e-6);
        }
        let shown: Vec<f32> = half
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let rounded: Vec<f32> = b.master_weights()[0]
            .1
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(shown, rounded);
        assert_eq!(
            shown,
            init.to_vec(),
            "the bf16 weights cannot show 1e-5 yet"
        );

        // Saved state (moments and master) restores into a fresh optimizer.
        let saved: std::collections::HashMap<String, Tensor> =
            b.state_tensors().unwrap().into_iter().collect();
        assert!(saved.contains_key("w.master"));
        let again = Var::from_tensor(&half.as_tensor().copy().unwrap()).unwrap();
        let mut c = AdamW::new(vec![("w".into(), again)], cfg).unwrap();
        c.load_state(|n| saved.get(n).cloned(), b.step).unwrap();
        let restored: Vec<f32> = c.master_weights()[0].1.to_vec1().unwrap();
        assert_eq!(restored, master);
    }

    #[test]
    fn clipping_and_non_finite_gradients() {
        let w = Var::new(&[0.0f32, 0.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default()).unwrap();
        let g = grads_of(&w, Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap());
        let r = opt.step(&g, Some(1.0)).unwrap();
        assert!((r.grad_norm - 5.0).abs() < 1e-6 && r.applied);
        let before: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        let g = grads_of(&w, Tensor::new(&[f32::NAN, 1.0], &Device::Cpu).unwrap());
        let r = opt.step(&g, Some(1.0)).unwrap();
        assert!(!r.applied);
        assert_eq!(opt.step, 1);
        assert_eq!(before, w.as_tensor().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn no_decay_for_biases_and_norms() {
        assert!(decays("model.layers.0.self_attn.q_proj.weight"));
        assert!(!decays("model.layers.0.self_attn.q_proj.bias"));
        assert!(!decays("model.layers.0.input_layernorm.weight"));
        assert!(!decays("model.norm.weight"));
    }
}
