//! The Llama architecture (Llama 2/3, SmolLM2, GuardReasoner), written top to bottom as the
//! equations read, every operation differentiable.
//!
//! candle-transformers' llama uses fused kernels (RMS norm, softmax, rotary embedding, attention)
//! that have no backward pass, so a gradient reaches almost none of its weights; the training
//! pipeline differentiates through this file instead. Where an input tracks gradients, RMSNorm,
//! RoPE and the attention softmax run as single operations with hand-written backward passes
//! ([`super::ops`]); otherwise as candle's plain operations. Quantized weights (GGUF) run through
//! `QMatMul` for inference; dense weights (safetensors, or GGUF dequantized) can be trainable
//! variables.
//!
//! For an input of tokens `x` at positions `p..p+t`:
//! ```text
//! h = embed(x)
//! for each block:
//!     a = rms_norm(h) ; q, k, v = a Wq, a Wk, a Wv ; q, k = rope(q, k, positions)
//!     h = h + softmax(q k^T / sqrt(d) + causal_mask) v Wo        (k, v shared by head groups)
//!     m = rms_norm(h) ; h = h + (silu(m Wgate) * (m Wup)) Wdown
//! logits = rms_norm(h) Wlm_head                                  (Wlm_head = Wembed when tied)
//! ```

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Result, Tensor, Var, D};

use super::ops;

/// Llama 3's frequency-dependent RoPE scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    /// How much longer the context is than in pre-training.
    pub factor: f64,
    /// Below this, frequencies are divided by `factor`.
    pub low_freq_factor: f64,
    /// Above this, frequencies are kept.
    pub high_freq_factor: f64,
    /// The pre-training context length.
    pub original_max_position_embeddings: f64,
}

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Hugging Face: dimension `i` pairs with `i + d/2` (`rotate_half`).
    Half,
    /// GGUF (llama.cpp permutes Q and K at conversion): dimension `2i` pairs with `2i + 1`.
    Interleaved,
}

/// The shape of a Llama model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (fewer than query heads: grouped-query attention).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Llama 3 RoPE scaling, when the model uses it.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Per-frequency divisors read from a GGUF `rope_freqs.weight` (Llama 3 scaling, precomputed).
    pub rope_freq_factors: Option<Vec<f32>>,
    /// RoPE dimension pairing.
    pub rope_layout: RopeLayout,
    /// The longest context the model was trained for.
    pub max_position_embeddings: usize,
}

impl LlamaConfig {
    /// The inverse frequencies of RoPE, scaled as the model wants.
    pub fn inverse_frequencies(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let mut inv: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        if let Some(factors) = &self.rope_freq_factors {
            for (f, factor) in inv.iter_mut().zip(factors) {
                *f /= *factor as f64;
            }
        } else if let Some(s) = self.rope_scaling {
            let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
            for f in inv.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        inv
    }
}

/// A weight matrix `[out, in]`: dense (differentiable), quantized (inference only), or a frozen
/// matrix with a low-rank adapter (LoRA).
#[derive(Debug, Clone)]
pub enum Weight {
    /// A dense matrix.
    Dense(Tensor),
    /// A quantized matrix, multiplied without dequantizing.
    Quantized(Arc<QMatMul>),
    /// `W + scale * B A`, with `A` `[rank, in]` and `B` `[out, rank]` (PEFT's LoRA), applied
    /// without forming the sum: `x W^T + scale * (x A^T) B^T`.
    Lora {
        /// The frozen weight.
        base: Box<Weight>,
        /// The down projection, `[rank, in]`.
        a: Tensor,
        /// The up projection, `[out, rank]`.
        b: Tensor,
        /// `alpha / rank`.
        scale: f64,
    },
}

impl Weight {
    /// `x W^T` for `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            // A matrix kept in its checkpoint's half precision (on a GPU): the activations meet
            // it in that precision and return in theirs.
            Weight::Dense(w) if w.dtype() != x.dtype() => x
                .to_dtype(w.dtype())?
                .broadcast_matmul(&w.t()?)?
                .to_dtype(x.dtype()),
            Weight::Dense(w) => x.broadcast_matmul(&w.t()?),
            Weight::Quantized(q) => q.forward(x),
            Weight::Lora { base, a, b, scale } => {
                let low = x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
                base.forward(x)? + (low * *scale)?
            }
        }
    }
}

