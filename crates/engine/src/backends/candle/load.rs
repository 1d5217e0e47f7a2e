//! Building a [`Llama`] from a GGUF file or a Hugging Face model directory.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul};
use candle_core::{DType, Device, Tensor};
use guardreasoner_convert::checkpoint::Dtype;
use guardreasoner_convert::config::{check_sizes, Config, RopeScaling, Sizes};

use super::llama::{Block, Embedding, Llama, Llama3RopeScaling, LlamaConfig, RopeLayout, Weight};
use crate::error::EngineError;

fn invalid(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::InvalidModel {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Whether matrices keep the precision they are stored in (fast, compact inference) or become
/// f32 (exact comparisons, training: its gradients and optimizer are f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// Quantized GGUF matrices stay quantized; on a GPU, bf16/f16 safetensors matrices stay
    /// half precision (on the CPU they are f32 either way: candle has no bf16 CPU kernel).
    #[default]
    AsStored,
    /// Everything f32.
    F32,
}

/// A GGUF file read into memory: metadata and the llama model.
pub struct GgufModel {
    /// The model.
    pub llama: Llama,
    /// The file's metadata (for the tokenizer).
    pub metadata: HashMap<String, gguf_file::Value>,
}

/// Loads a Llama-architecture GGUF file.
pub fn load_gguf(
    path: &Path,
    weights: Weights,
    max_positions: usize,
    device: &Device,
) -> Result<GgufModel, EngineError> {
    let mut file = File::open(path).map_err(|e| invalid(path, e.to_string()))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| invalid(path, format!("not a readable GGUF file: {e}")))?;
    let meta = &content.metadata;
    let text = |key: &str| meta.get(key).and_then(|v| v.to_string().ok()).cloned();
    let architecture = text("general.architecture").unwrap_or_default();
    if architecture != "llama" {
        return Err(invalid(
            path,
            format!("architecture `{architecture}` is not supported (only llama)"),
        ));
    }
    let number = |key: &str| -> Result<usize, EngineError> {
        meta.get(key)
            .and_then(|v| {
                v.to_u32()
                    .ok()
                    .map(|n| n as usize)
                    .or_else(|| v.to_u64().ok().map(|n| n as usize))
            })
            .ok_or_else(|| invalid(path, format!("metadata `{key}` is missing")))
    };
    let float = |key: &str| meta.get(key).and_then(|v| v.to_f32().ok());
    // Tensor data beyond the end of the file: a truncated download.
    let file_size = file
        .metadata()
        .map_err(|e| invalid(path, e.to_string()))?
        .len();
    for (name, info) in &content.tensor_infos {
        let bytes =
            info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        if content.tensor_data_offset + info.offset + bytes as u64 > file_size {
            return Err(invalid(
                path,
                format!("tensor `{name}` lies beyond the end of the file: it is truncated"),
            ));
        }
    }

    let hidden = number("llama.embedding_length")?;
    let heads = number("llama.attention.head_count")?;
    let head_dim = number("llama.rope.dimension_count").unwrap_or(hidden / heads.max(1));
    let vocab = meta
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .map(|tokens| tokens.len())
        .ok_or_else(|| invalid(path, "metadata `tokenizer.ggml.tokens` is missing"))?;
    let mut tensor = |name: &str| {
        content
            .tensor(&mut file, name, device)
            .map_err(|e| invalid(path, format!("tensor `{name}`: {e}")))
    };
    let rope_freq_factors = match tensor("rope_freqs.weight") {
        Ok(t) => Some(
            t.dequantize(device)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| invalid(path, e.to_string()))?,
        ),
        Err(_) => None,
    };
    let config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: number("llama.feed_forward_length")?,
        num_layers: number("llama.block_count")?,
        num_heads: heads,
        num_kv_heads: number("llama.attention.head_count_kv").unwrap_or(heads),
        head_dim,
        rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f64,
        rope_theta: float("llama.rope.freq_base").unwrap_or(10_000.0) as f64,
        rope_scaling: None,
        rope_freq_factors,
        rope_layout: RopeLayout::Interleaved,
        max_position_embeddings: number("llama.context_length").unwrap_or(4096),
    };
    // The converter's checks of a Llama's sizes, under this file's names: a count of 0 and the
    // like are refused before anything divides by them.
    check_sizes(&Sizes {
        vocab: ("tokenizer.ggml.tokens", config.vocab_size),
        hidden: ("llama.embedding_length", config.hidden_size),
        intermediate: ("llama.feed_forward_length", config.intermediate_size),
        layers: ("llama.block_count", config.num_layers),
        heads: ("llama.attention.head_count", config.num_heads),
        kv_heads: ("llama.attention.head_count_kv", config.num_kv_heads),
        head_dim: ("llama.rope.dimension_count", config.head_dim),
    })
    .map_err(|message| invalid(path, message))?;

    let candle_error = |e: candle_core::Error| invalid(path, e.to_string());
    let matrix = |t: candle_core::quantized::QTensor| -> Result<Weight, EngineError> {
        let dense = matches!(t.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if weights == Weights::F32 || dense {
            Ok(Weight::Dense(t.dequantize(device).map_err(candle_error)?))
        } else {
            Ok(Weight::Quantized(Arc::new(
                QMatMul::from_qtensor(t).map_err(candle_error)?,
            )))
        }
    };
    let vector = |t: candle_core::quantized::QTensor| t.dequantize(device).map_err(candle_error);

    let embedding_q = tensor("token_embd.weight")?;
    let embedding_table = match weights {
        Weights::F32 => embedding_q.dequantize(device).map_err(candle_error)?,
        Weights::AsStored => embedding_q.dequantize_f16(device).map_err(candle_error)?,
    };
    let lm_head = match tensor("output.weight") {
        Ok(output) => matrix(output)?,
        // Tied embeddings: the output projection is the embedding matrix.
        Err(_) => matrix(tensor("token_embd.weight")?)?,
    };
    let mut blocks = Vec::with_capacity(config.num_layers);
    for layer in 0..config.num_layers {
        let name = |part: &str| format!("blk.{layer}.{part}.weight");
        blocks.push(Block {
            attention_norm: vector(tensor(&name("attn_norm"))?)?,
            wq: matrix(tensor(&name("attn_q"))?)?,
            wk: matrix(tensor(&name("attn_k"))?)?,
            wv: matrix(tensor(&name("attn_v"))?)?,
            wo: matrix(tensor(&name("attn_output"))?)?,
            mlp_norm: vector(tensor(&name("ffn_norm"))?)?,
            w_gate: matrix(tensor(&name("ffn_gate"))?)?,
            w_up: matrix(tensor(&name("ffn_up"))?)?,
            w_down: matrix(tensor(&name("ffn_down"))?)?,
        });
    }
    let norm = vector(tensor("output_norm.weight")?)?;
    let positions = max_positions.min(config.max_position_embeddings);
    let llama = Llama::new(
        config,
        Embedding {
            table: embedding_table,
        },
        blocks,
        norm,
        lm_head,
        positions,
        device,
    )
    .map_err(candle_error)?;
    Ok(GgufModel {
        llama,
        metadata: content.metadata,
    })
}

