//! RMSNorm, RoPE, the causal attention softmax and SwiGLU as single operations with hand-written
//! backward passes, for training.
//!
//! Composed of candle's elementwise operations, each keeps every intermediate alive in the
//! autograd graph until the backward pass: the squares, means and normalized rows of RMSNorm, the
//! halves and products of RoPE, the scaled, masked, shifted scores of attention and their
//! exponentials (several copies of `heads x length x length` floats per layer), the activated
//! gate of the MLP. The backward pass then runs one operation per intermediate. Here each is one
//! graph node that keeps only its inputs and its result:
//! - on the CPU the forward is a plain loop over rows;
//! - on a GPU it is candle's own operations, run detached;
//! - the backward is the analytic formula, written in candle operations, so it runs on every
//!   device.
//!
//! The model uses them only where an input tracks gradients; inference runs the plain operations.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, D,
};

use super::llama::RopeLayout;

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension, differentiable in `x` and
/// `weight`; `x` and `weight` f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let on_gpu = (!x.device().is_cpu()).then(|| plain_rms_norm(&x.detach(), &weight.detach(), eps));
    x.apply_op2(
        &weight,
        RmsNorm {
            eps,
            on_gpu: std::sync::Mutex::new(on_gpu.transpose()?),
        },
    )
}

fn plain_rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let inverse = inverse_rms(x, eps)?;
    x.broadcast_mul(&inverse)?.broadcast_mul(weight)
}

/// `1 / sqrt(mean(x^2) + eps)` per row, `[..., 1]`.
fn inverse_rms(x: &Tensor, eps: f64) -> Result<Tensor> {
    (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()
}

struct RmsNorm {
    eps: f64,
    /// The result, computed with candle's operations where the input is not on the CPU; taken
    /// by the forward, so that the graph node does not keep a second copy.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    on_gpu: OnGpu,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(weight)) = (x, weight) else {
            candle_core::bail!("rms-norm: f32 only");
        };
        let hidden = *x_layout.dims().last().unwrap_or(&0);
        if weight_layout.dims() != [hidden] {
            candle_core::bail!(
                "rms-norm: weight {:?} for rows of {hidden}",
                weight_layout.dims()
            );
        }
        let x = contiguous_slice(x, x_layout)?;
        let weight = contiguous_slice(weight, weight_layout)?;
        let mut out = vec![0f32; x.len()];
        for (row, out_row) in x.chunks_exact(hidden).zip(out.chunks_exact_mut(hidden)) {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / hidden as f32;
            let inverse = 1.0 / (mean_square + self.eps as f32).sqrt();
            for ((o, v), w) in out_row.iter_mut().zip(row).zip(weight) {
                *o = v * inverse * w;
            }
        }
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        stored_result(&self.on_gpu, self.name())
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // With r = 1 / rms(x) and n = x r (the normalized row): y = n w, so
        // d weight = sum over rows of g n, and d x = r (g w - n mean(g w n)).
        let (x, weight, grad) = (x.detach(), weight.detach(), grad.detach());
        let inverse = inverse_rms(&x, self.eps)?;
        let normalized = x.broadcast_mul(&inverse)?;
        let hidden = weight.dim(0)?;
        let d_weight = (&grad * &normalized)?.reshape(((), hidden))?.sum(0)?;
        let g_w = grad.broadcast_mul(&weight)?;
        let projection = (&g_w * &normalized)?.mean_keepdim(D::Minus1)?;
        let d_x = (g_w - normalized.broadcast_mul(&projection)?)?.broadcast_mul(&inverse)?;
        Ok((Some(d_x), Some(d_weight)))
    }
}

/// `softmax(scores * scale)` over the last dimension with the causal mask: the query at row `i`
/// of `scores` `[batch, heads, length, total]` sees keys `0..=start + i`, where `start` is
/// `total - length` (the cached positions). Differentiable in `scores`, which must be f32;
/// `scale` must be positive.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    if scale <= 0.0 {
        candle_core::bail!("causal-softmax: scale {scale} is not positive");
    }
    let scores = scores.contiguous()?;
    let (_, _, length, total) = scores.dims4()?;
    if total < length {
        candle_core::bail!("causal-softmax: {length} queries over {total} keys");
    }
    let on_gpu = if scores.device().is_cpu() {
        None
    } else {
        let mask = causal_mask(length, total - length, scores.device())?;
        Some(plain_softmax(
            &(scores.detach() * scale)?.broadcast_add(&mask)?,
        )?)
    };
    scores.apply_op1(CausalSoftmax {
        scale,
        on_gpu: std::sync::Mutex::new(on_gpu),
    })
}

