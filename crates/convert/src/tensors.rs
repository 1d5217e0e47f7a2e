//! The tensors of the GGUF file: Hugging Face Llama names to llama.cpp's, Q/K rows put in
//! llama.cpp's RoPE order, each tensor's type in the file, and Llama 3's `rope_freqs`.

use crate::checkpoint::Checkpoint;
use crate::config::{Config, Llama3Rope, RopeScaling};
use crate::error::ConvertError;
use crate::gguf::{TensorInfo, TensorType};
use crate::GgufType;

/// Where a tensor of the output comes from.
#[derive(Debug, Clone)]
pub enum TensorSource {
    /// A checkpoint tensor, by its Hugging Face name, with Q/K rows permuted for `heads` heads.
    Checkpoint {
        /// The Hugging Face name.
        name: String,
        /// Heads to permute the rows for (`q_proj`, `k_proj`), else `None`.
        permute_heads: Option<usize>,
    },
    /// Llama 3's RoPE frequency factors, computed from the config.
    RopeFreqs(Vec<f32>),
}

/// One tensor of the output: its description and where its values come from.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Name, shape and type in the file.
    pub info: TensorInfo,
    /// Its values.
    pub source: TensorSource,
}

/// Llama's model-wide tensors: Hugging Face's name, llama.cpp's name.
const MODEL_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Each block's tensors, after `model.layers.N.` (Hugging Face) and `blk.N.` (llama.cpp).
const BLOCK_NAMES: [(&str, &str); 9] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

/// Renames through the tables: `from` picks the column a name is in, `to` the one it goes to.
fn rename(
    name: &str,
    block_prefix: (&str, &str),
    from: fn(&(&'static str, &'static str)) -> &'static str,
    to: fn(&(&'static str, &'static str)) -> &'static str,
) -> Option<String> {
    if let Some(pair) = MODEL_NAMES.iter().find(|p| from(p) == name) {
        return Some(to(pair).to_string());
    }
    let (layer, part) = name.strip_prefix(block_prefix.0)?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let pair = BLOCK_NAMES.iter().find(|p| from(p) == part)?;
    Some(format!("{}{layer}.{}", block_prefix.1, to(pair)))
}

/// llama.cpp's name for a Hugging Face Llama tensor, or `None` for one the model does not use.
pub fn gguf_name(hf: &str) -> Option<String> {
    rename(hf, ("model.layers.", "blk."), |p| p.0, |p| p.1)
}

/// Hugging Face's name for a llama.cpp Llama tensor.
pub fn hf_name(gguf: &str) -> Option<String> {
    rename(gguf, ("blk.", "model.layers."), |p| p.1, |p| p.0)
}

/// The tensors of the output in the order llama.cpp's converter writes them: `rope_freqs`
/// first where there is one, then the checkpoint's (shard by shard, by name).
pub fn plan(
    config: &Config,
    checkpoint: &Checkpoint,
    out: GgufType,
) -> Result<Vec<Planned>, ConvertError> {
    let mut planned = Vec::new();
    for (name, entry) in &checkpoint.entries {
        // Precomputed RoPE tables some checkpoints carry; llama.cpp computes them.
        if name.ends_with(".rotary_emb.inv_freq") {
            continue;
        }
        let gguf = gguf_name(name).ok_or_else(|| {
            ConvertError::file(
                &checkpoint.shards[entry.shard],
                format!("tensor `{name}` is not part of a Llama model (cannot map it to GGUF)"),
            )
        })?;
        let expected = expected_shape(config, name);
        if let Some(expected) = expected.filter(|e| *e != entry.shape) {
            return Err(ConvertError::file(
                &checkpoint.shards[entry.shard],
                format!(
                    "tensor `{name}` has shape {:?}; config.json makes it {expected:?}",
                    entry.shape
                ),
            ));
        }
        let permute_heads = if name.ends_with("self_attn.q_proj.weight") {
            Some(config.heads)
        } else if name.ends_with("self_attn.k_proj.weight") {
            Some(config.kv_heads)
        } else {
            None
        };
        let shape: Vec<u64> = entry.shape.iter().map(|d| *d as u64).collect();
        let kind = tensor_type(&gguf, &shape, out).ok_or_else(|| {
            ConvertError::file(
                &checkpoint.shards[entry.shard],
                format!(
                    "{out} is not a type this converter writes (llama.cpp's quantizer makes it)"
                ),
            )
        })?;
        planned.push(Planned {
            info: TensorInfo {
                name: gguf,
                shape,
                kind,
            },
            source: TensorSource::Checkpoint {
                name: name.clone(),
                permute_heads,
            },
        });
    }
    for needed in ["token_embd.weight", "output_norm.weight"] {
        if !planned.iter().any(|p| p.info.name == needed) {
            return Err(ConvertError::file(
                &checkpoint.shards[0],
                format!("the checkpoint has no {needed} (Hugging Face: model.embed_tokens.weight / model.norm.weight)"),
            ));
        }
    }
    // Llama 3's RoPE factors come first in the file, computed now that the shapes are known good.
    if let RopeScaling::Llama3(rope) = &config.rope_scaling {
        let factors = llama3_rope_factors(config, rope);
        planned.insert(
            0,
            Planned {
                info: TensorInfo {
                    name: "rope_freqs.weight".into(),
                    shape: vec![factors.len() as u64],
                    kind: TensorType::F32,
                },
                source: TensorSource::RopeFreqs(factors),
            },
        );
    }
    if !config.tie_word_embeddings && !planned.iter().any(|p| p.info.name == "output.weight") {
        return Err(ConvertError::file(
            &checkpoint.shards[0],
            "config.json says the embeddings are not tied, but there is no lm_head.weight",
        ));
    }
    for layer in 0..config.layers {
        let prefix = format!("blk.{layer}.");
        let count = planned
            .iter()
            .filter(|p| p.info.name.starts_with(&prefix))
            .count();
        if count != 9 {
            return Err(ConvertError::file(
                &checkpoint.shards[0],
                format!(
                    "layer {layer} has {count} of its 9 tensors: a shard is missing or the checkpoint is incomplete"
                ),
            ));
        }
    }
    Ok(planned)
}