/// Writes `target`: `source` with every tensor dequantized to f32 and the metadata unchanged (the
/// file type set to all-f32). For exact comparisons with f32 references, and as a starting point
/// for training from a quantized release.
pub fn dequantize_gguf(source: &Path, target: &Path) -> Result<(), EngineError> {
    let mut file = File::open(source).map_err(|e| invalid(source, e.to_string()))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| invalid(source, format!("not a readable GGUF file: {e}")))?;
    let device = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|name| content.tensor_infos[*name].offset);
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content
            .tensor(&mut file, name, &device)
            .and_then(|q| q.dequantize(&device))
            .and_then(|t| candle_core::quantized::QTensor::quantize(&t, GgmlDType::F32))
            .map_err(|e| invalid(source, format!("tensor `{name}`: {e}")))?;
        tensors.push((name.as_str(), tensor));
    }
    // 0 = all f32 (llama.cpp's LLAMA_FTYPE_ALL_F32).
    let all_f32 = gguf_file::Value::U32(0);
    let mut metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(key, _)| key.as_str() != "general.file_type")
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    metadata.push(("general.file_type", &all_f32));
    let mut out =
        std::io::BufWriter::new(File::create(target).map_err(|e| invalid(target, e.to_string()))?);
    let tensor_refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(n, t)| (*n, t)).collect();
    gguf_file::write(&mut out, &metadata, &tensor_refs)
        .map_err(|e| invalid(target, e.to_string()))?;
    std::io::Write::flush(&mut out).map_err(|e| invalid(target, e.to_string()))
}