/// The additive causal mask `[1, 1, length, start + length]`: `-inf` where a query at
/// `start + i` would see a key after it.
pub fn causal_mask(length: usize, start: usize, device: &candle_core::Device) -> Result<Tensor> {
    let total = start + length;
    let mask: Vec<f32> = (0..length)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (1, 1, length, total), device)
}

/// Softmax over the last dimension in candle's operations.
pub fn plain_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?;
    let exp = shifted.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

struct CausalSoftmax {
    scale: f64,
    /// The result, computed with candle's operations where the input is not on the CPU; taken
    /// by the forward, so that the graph node does not keep a second copy.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    on_gpu: OnGpu,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, scores: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(scores) = scores else {
            candle_core::bail!("causal-softmax: f32 only");
        };
        let scores = contiguous_slice(scores, layout)?;
        let dims = layout.dims();
        let (length, total) = (dims[2], dims[3]);
        let start = total - length;
        let scale = self.scale as f32;
        let mut out = vec![0f32; scores.len()];
        for (r, (row, out_row)) in scores
            .chunks_exact(total)
            .zip(out.chunks_exact_mut(total))
            .enumerate()
        {
            // Keys after the query stay 0: exp(-inf).
            let seen = start + r % length + 1;
            let max = row[..seen].iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) * scale;
            let mut sum = 0f32;
            for (o, v) in out_row[..seen].iter_mut().zip(&row[..seen]) {
                *o = (v * scale - max).exp();
                sum += *o;
            }
            for o in &mut out_row[..seen] {
                *o /= sum;
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        stored_result(&self.on_gpu, self.name())
    }

    fn bwd(&self, _: &Tensor, result: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // y = softmax(s x + mask): d x = s y (g - sum(g y)); masked keys have y = 0.
        let (y, grad) = (result.detach(), grad.detach());
        let inner = (&grad * &y)?.sum_keepdim(D::Minus1)?;
        let d = (y * grad.broadcast_sub(&inner)?)?;
        Ok(Some((d * self.scale)?))
    }
}

/// Rotates `x` `[batch, heads, length, d]` (f32) by the angles of its positions, `cos` and `sin`
/// `[length, d / 2]`, in `layout`'s pairing; differentiable in `x` (the tables are constants).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let (_, _, length, d) = x.dims4()?;
    if cos.dims() != [length, d / 2] || sin.dims() != [length, d / 2] {
        candle_core::bail!(
            "rope: tables {:?} and {:?} for {length} positions of {d}",
            cos.dims(),
            sin.dims()
        );
    }
    let x = x.contiguous()?;
    let op = Rope::new(cos, sin, layout)?;
    let on_gpu = if x.device().is_cpu() {
        None
    } else {
        Some(plain_rope(&x.detach(), cos, sin, layout)?)
    };
    x.apply_op1(Rope {
        on_gpu: std::sync::Mutex::new(on_gpu),
        ..op
    })
}

/// [`rope`] in candle's operations.
pub fn plain_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let (batch, heads, length, d) = x.dims4()?;
    let half = d / 2;
    match layout {
        RopeLayout::Half => {
            let x1 = x.narrow(D::Minus1, 0, half)?;
            let x2 = x.narrow(D::Minus1, half, half)?;
            let rotated_1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
            let rotated_2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
            Tensor::cat(&[&rotated_1, &rotated_2], D::Minus1)
        }
        RopeLayout::Interleaved => {
            let pairs = x.reshape((batch, heads, length, half, 2))?;
            let x0 = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
            let x1 = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
            let rotated_0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
            let rotated_1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
            Tensor::stack(&[&rotated_0, &rotated_1], D::Minus1)?.reshape((batch, heads, length, d))
        }
    }
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
    layout: RopeLayout,
    /// The result, computed with candle's operations where the input is not on the CPU; taken
    /// by the forward, so that the graph node does not keep a second copy.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    on_gpu: OnGpu,
}

