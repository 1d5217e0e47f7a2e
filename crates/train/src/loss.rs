//! The training objectives: next-token NLL on output tokens (R-SFT) and weighted sigmoid DPO with
//! LLaMA-Factory's auxiliary SFT term (HS-DPO), written as TRL and LLaMA-Factory compute them.
//!
//! Every loss starts from [`token_logprobs`]: for a batch of sequences, the log-probability the
//! model gives each next token. Prompt and padding positions are masked out there, so the two
//! objectives differ only in how they sum.

use candle_core::{DType, Result, Tensor, D};
use guardreasoner_engine::backends::candle::llama::{KvCache, Llama, Weight};

use crate::fused;

/// A right-padded batch: `inputs[b, t]` predicts `targets[b, t]`, which counts where
/// `mask[b, t]` is 1 (an output token), not where it is 0 (prompt or padding).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, `[batch, length]` (u32).
    pub inputs: Tensor,
    /// The next token at each position, `[batch, length]` (u32).
    pub targets: Tensor,
    /// 1.0 where the target is scored, `[batch, length]` (f32).
    pub mask: Tensor,
}

impl Batch {
    /// Builds a batch from sequences and the index where each one's output starts: position `t`
    /// is scored when token `t + 1` belongs to the output. Shorter sequences are padded at the
    /// end with `pad` (causal attention never looks ahead, so padding needs no attention mask).
    pub fn new(
        sequences: &[(&[u32], usize)],
        pad: u32,
        device: &candle_core::Device,
    ) -> Result<Batch> {
        let length = sequences
            .iter()
            .map(|(ids, _)| ids.len().saturating_sub(1))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut inputs = Vec::with_capacity(sequences.len() * length);
        let mut targets = Vec::with_capacity(sequences.len() * length);
        let mut mask = Vec::with_capacity(sequences.len() * length);
        for (ids, output_start) in sequences {
            for t in 0..length {
                let scored = t + 1 < ids.len() && t + 1 >= *output_start;
                inputs.push(if t + 1 < ids.len() { ids[t] } else { pad });
                targets.push(ids.get(t + 1).copied().unwrap_or(pad));
                mask.push(if scored { 1f32 } else { 0.0 });
            }
        }
        let shape = (sequences.len(), length);
        Ok(Batch {
            inputs: Tensor::from_vec(inputs, shape, device)?,
            targets: Tensor::from_vec(targets, shape, device)?,
            mask: Tensor::from_vec(mask, shape, device)?,
        })
    }

    /// Scored tokens per sequence, `[batch]`.
    pub fn token_counts(&self) -> Result<Tensor> {
        self.mask.sum(D::Minus1)
    }
}

/// `log p(target)` at every position, masked: `[batch, length]`, 0 where the mask is 0.
///
/// Dense output projections go through [`fused::linear_logprobs`], which never forms the
/// full-vocabulary logits of the batch; a quantized one (not trainable, a frozen reference) takes
/// the composed path.
pub fn token_logprobs(model: &Llama, batch: &Batch) -> Result<Tensor> {
    match &model.lm_head {
        Weight::Dense(weight) => {
            let hidden = model.hidden_states(&batch.inputs, &mut KvCache::default())?;
            let (b, t, h) = hidden.dims3()?;
            fused::linear_logprobs(
                &hidden.reshape((b * t, h))?,
                weight,
                &batch.targets.flatten_all()?,
                &batch.mask.flatten_all()?,
            )?
            .reshape((b, t))
        }
        Weight::Quantized(_) | Weight::Lora { .. } => token_logprobs_composed(model, batch),
    }
}

/// [`token_logprobs`] in candle's own operations, the logits whole.
pub fn token_logprobs_composed(model: &Llama, batch: &Batch) -> Result<Tensor> {
    let logits = model.forward(&batch.inputs, &mut KvCache::default())?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let logsumexp = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&batch.targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    let logprobs = (picked - logsumexp)?.squeeze(D::Minus1)?;
    logprobs * &batch.mask
}

/// The sum of the masked next-token NLL over the batch; divide by the number of scored tokens
/// of the whole optimizer step for the mean per-token loss (what the trainers of Hugging Face
/// and LLaMA-Factory minimize, accumulation included).
pub fn nll_sum(model: &Llama, batch: &Batch) -> Result<Tensor> {
    token_logprobs(model, batch)?.sum_all()?.neg()
}