/// Loads a Hugging Face Llama directory (`config.json`, `*.safetensors`). The shards are
/// memory-mapped and each tensor is read as it is placed, so loading holds the model and one
/// tensor, never a whole shard beside it. On a GPU the matrices keep the checkpoint's bf16 or
/// f16 (the GPU multiplies in it); on the CPU everything is f32, since candle's CPU backend has
/// no bf16 matrix kernel (it would widen the whole matrix at every product). Norms are f32.
pub fn load_safetensors_dir(
    dir: &Path,
    max_positions: usize,
    device: &Device,
    weights: Weights,
) -> Result<Llama, EngineError> {
    // The converter's reader: the same checks of architecture and sizes (a count of 0, heads
    // that do not split into key/value groups) for a model loaded as for a model converted.
    let hf = Config::read(dir)?;
    let rope_scaling = match &hf.rope_scaling {
        RopeScaling::None => None,
        RopeScaling::Llama3(s) => Some(Llama3RopeScaling {
            factor: s.factor,
            low_freq_factor: s.low_freq_factor,
            high_freq_factor: s.high_freq_factor,
            original_max_position_embeddings: s.original_context,
        }),
        RopeScaling::Linear(_) => {
            return Err(invalid(
                &hf.path,
                "field `rope_scaling`: type `linear` is not supported here (only llama3); \
                 llama.cpp runs it: convert the model to GGUF",
            ))
        }
    };
    let config = LlamaConfig {
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_layers: hf.layers,
        num_heads: hf.heads,
        num_kv_heads: hf.kv_heads,
        head_dim: hf.head_dim(),
        rms_norm_eps: hf.rms_norm_eps,
        // transformers' LlamaConfig default.
        rope_theta: hf.rope_theta.unwrap_or(10_000.0),
        rope_scaling,
        rope_freq_factors: None,
        rope_layout: RopeLayout::Half,
        // The positions this backend sets its tables up for where config.json names none.
        max_position_embeddings: hf
            .context
            .map_or(4096, |c| c.min(usize::MAX as u64) as usize),
    };

    let shards = guardreasoner_convert::checkpoint::Checkpoint::open(dir)?;
    let keep_half = device.is_cuda() && weights == Weights::AsStored;
    // One tensor at a time out of the maps, its pages released after: loading holds the model
    // and one tensor, not the checkpoint beside it.
    let take = |name: &str, shape: &[usize], matrix: bool| -> Result<Tensor, EngineError> {
        let entry = shards
            .get(name)
            .ok_or_else(|| invalid(dir, format!("tensor `{name}` is missing")))?;
        if entry.shape != shape {
            return Err(invalid(
                dir,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    entry.shape
                ),
            ));
        }
        let half = match entry.dtype {
            Dtype::BF16 => Some(DType::BF16),
            Dtype::F16 => Some(DType::F16),
            _ => None,
        };
        let tensor = match half {
            Some(dtype) if matrix && keep_half => {
                let bytes = shards.read_bytes(name)?;
                Tensor::from_raw_buffer(&bytes, dtype, shape, device)
            }
            _ => Tensor::from_vec(shards.read_f32(name)?, shape, device),
        };
        tensor.map_err(|e| invalid(dir, format!("tensor `{name}`: {e}")))
    };
    let (h, i, d) = (
        config.hidden_size,
        config.intermediate_size,
        config.head_dim,
    );
    let (q_out, kv_out) = (config.num_heads * d, config.num_kv_heads * d);
    let embedding = take("model.embed_tokens.weight", &[config.vocab_size, h], true)?;
    let mut blocks = Vec::with_capacity(config.num_layers);
    for layer in 0..config.num_layers {
        let prefix = format!("model.layers.{layer}");
        let dense = |part: &str, shape: &[usize]| {
            take(&format!("{prefix}.{part}.weight"), shape, true).map(Weight::Dense)
        };
        blocks.push(Block {
            wq: dense("self_attn.q_proj", &[q_out, h])?,
            wk: dense("self_attn.k_proj", &[kv_out, h])?,
            wv: dense("self_attn.v_proj", &[kv_out, h])?,
            wo: dense("self_attn.o_proj", &[h, q_out])?,
            w_gate: dense("mlp.gate_proj", &[i, h])?,
            w_up: dense("mlp.up_proj", &[i, h])?,
            w_down: dense("mlp.down_proj", &[h, i])?,
            attention_norm: take(&format!("{prefix}.input_layernorm.weight"), &[h], false)?,
            mlp_norm: take(
                &format!("{prefix}.post_attention_layernorm.weight"),
                &[h],
                false,
            )?,
        });
    }
    let norm = take("model.norm.weight", &[h], false)?;
    let lm_head = if hf.tie_word_embeddings {
        Weight::Dense(embedding.clone())
    } else {
        Weight::Dense(take("lm_head.weight", &[config.vocab_size, h], true)?)
    };
    let positions = max_positions.min(config.max_position_embeddings);
    Llama::new(
        config,
        Embedding { table: embedding },
        blocks,
        norm,
        lm_head,
        positions,
        device,
    )
    .map_err(|e| invalid(dir, e.to_string()))
}