impl Rope {
    fn new(cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Self> {
        Ok(Self {
            cos: cos.detach().contiguous()?,
            sin: sin.detach().contiguous()?,
            layout,
            on_gpu: std::sync::Mutex::new(None),
        })
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = x else {
            candle_core::bail!("rope: f32 only");
        };
        let x = contiguous_slice(x, layout)?;
        let dims = layout.dims();
        let (length, d) = (dims[2], dims[3]);
        let half = d / 2;
        // The tables are read where they lie: this runs once per layer and direction each step.
        let (cos_storage, cos_layout) = self.cos.storage_and_layout();
        let (sin_storage, sin_layout) = self.sin.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(cos)), Storage::Cpu(CpuStorage::F32(sin))) =
            (&*cos_storage, &*sin_storage)
        else {
            candle_core::bail!("rope: the angle tables must be f32 on the CPU");
        };
        let cos = contiguous_slice(cos, cos_layout)?;
        let sin = contiguous_slice(sin, sin_layout)?;
        let mut out = vec![0f32; x.len()];
        for (r, (row, out_row)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            let position = r % length;
            let (c, s) = (
                &cos[position * half..(position + 1) * half],
                &sin[position * half..(position + 1) * half],
            );
            for i in 0..half {
                // The pair (a, b) turned by the position's angle: (a c - b s, a s + b c).
                let (ia, ib) = match self.layout {
                    RopeLayout::Half => (i, i + half),
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                };
                let (a, b) = (row[ia], row[ib]);
                out_row[ia] = a * c[i] - b * s[i];
                out_row[ib] = a * s[i] + b * c[i];
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        stored_result(&self.on_gpu, self.name())
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // A rotation's transpose turns by the opposite angle: the same rotation with -sin.
        let grad = grad.detach().contiguous()?;
        let back = Rope::new(&self.cos, &self.sin.neg()?, self.layout)?;
        if grad.device().is_cpu() {
            grad.apply_op1_no_bwd(&back).map(Some)
        } else {
            plain_rope(&grad, &back.cos, &back.sin, self.layout).map(Some)
        }
    }
}

/// `silu(gate) * up`, the MLP's gated activation, differentiable in both; f32 tensors of one shape.
/// Composed, the graph would also keep `silu(gate)`, and its backward would run five
/// elementwise operations for the sigmoid's derivative alone; here one pass gives both gradients.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!("swiglu: gate {:?} and up {:?}", gate.dims(), up.dims());
    }
    let gate = gate.contiguous()?;
    let up = up.contiguous()?;
    let on_gpu = (!gate.device().is_cpu()).then(|| plain_swiglu(&gate.detach(), &up.detach()));
    gate.apply_op2(
        &up,
        SwiGlu {
            on_gpu: std::sync::Mutex::new(on_gpu.transpose()?),
        },
    )
}

/// [`swiglu`] in candle's operations.
pub fn plain_swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `sigmoid(x)` and `silu(x) = x sigmoid(x)`.
fn sigmoid_silu(x: f32) -> (f32, f32) {
    let sigmoid = 1.0 / (1.0 + (-x).exp());
    (sigmoid, x * sigmoid)
}

struct SwiGlu {
    /// The result, computed with candle's operations where the input is not on the CPU; taken
    /// by the forward, so that the graph node does not keep a second copy.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    on_gpu: OnGpu,
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(gate), CpuStorage::F32(up)) = (gate, up) else {
            candle_core::bail!("swiglu: f32 only");
        };
        let gate = contiguous_slice(gate, gate_layout)?;
        let up = contiguous_slice(up, up_layout)?;
        let out = gate
            .iter()
            .zip(up)
            .map(|(&g, &u)| sigmoid_silu(g).1 * u)
            .collect();
        Ok((CpuStorage::F32(out), gate_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        stored_result(&self.on_gpu, self.name())
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // With s = sigmoid(x): silu'(x) = s + x s (1 - s) = s + silu(x) (1 - s), so
        // d gate = g u silu'(gate) and d up = g silu(gate).
        let (gate, up, grad) = (gate.detach(), up.detach(), grad.detach().contiguous()?);
        if gate.device().is_cpu() {
            // Both gradients from one pass, side by side in one buffer.
            let both = gate.apply_op3_no_bwd(&up, &grad, &SwiGluBackward)?;
            let n = gate.elem_count();
            let d_gate = both.narrow(0, 0, n)?.reshape(gate.shape())?;
            let d_up = both.narrow(0, n, n)?.reshape(gate.shape())?;
            return Ok((Some(d_gate), Some(d_up)));
        }
        let sigmoid = (gate.neg()?.exp()? + 1.0)?.recip()?;
        let silu = (&gate * &sigmoid)?;
        let derivative = (&sigmoid + (&silu * (1.0 - &sigmoid)?)?)?;
        let d_gate = ((&grad * &up)? * derivative)?;
        let d_up = (grad * silu)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// [`SwiGlu`]'s gradients on the CPU: `[2 n]`, the gate's then the up projection's.
struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(gate), CpuStorage::F32(up), CpuStorage::F32(grad)) = (gate, up, grad)
        else {
            candle_core::bail!("swiglu-backward: f32 only");
        };
        let gate = contiguous_slice(gate, gate_layout)?;
        let up = contiguous_slice(up, up_layout)?;
        let grad = contiguous_slice(grad, grad_layout)?;
        let n = gate.len();
        let mut out = vec![0f32; 2 * n];
        let (d_gate, d_up) = out.split_at_mut(n);
        for i in 0..n {
            let (sigmoid, silu) = sigmoid_silu(gate[i]);
            d_gate[i] = grad[i] * up[i] * (sigmoid + silu * (1.0 - sigmoid));
            d_up[i] = grad[i] * silu;
        }
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }
}

