//! The output projection, log-softmax and target pick in one operation with an analytic backward,
//! computed a chunk of positions at a time and only at scored positions.
//!
//! Composed of candle's operations, `log_softmax(h W^T)[target]` keeps the full logits, their
//! exponentials and the gradients of each (positions x vocabulary floats apiece: 50 MB for 256
//! tokens of a 49,152-token vocabulary, several times over) alive through the backward pass. Here
//! the forward keeps nothing but the result, and the backward recomputes each chunk's logits:
//! for `out = logit[t] - logsumexp(logits)`, `d logits = g (onehot(t) - softmax(logits))`, then
//! `d h = d logits W` and `d W = d logits^T h`. Positions outside the mask (prompt, padding) are
//! not computed at all.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

/// Positions per chunk: 64 x 49,152 floats = 12.6 MB of logits at a time.
pub const CHUNK: usize = 64;

/// `log softmax(hidden W^T)[target]` per position, `[n]`, 0 where `mask` is 0; `hidden` `[n, h]`,
/// `weight` `[vocab, h]`, `targets` `[n]` (u32), `mask` `[n]` (f32, 0 or 1).
pub fn linear_logprobs(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let n = hidden.dim(0)?;
    let scored: Vec<u32> = mask
        .to_vec1::<f32>()?
        .iter()
        .enumerate()
        .filter(|(_, &m)| m != 0.0)
        .map(|(i, _)| i as u32)
        .collect();
    let device = hidden.device();
    let mut result = Tensor::zeros(n, DType::F32, device)?;
    if !scored.is_empty() {
        let positions = Tensor::new(scored.as_slice(), device)?;
        let h = hidden.detach().index_select(&positions, 0)?;
        let t = targets.index_select(&positions, 0)?;
        let w = weight.detach();
        let mut parts = Vec::new();
        for start in (0..scored.len()).step_by(CHUNK) {
            let len = CHUNK.min(scored.len() - start);
            let logits = h.narrow(0, start, len)?.matmul(&w.t()?)?;
            let max = logits.max_keepdim(D::Minus1)?;
            let shifted = logits.broadcast_sub(&max)?;
            let logsumexp = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
            let picked = shifted.gather(&t.narrow(0, start, len)?.unsqueeze(1)?, D::Minus1)?;
            parts.push((picked - logsumexp)?.squeeze(1)?);
        }
        let values = Tensor::cat(&parts, 0)?;
        result = result.index_add(&positions, &values, 0)?;
    }
    let op = LinearLogprobs {
        result: result.contiguous()?,
        positions: scored,
    };
    hidden.apply_op3(weight, targets, op)
}

struct LinearLogprobs {
    /// The forward's result, computed above with detached operations.
    result: Tensor,
    /// The scored positions.
    positions: Vec<u32>,
}

impl CustomOp3 for LinearLogprobs {
    fn name(&self) -> &'static str {
        "linear-logprobs"
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
        let values = self.result.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(values), self.result.shape().clone()))
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
        guardreasoner_engine::backends::candle::ops::gpu_copy(&self.result, self.name())
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        targets: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (hidden, weight, grad) = (hidden.detach(), weight.detach(), grad.detach());
        let mut d_hidden = hidden.zeros_like()?;
        let mut d_weight = weight.zeros_like()?;
        if self.positions.is_empty() {
            return Ok((Some(d_hidden), Some(d_weight), None));
        }
        let device = hidden.device();
        let positions = Tensor::new(self.positions.as_slice(), device)?;
        let h = hidden.index_select(&positions, 0)?;
        let t = targets.index_select(&positions, 0)?;
        let g = grad.index_select(&positions, 0)?;
        let mut d_h_parts = Vec::new();
        for start in (0..self.positions.len()).step_by(CHUNK) {
            let len = CHUNK.min(self.positions.len() - start);
            let h_c = h.narrow(0, start, len)?;
            let g_c = g.narrow(0, start, len)?.unsqueeze(1)?;
            let t_c = t.narrow(0, start, len)?.unsqueeze(1)?;
            let logits = h_c.matmul(&weight.t()?)?;
            let max = logits.max_keepdim(D::Minus1)?;
            let exp = logits.broadcast_sub(&max)?.exp()?;
            let softmax = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
            // d logits = g (onehot(t) - softmax)
            let d_logits = softmax
                .broadcast_mul(&g_c.neg()?)?
                .scatter_add(&t_c, &g_c, 1)?;
            d_h_parts.push(d_logits.matmul(&weight)?);
            d_weight = (d_weight + d_logits.t()?.matmul(&h_c)?)?;
        }
        let d_h = Tensor::cat(&d_h_parts, 0)?;
        d_hidden = d_hidden.index_add(&positions, &d_h, 0)?;
        Ok((Some(d_hidden), Some(d_weight), None))
    }
}
