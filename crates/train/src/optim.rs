//! AdamW, the cosine learning-rate schedule with warmup, and gradient-norm clipping, as PyTorch's
//! `torch.optim.AdamW`, transformers' `get_cosine_schedule_with_warmup` and
//! `torch.nn.utils.clip_grad_norm_` compute them.
//!
//! On the CPU the update runs in place over each parameter's own storage, moments kept beside it:
//! no temporary tensor per parameter per step (candle-nn's AdamW builds about ten), which is most
//! of what an optimizer step costs there. Elsewhere (CUDA) it is written in tensor operations.

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Layout, Result, Tensor, Var};

/// AdamW's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// The peak learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the second moment's root.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults but for weight decay, which LLaMA-Factory and the paper leave at 0.
    fn default() -> Self {
        Self {
            lr: 5e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One optimized parameter: the variable and its moments.
struct Slot {
    var: Var,
    moments: Moments,
}

enum Moments {
    /// `m` and `v` beside the CPU storage.
    Cpu(Mutex<(Vec<f32>, Vec<f32>)>),
    /// `m` and `v` as tensors on the parameter's device.
    Tensors(Tensor, Tensor),
}

/// AdamW over a set of variables.
pub struct AdamW {
    slots: Vec<Slot>,
    config: AdamWConfig,
    step: usize,
}

impl AdamW {
    /// An optimizer for `vars` (f32 on the CPU; any float dtype elsewhere).
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|var| {
                let moments = if var.device().is_cpu() && var.dtype() == DType::F32 {
                    let n = var.elem_count();
                    Moments::Cpu(Mutex::new((vec![0.0; n], vec![0.0; n])))
                } else {
                    let zeros = var.zeros_like()?.to_dtype(DType::F32)?;
                    Moments::Tensors(zeros.clone(), zeros)
                };
                Ok(Slot { var, moments })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            slots,
            config,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The moments `(m, v)` of each variable, in the order given to [`AdamW::new`] (for a
    /// checkpoint), as f32 tensors on the CPU.
    pub fn moments(&self) -> Result<Vec<(Tensor, Tensor)>> {
        self.slots
            .iter()
            .map(|slot| {
                let shape = slot.var.shape();
                match &slot.moments {
                    Moments::Cpu(moments) => {
                        let moments = moments.lock().expect("not poisoned");
                        Ok((
                            Tensor::from_slice(&moments.0, shape, &candle_core::Device::Cpu)?,
                            Tensor::from_slice(&moments.1, shape, &candle_core::Device::Cpu)?,
                        ))
                    }
                    Moments::Tensors(m, v) => Ok((
                        m.to_device(&candle_core::Device::Cpu)?,
                        v.to_device(&candle_core::Device::Cpu)?,
                    )),
                }
            })
            .collect()
    }

    /// Restores moments saved by [`AdamW::moments`] and the step count (resuming a run).
    pub fn restore(&mut self, moments: Vec<(Tensor, Tensor)>, step: usize) -> Result<()> {
        if moments.len() != self.slots.len() {
            candle_core::bail!(
                "the checkpoint has moments for {} parameters, the model {}",
                moments.len(),
                self.slots.len()
            );
        }
        for (slot, (m, v)) in self.slots.iter_mut().zip(moments) {
            if m.shape() != slot.var.shape() || v.shape() != slot.var.shape() {
                candle_core::bail!(
                    "moment shape {:?} does not match parameter shape {:?}",
                    m.shape(),
                    slot.var.shape()
                );
            }
            match &mut slot.moments {
                Moments::Cpu(moments) => {
                    let moments = moments.get_mut().expect("not poisoned");
                    moments.0 = m.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                    moments.1 = v.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                }
                Moments::Tensors(mt, vt) => {
                    *mt = m.to_device(slot.var.device())?.to_dtype(DType::F32)?;
                    *vt = v.to_device(slot.var.device())?.to_dtype(DType::F32)?;
                }
            }
        }
        self.step = step;
        Ok(())
    }

    /// One update at learning rate `lr`, the gradients first multiplied by `grad_scale` (the
    /// clipping coefficient, or `1 / accumulated micro-batches`). Parameters without a gradient
    /// are left alone, as PyTorch leaves them.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let update = Update {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            bias1: 1.0 - c.beta1.powi(t),
            bias2: 1.0 - c.beta2.powi(t),
            grad_scale,
        };
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            match &mut slot.moments {
                Moments::Cpu(moments) => {
                    let op = CpuAdamW { update, moments };
                    slot.var.as_tensor().inplace_op2(&grad.contiguous()?, &op)?;
                }
                Moments::Tensors(m, v) => {
                    let g = (grad.to_dtype(DType::F32)? * grad_scale)?;
                    *m = ((&*m * update.beta1)? + (&g * (1.0 - update.beta1))?)?;
                    *v = ((&*v * update.beta2)? + (g.sqr()? * (1.0 - update.beta2))?)?;
                    let p = slot.var.as_tensor().to_dtype(DType::F32)?;
                    let p = (&p * (1.0 - lr * update.weight_decay))?;
                    let denominator = ((&*v / update.bias2)?.sqrt()? + update.eps)?;
                    let step = ((&*m / update.bias1)? / denominator)?;
                    let p = (p - (step * lr)?)?;
                    slot.var.set(&p.to_dtype(slot.var.dtype())?)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Update {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    bias1: f64,
    bias2: f64,
    grad_scale: f64,
}

/// The in-place CPU update of one parameter, given its gradient.
struct CpuAdamW<'a> {
    update: Update,
    moments: &'a Mutex<(Vec<f32>, Vec<f32>)>,
}

impl candle_core::InplaceOp2 for CpuAdamW<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(param), CpuStorage::F32(grad)) = (s1, s2) else {
            candle_core::bail!("adamw: f32 parameters and gradients only on the CPU");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adamw: parameter and gradient must be contiguous");
        };
        let param = &mut param[p0..p1];
        let grad = &grad[g0..g1];
        let mut moments = self.moments.lock().expect("not poisoned");
        let (m, v) = &mut *moments;
        if param.len() != grad.len() || m.len() != param.len() {
            candle_core::bail!("adamw: parameter, gradient and moments differ in size");
        }
        let u = self.update;
        let (b1, b2) = (u.beta1 as f32, u.beta2 as f32);
        let decay = (1.0 - u.lr * u.weight_decay) as f32;
        let step_size = (u.lr / u.bias1) as f32;
        let bias2_root = u.bias2.sqrt() as f32;
        let (eps, scale) = (u.eps as f32, u.grad_scale as f32);
        for (((p, &g), m), v) in param
            .iter_mut()
            .zip(grad)
            .zip(m.iter_mut())
            .zip(v.iter_mut())
        {
            let g = g * scale;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            // PyTorch's order: decay, then p -= lr/bias1 * m / (sqrt(v)/sqrt(bias2) + eps).
            *p *= decay;
            *p -= step_size * *m / (v.sqrt() / bias2_root + eps);
        }
        Ok(())
    }
}

/// The global L2 norm of the gradients of `vars` (those that have one).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut sum = 0f64;
    for var in vars {
        if let Some(grad) = grads.get(var.as_tensor()) {
            sum += grad
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
        }
    }
    Ok(sum.sqrt())
}

/// The factor `clip_grad_norm_` multiplies gradients by: `max_norm / (norm + 1e-6)`, capped at 1.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// The learning rate at `step` (0-based) of `total`: linear warmup over `warmup` steps from 0,
/// then a half cosine down to 0 (transformers' `get_cosine_schedule_with_warmup`).
pub fn cosine_lr(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Three steps of AdamW on f(p) = sum(p^2 * c), both paths against a hand computation
    /// (PyTorch's algorithm, written out in f64).
    #[test]
    fn cpu_and_tensor_paths_follow_pytorchs_adamw() {
        let config = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.01,
            ..AdamWConfig::default()
        };
        let start = [0.5f32, -1.0, 2.0];
        let c = [1.0f32, 2.0, 3.0];
        // Reference, f64.
        let mut p: Vec<f64> = start.iter().map(|&x| x as f64).collect();
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        for t in 1..=3 {
            for i in 0..3 {
                let g = 2.0 * p[i] * c[i] as f64 * 0.5; // grad_scale 0.5
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                p[i] *= 1.0 - 0.1 * 0.01;
                let (mh, vh) = (
                    m[i] / (1.0 - 0.9f64.powi(t)),
                    v[i] / (1.0 - 0.999f64.powi(t)),
                );
                p[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let cpu = Var::new(&start, &Device::Cpu).unwrap();
        // The tensor path, forced by a non-f32 dtype... on the CPU f64 takes it.
        let other = Var::new(&start.map(|x| x as f64), &Device::Cpu).unwrap();
        let mut cpu_opt = AdamW::new(vec![cpu.clone()], config).unwrap();
        let mut other_opt = AdamW::new(vec![other.clone()], config).unwrap();
        let weights = Tensor::new(&c, &Device::Cpu).unwrap();
        for _ in 0..3 {
            let loss = (cpu.as_tensor().sqr().unwrap() * &weights)
                .unwrap()
                .sum_all()
                .unwrap();
            cpu_opt.step(&loss.backward().unwrap(), 0.1, 0.5).unwrap();
            let loss = (other.as_tensor().sqr().unwrap() * weights.to_dtype(DType::F64).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            other_opt.step(&loss.backward().unwrap(), 0.1, 0.5).unwrap();
        }
        let ours = cpu.as_tensor().to_vec1::<f32>().unwrap();
        let theirs = other.as_tensor().to_vec1::<f64>().unwrap();
        for i in 0..3 {
            assert!((ours[i] as f64 - p[i]).abs() < 1e-5, "{ours:?} vs {p:?}");
            assert!((theirs[i] - p[i]).abs() < 1e-6, "{theirs:?} vs {p:?}");
        }
    }

    #[test]
    fn the_schedule_warms_up_then_falls_to_zero() {
        assert_eq!(cosine_lr(1.0, 0, 2, 10), 0.0);
        assert_eq!(cosine_lr(1.0, 1, 2, 10), 0.5);
        assert_eq!(cosine_lr(1.0, 2, 2, 10), 1.0);
        assert!((cosine_lr(1.0, 6, 2, 10) - 0.5).abs() < 1e-12);
        assert!(cosine_lr(1.0, 10, 2, 10).abs() < 1e-12);
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
        assert!((clip_coefficient(4.0, 1.0) - 0.25).abs() < 1e-6);
    }
}