/// The token embedding: kept in f16 when it came quantized (f32 would double its memory), rows
/// widened to f32 on lookup.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[vocab, hidden]`.
    pub table: Tensor,
}

impl Embedding {
    fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (batch, length) = tokens.dims2()?;
        let rows = self.table.index_select(&tokens.flatten_all()?, 0)?;
        rows.to_dtype(DType::F32)?.reshape((batch, length, ()))
    }
}

/// The weights of one block.
#[derive(Debug, Clone)]
pub struct Block {
    /// RMS norm before attention, `[hidden]`.
    pub attention_norm: Tensor,
    /// Query projection.
    pub wq: Weight,
    /// Key projection.
    pub wk: Weight,
    /// Value projection.
    pub wv: Weight,
    /// Output projection.
    pub wo: Weight,
    /// RMS norm before the MLP, `[hidden]`.
    pub mlp_norm: Tensor,
    /// Gate projection.
    pub w_gate: Weight,
    /// Up projection.
    pub w_up: Weight,
    /// Down projection.
    pub w_down: Weight,
}

impl Block {
    /// The names of the seven projections, in [`Self::projections_mut`]'s order.
    pub const PROJECTIONS: [&'static str; 7] = ["wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"];

    /// The seven projections (what training casts, detaches or adapts), named by
    /// [`Self::PROJECTIONS`].
    pub fn projections_mut(&mut self) -> [&mut Weight; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.w_gate,
            &mut self.w_up,
            &mut self.w_down,
        ]
    }
}

/// The keys and values of the positions seen so far, per block: `[batch, kv_heads, positions, d]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// How many positions the cache holds.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|layer| layer.as_ref())
            .map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A Llama model.
#[derive(Debug, Clone)]
pub struct Llama {
    /// Its shape.
    pub config: LlamaConfig,
    /// Token embedding.
    pub embedding: Embedding,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Final RMS norm, `[hidden]`.
    pub norm: Tensor,
    /// The output projection (the embedding itself when tied).
    pub lm_head: Weight,
    cos: Tensor,
    sin: Tensor,
}