guardreasoner_protocol::choice! {
    /// Where HS-DPO puts the pair's weight.
    #[derive(Default)]
    pub enum WeightOn("weight placement") {
        /// `w * dpo + ftx * nll` (SPEC section 7's formula).
        #[default]
        Dpo = "dpo",
        /// `w * (dpo + ftx * nll)`.
        Sum = "sum",
    }
}

/// The HS-DPO settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoSettings {
    /// The KL strength (0.01 in the paper).
    pub beta: f64,
    /// The auxiliary SFT term's factor, LLaMA-Factory's `pref_ftx` (2.0 in the paper).
    pub ftx: f64,
    /// Where the weight goes.
    pub weight_on: WeightOn,
}

impl Default for DpoSettings {
    fn default() -> Self {
        Self {
            beta: 0.01,
            ftx: 2.0,
            weight_on: WeightOn::Dpo,
        }
    }
}

/// The per-pair quantities of a DPO step, each `[pairs]`.
#[derive(Debug, Clone)]
pub struct DpoTerms {
    /// The loss of each pair (weighted, auxiliary term included); its mean is minimized.
    pub losses: Tensor,
    /// `beta * (log pi(y+) - log ref(y+))`.
    pub chosen_rewards: Tensor,
    /// `beta * (log pi(y-) - log ref(y-))`.
    pub rejected_rewards: Tensor,
}

/// Weighted sigmoid DPO plus the auxiliary SFT term, per pair.
///
/// Inputs are sequence log-probabilities (sums over completion tokens) `[pairs]`, the chosen
/// outputs' token counts, and the pair weights. As TRL's sigmoid loss with no label smoothing:
/// `-log sigmoid(beta * ((pi+ - ref+) - (pi- - ref-)))`; as LLaMA-Factory's `pref_ftx`:
/// `ftx * (-pi+ / tokens+)`.
pub fn dpo_terms(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference_chosen: &Tensor,
    reference_rejected: &Tensor,
    chosen_tokens: &Tensor,
    weights: &Tensor,
    settings: DpoSettings,
) -> Result<DpoTerms> {
    let chosen_rewards = ((policy_chosen - reference_chosen)? * settings.beta)?;
    let rejected_rewards = ((policy_rejected - reference_rejected)? * settings.beta)?;
    let margin = (&chosen_rewards - &rejected_rewards)?;
    let dpo = softplus(&margin.neg()?)?;
    let nll = (policy_chosen.neg()? / chosen_tokens.to_dtype(DType::F32)?)?;
    let auxiliary = (nll * settings.ftx)?;
    let losses = match settings.weight_on {
        WeightOn::Dpo => ((dpo * weights)? + auxiliary)?,
        WeightOn::Sum => ((dpo + auxiliary)? * weights)?,
    };
    Ok(DpoTerms {
        losses,
        chosen_rewards: chosen_rewards.detach(),
        rejected_rewards: rejected_rewards.detach(),
    })
}

/// `log(1 + exp(x))`, stable for large `|x|`: `max(x, 0) + log(1 + exp(-|x|))`.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn batches_score_only_output_tokens_and_pad_at_the_end() {
        let batch = Batch::new(&[(&[1, 2, 3, 4], 2), (&[5, 6], 1)], 0, &Device::Cpu).unwrap();
        assert_eq!(
            batch.inputs.to_vec2::<u32>().unwrap(),
            [[1, 2, 3], [5, 0, 0]]
        );
        assert_eq!(
            batch.targets.to_vec2::<u32>().unwrap(),
            [[2, 3, 4], [6, 0, 0]]
        );
        // Tokens 3 and 4 are the first sequence's output; token 6 the second's.
        assert_eq!(
            batch.mask.to_vec2::<f32>().unwrap(),
            [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
        );
    }

    #[test]
    fn softplus_is_stable_at_both_ends() {
        let x = Tensor::new(&[-100f32, 0.0, 100.0], &Device::Cpu).unwrap();
        let y = softplus(&x).unwrap().to_vec1::<f32>().unwrap();
        assert!(y[0] >= 0.0 && y[0] < 1e-30);
        assert!((y[1] - std::f32::consts::LN_2).abs() < 1e-6);
        assert!((y[2] - 100.0).abs() < 1e-4);
    }
}