/// The elements of a contiguous layout (the operations above make their inputs contiguous).
fn contiguous_slice<'a>(values: &'a [f32], layout: &Layout) -> Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// A result computed ahead for a GPU forward pass.
type OnGpu = std::sync::Mutex<Option<Tensor>>;

#[cfg(feature = "cuda")]
fn stored_result(result: &OnGpu, name: &str) -> Result<(candle_core::CudaStorage, Shape)> {
    let result = result.lock().ok().and_then(|mut r| r.take());
    let Some(result) = result else {
        candle_core::bail!("{name}: no result computed for the GPU");
    };
    gpu_copy(&result, name)
}

/// The storage of `result`, computed ahead with candle's operations, as a custom operation's
/// CUDA forward returns it: custom operations here compute on the GPU that way rather than with
/// kernels of their own.
#[cfg(feature = "cuda")]
pub fn gpu_copy(result: &Tensor, name: &str) -> Result<(candle_core::CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    let (storage, layout) = result.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cuda(s) => Ok((s.try_clone(layout)?, result.shape().clone())),
        _ => candle_core::bail!("{name}: the result is not on the GPU"),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn values(shape: &[usize], seed: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as f64 * 0.37 + seed).sin() * 2.0) as f32)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{what}: differs by {worst}");
    }

    /// Value and gradients of an operation against the same function in candle's composed
    /// operations, for a loss that weighs every output differently.
    fn check(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        plain: impl Fn(&[Tensor]) -> Result<Tensor>,
        what: &str,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (fused(&tensors).unwrap(), plain(&tensors).unwrap());
        assert_close(&a, &b, what);
        let weights = values(a.dims(), 0.5);
        let loss = |t: &Tensor| (t * &weights).unwrap().sum_all().unwrap();
        let (ga, gb) = (loss(&a).backward().unwrap(), loss(&b).backward().unwrap());
        for (i, t) in tensors.iter().enumerate() {
            assert_close(
                ga.get(t).unwrap(),
                gb.get(t).unwrap(),
                &format!("{what}: gradient of input {i}"),
            );
        }
    }

    #[test]
    fn rms_norm_matches_the_composed_operations_and_their_gradients() {
        check(
            &[values(&[2, 3, 8], 0.0), values(&[8], 1.0)],
            |t| rms_norm(&t[0], &t[1], 1e-5),
            |t| plain_rms_norm(&t[0], &t[1], 1e-5),
            "rms-norm",
        );
    }

    #[test]
    fn rope_matches_the_composed_operations_and_their_gradients() {
        let angles = values(&[5, 4], 0.7);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        for layout in [RopeLayout::Half, RopeLayout::Interleaved] {
            check(
                &[values(&[2, 3, 5, 8], 0.2)],
                |t| rope(&t[0], &cos, &sin, layout),
                |t| plain_rope(&t[0], &cos, &sin, layout),
                &format!("rope {layout:?}"),
            );
        }
    }

    #[test]
    fn swiglu_matches_the_composed_operations_and_their_gradients() {
        check(
            &[values(&[2, 3, 8], 0.1), values(&[2, 3, 8], 0.9)],
            |t| swiglu(&t[0], &t[1]),
            |t| plain_swiglu(&t[0], &t[1]),
            "swiglu",
        );
    }

    #[test]
    fn causal_softmax_matches_the_composed_operations_and_their_gradients() {
        // Queries without a cache (square) and after 3 cached positions.
        for (length, total) in [(5, 5), (4, 7)] {
            check(
                &[values(&[2, 3, length, total], 0.3)],
                |t| causal_softmax(&t[0], 0.35),
                |t| {
                    let mask = causal_mask(length, total - length, &Device::Cpu)?;
                    plain_softmax(&(&t[0] * 0.35)?.broadcast_add(&mask)?)
                },
                &format!("causal-softmax {length}x{total}"),
            );
        }
    }
}