impl Llama {
    /// Assembles a model from its weights; precomputes the RoPE tables for `max_positions`.
    pub fn new(
        config: LlamaConfig,
        embedding: Embedding,
        blocks: Vec<Block>,
        norm: Tensor,
        lm_head: Weight,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let inverse: Vec<f32> = config
            .inverse_frequencies()
            .iter()
            .map(|&f| f as f32)
            .collect();
        let half = inverse.len();
        let inverse = Tensor::from_vec(inverse, (1, half), device)?;
        let positions = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let angles = positions.broadcast_mul(&inverse)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
            config,
            embedding,
            blocks,
            norm,
            lm_head,
        })
    }

    /// A copy whose dense weights are trainable variables, with their names; quantized weights
    /// are dequantized first. What the training pipeline optimizes.
    pub fn trainable(&self) -> Result<(Llama, Vec<(String, Var)>)> {
        let mut vars = Vars::default();
        let mut model = self.clone();
        model.embedding.table = vars.tensor("embedding", &self.embedding.table)?;
        for (i, (block, original)) in model.blocks.iter_mut().zip(&self.blocks).enumerate() {
            let name = |part: &str| format!("blocks.{i}.{part}");
            block.attention_norm =
                vars.tensor(&name("attention_norm"), &original.attention_norm)?;
            block.wq = vars.weight(&name("wq"), &original.wq)?;
            block.wk = vars.weight(&name("wk"), &original.wk)?;
            block.wv = vars.weight(&name("wv"), &original.wv)?;
            block.wo = vars.weight(&name("wo"), &original.wo)?;
            block.mlp_norm = vars.tensor(&name("mlp_norm"), &original.mlp_norm)?;
            block.w_gate = vars.weight(&name("w_gate"), &original.w_gate)?;
            block.w_up = vars.weight(&name("w_up"), &original.w_up)?;
            block.w_down = vars.weight(&name("w_down"), &original.w_down)?;
        }
        model.norm = vars.tensor("norm", &self.norm)?;
        // A tied output projection stays tied: it is the embedding variable.
        let tied =
            matches!(&self.lm_head, Weight::Dense(head) if head.id() == self.embedding.table.id());
        model.lm_head = if tied {
            Weight::Dense(model.embedding.table.clone())
        } else {
            vars.weight("lm_head", &self.lm_head)?
        };
        Ok((model, vars.0))
    }

    /// The longest sequence the RoPE tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Logits `[batch, length, vocab]` for `tokens` `[batch, length]` at positions following what
    /// `cache` holds; the cache is extended with their keys and values.
    pub fn forward(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let hidden = self.hidden_states(tokens, cache)?;
        self.lm_head.forward(&hidden)
    }

    /// Logits of the last position only, `[batch, vocab]` (what generation needs).
    pub fn forward_last(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let hidden = self.hidden_states(tokens, cache)?;
        let length = hidden.dim(1)?;
        self.lm_head
            .forward(&hidden.narrow(1, length - 1, 1)?.squeeze(1)?)
    }

    /// The final normed hidden states `[batch, length, hidden]`, before the output projection
    /// (a trainer's fused loss multiplies by the projection itself, a chunk at a time).
    pub fn hidden_states(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (_, length) = tokens.dims2()?;
        let start = cache.len();
        if start + length > self.max_positions() {
            candle_core::bail!(
                "positions {start}..{} exceed the {} this model was set up for",
                start + length,
                self.max_positions()
            );
        }
        cache.layers.resize(self.blocks.len(), None);
        let cos = self.cos.narrow(0, start, length)?;
        let sin = self.sin.narrow(0, start, length)?;
        let mask = causal_mask(length, start, tokens.device())?;

        let mut h = self.embedding.forward(tokens)?;
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let a = rms_norm(&h, &block.attention_norm, self.config.rms_norm_eps)?;
            h = (h + self.attention(block, &a, &cos, &sin, mask.as_ref(), layer_cache)?)?;
            let m = rms_norm(&h, &block.mlp_norm, self.config.rms_norm_eps)?;
            let gated = swiglu(&block.w_gate.forward(&m)?, &block.w_up.forward(&m)?)?;
            h = (h + block.w_down.forward(&gated)?)?;
        }
        rms_norm(&h, &self.norm, self.config.rms_norm_eps)
    }

    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (batch, length, _) = x.dims3()?;
        let heads = |w: &Weight, n: usize| -> Result<Tensor> {
            w.forward(x)?
                .reshape((batch, length, n, c.head_dim))?
                .transpose(1, 2)
        };
        let q = rope(&heads(&block.wq, c.num_heads)?, cos, sin, c.rope_layout)?;
        let k = rope(&heads(&block.wk, c.num_kv_heads)?, cos, sin, c.rope_layout)?;
        let v = heads(&block.wv, c.num_kv_heads)?;
        let (k, v) = match cache.take() {
            Some((past_k, past_v)) => (
                Tensor::cat(&[&past_k, &k], 2)?,
                Tensor::cat(&[&past_v, &v], 2)?,
            ),
            None => (k.contiguous()?, v.contiguous()?),
        };
        *cache = Some((k.clone(), v.clone()));

        let group = c.num_heads / c.num_kv_heads;
        let k = repeat_kv(&k, group)?;
        let v = repeat_kv(&v, group)?;
        let scores = q.contiguous()?.matmul(&k.t()?.contiguous()?)?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let weights = if scores.track_op() && scores.dtype() == DType::F32 {
            // Training: one operation with its own backward instead of four kept in the graph.
            ops::causal_softmax(&scores, scale)?
        } else {
            let scores = (scores * scale)?;
            let scores = match mask {
                Some(mask) => scores.broadcast_add(mask)?,
                None => scores,
            };
            ops::plain_softmax(&scores)?
        };
        let attended = weights.matmul(&v.contiguous()?)?;
        let merged =
            attended
                .transpose(1, 2)?
                .reshape((batch, length, c.num_heads * c.head_dim))?;
        block.wo.forward(&merged)
    }
}

/// The variables [`Llama::trainable`] creates, with their names.
#[derive(Default)]
struct Vars(Vec<(String, Var)>);