/// The shape config.json gives a Hugging Face tensor, where it is one of Llama's.
fn expected_shape(config: &Config, name: &str) -> Option<Vec<usize>> {
    let (h, i, d) = (
        config.hidden_size,
        config.intermediate_size,
        config.head_dim(),
    );
    let (q, kv) = (config.heads * d, config.kv_heads * d);
    if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
        return Some(vec![config.vocab_size, h]);
    }
    if name == "model.norm.weight" {
        return Some(vec![h]);
    }
    let part = name.strip_prefix("model.layers.")?.split_once('.')?.1;
    Some(match part {
        "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![h],
        "self_attn.q_proj.weight" => vec![q, h],
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, h],
        "self_attn.o_proj.weight" => vec![h, q],
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![i, h],
        "mlp.down_proj.weight" => vec![h, i],
        _ => return None,
    })
}

/// The type a tensor gets: F32 for vectors and norms (as llama.cpp keeps them), else the
/// output type, with F16 where a row does not split into Q8_0's blocks of 32.
/// `None` for a type the converter does not write (Q4_K_M).
fn tensor_type(gguf: &str, shape: &[u64], out: GgufType) -> Option<TensorType> {
    if shape.len() <= 1 || gguf.ends_with("_norm.weight") {
        return out.written_by_converter().then_some(TensorType::F32);
    }
    Some(match out {
        GgufType::F32 => TensorType::F32,
        GgufType::F16 => TensorType::F16,
        GgufType::Bf16 => TensorType::Bf16,
        GgufType::Q8_0 if shape.last().is_some_and(|d| d % 32 == 0) => TensorType::Q8_0,
        GgufType::Q8_0 => TensorType::F16,
        GgufType::Q4KM => return None,
    })
}

/// llama.cpp's Q/K row order: within each head, the two halves of the rotary pairs
/// interleaved (`convert_hf_to_gguf.py`'s `permute`). `rows` must be `heads` times an even head
/// size, as [`plan`] has checked against config.json.
pub(crate) fn permute_rows(values: &[f32], rows: usize, columns: usize, heads: usize) -> Vec<f32> {
    assert!(
        rows.is_multiple_of(2 * heads) && values.len() == rows * columns,
        "permute_rows: {rows} rows do not split into {heads} heads of rotary pairs"
    );
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(values.len());
    for head in 0..heads {
        for r in 0..half {
            for pair in 0..2 {
                let source = head * 2 * half + pair * half + r;
                out.extend_from_slice(&values[source * columns..(source + 1) * columns]);
            }
        }
    }
    out
}

/// Llama 3's per-frequency RoPE factors, computed in f32 step by step as the converter's torch
/// code does (`1/x` as a reciprocal, Python scalars rounded to f32 first).
pub fn llama3_rope_factors(config: &Config, rope: &Llama3Rope) -> Vec<f32> {
    let dim = config.head_dim();
    let base = config.rope_theta.unwrap_or(10_000.0);
    let factor = rope.factor as f32;
    let low = rope.low_freq_factor as f32;
    let high = rope.high_freq_factor as f32;
    let old = rope.original_context as f32;
    let low_wavelen = (rope.original_context / rope.low_freq_factor) as f32;
    let high_wavelen = (rope.original_context / rope.high_freq_factor) as f32;
    (0..dim)
        .step_by(2)
        .map(|k| {
            let exponent = k as f32 / dim as f32;
            let freq = 1.0f32 / (base as f32).powf(exponent);
            let wavelen = (1.0f32 / freq) * (2.0 * std::f64::consts::PI) as f32;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = ((1.0f32 / wavelen) * old - low) / (high - low);
                1.0f32 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp_names() {
        assert_eq!(
            gguf_name("model.layers.12.mlp.down_proj.weight").unwrap(),
            "blk.12.ffn_down.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.input_layernorm.weight").unwrap(),
            "blk.0.attn_norm.weight"
        );
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.layers.x.mlp.down_proj.weight").is_none());
        assert!(gguf_name("vision_tower.patch_embed.weight").is_none());
        for hf in [
            "model.embed_tokens.weight",
            "model.layers.7.self_attn.k_proj.weight",
        ] {
            assert_eq!(hf_name(&gguf_name(hf).unwrap()).unwrap(), hf);
        }
        assert!(hf_name("blk.0.attn_qkv.weight").is_none());
    }

    #[test]
    fn permuting_interleaves_the_halves_of_each_head() {
        // 2 heads of 4 rows (two pairs each), 1 column: rows 0..8.
        let values: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let out = permute_rows(&values, 8, 1, 2);
        assert_eq!(out, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }
}