impl Vars {
    fn tensor(&mut self, name: &str, tensor: &Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(&tensor.to_dtype(DType::F32)?)?;
        let as_tensor = var.as_tensor().clone();
        self.0.push((name.to_string(), var));
        Ok(as_tensor)
    }

    fn weight(&mut self, name: &str, weight: &Weight) -> Result<Weight> {
        let dense = match weight {
            Weight::Dense(t) => t.clone(),
            Weight::Quantized(q) => q.dequantize_f16()?.to_dtype(DType::F32)?,
            Weight::Lora { .. } => candle_core::bail!("{name}: merge the adapter before training"),
        };
        Ok(Weight::Dense(self.tensor(name, &dense)?))
    }
}

/// `x / sqrt(mean(x^2) + eps) * weight`. Where an f32 input tracks gradients (training), one
/// operation with its own backward ([`ops::rms_norm`]); otherwise plain operations.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let weight = weight.to_dtype(DType::F32)?;
    if (x.track_op() || weight.track_op()) && x.dtype() == DType::F32 {
        return ops::rms_norm(x, &weight, eps);
    }
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normalized = x.broadcast_div(&(mean_square + eps)?.sqrt()?)?;
    normalized.broadcast_mul(&weight)
}

/// `silu(gate) * up`. Where an f32 input tracks gradients (training), one operation with its own
/// backward ([`ops::swiglu`]); otherwise plain operations.
fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if (gate.track_op() || up.track_op()) && gate.dtype() == DType::F32 {
        return ops::swiglu(gate, up);
    }
    ops::plain_swiglu(gate, up)
}

/// Rotates `x` `[batch, heads, length, d]` by the angles of its positions (`cos`, `sin`:
/// `[length, d / 2]`). Where an f32 input tracks gradients (training), one operation with its own
/// backward ([`ops::rope`]); otherwise plain operations.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    if x.track_op() && x.dtype() == DType::F32 {
        return ops::rope(x, cos, sin, layout);
    }
    ops::plain_rope(x, cos, sin, layout)
}

/// Repeats each key/value head `group` times so that every query head has one.
fn repeat_kv(x: &Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (batch, kv_heads, length, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((batch, kv_heads, group, length, d))?
        .reshape((batch, kv_heads * group, length, d))
}

/// `-inf` where a query at `start + i` would see a key after it; `None` for a single query.
fn causal_mask(length: usize, start: usize, device: &Device) -> Result<Option<Tensor>> {
    if length == 1 {
        return Ok(None);
    }
    ops::causal_mask(length, start, device).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let config = LlamaConfig {
            vocab_size: 8,
            hidden_size: 64,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            }),
            rope_freq_factors: None,
            rope_layout: RopeLayout::Half,
            max_position_embeddings: 131072,
        };
        let scaled = config.inverse_frequencies();
        let plain = LlamaConfig {
            rope_scaling: None,
            ..config
        }
        .inverse_frequencies();
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[31] - plain[31] / 32.0).abs() < 1e-15);
        // Wavelengths between 2048 and 8192 positions (i = 15..=17 here) are blended.
        assert!(scaled[16] < plain[16] && scaled[16] > plain[16] / 32.0);
    }

    #[test]
    fn both_rope_layouts_rotate_the_same_pairs_the_same_way() {
        let device = Device::Cpu;
        let d = 4;
        let x = Tensor::arange(0f32, 8.0, &device)
            .unwrap()
            .reshape((1, 1, 2, d))
            .unwrap();
        let angles = Tensor::new(&[[0.0f32, 0.0], [0.5, 0.25]], &device).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        // Interleaved [a0, b0, a1, b1] is Half [a0, a1, b0, b1] with its dimensions permuted.
        let half = rope(&x, &cos, &sin, RopeLayout::Half).unwrap();
        let permuted = x
            .index_select(&Tensor::new(&[0u32, 2, 1, 3], &device).unwrap(), 3)
            .unwrap();
        let interleaved = rope(&permuted, &cos, &sin, RopeLayout::Interleaved).unwrap();
        let back = interleaved
            .index_select(&Tensor::new(&[0u32, 2, 1, 3], &device).unwrap(), 3)
            .unwrap();
        let difference: f32 = (half - back)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(difference < 1e-6, "{difference}");
    }
}
