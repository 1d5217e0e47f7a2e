//! A trained model as a GGUF file for llama.cpp: f16 written here (norms f32, as llama.cpp's
//! converter writes them), then Q8_0 or Q4_K_M by llama.cpp's own quantizer (the CLI calls it).
//!
//! The metadata (tokenizer, chat template, architecture) is the GGUF file the training started
//! from: a model trained from a GGUF keeps its vocabulary and shape, so only the tensors change.
//! A model that began as Hugging Face safetensors needs its tokenizer mapped to GGUF's keys: the
//! CLI sends it through the converter (`guardreasoner_convert`) instead.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use guardreasoner_engine::backends::candle::llama::{Llama, LlamaConfig, RopeLayout};

use crate::error::TrainError;
use crate::model::named_weights;

/// The file a trained model directory names as the GGUF it started from.
pub const ORIGIN_FILE: &str = "guardreasoner_origin.json";

/// The GGUF a model directory's training started from, when it records one.
pub fn origin_of(dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dir.join(ORIGIN_FILE)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["gguf"].as_str().map(PathBuf::from)
}

/// GGUF's name for one of our weights (through its Hugging Face name: the converter's table).
pub fn gguf_name(name: &str) -> Option<String> {
    crate::model::hf_name(name).and_then(|hf| guardreasoner_convert::tensors::gguf_name(&hf))
}

fn gguf_layout(config: &LlamaConfig, name: &str, tensor: Tensor) -> candle_core::Result<Tensor> {
    if config.rope_layout == RopeLayout::Interleaved {
        return Ok(tensor);
    }
    match name.rsplit('.').next() {
        Some("wq") => crate::model::permute_rows(&tensor, config.num_heads),
        Some("wk") => crate::model::permute_rows(&tensor, config.num_kv_heads),
        _ => Ok(tensor),
    }
}

/// Writes `model` as an f16 GGUF at `out` with the metadata of `source` (the GGUF its training
/// started from), through a temporary file renamed into place.
pub fn write_f16(model: &Llama, source: &Path, out: &Path) -> Result<(), TrainError> {
    let mut file = File::open(source).map_err(|e| TrainError::io(source, e))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| TrainError::file(source, format!("not a readable GGUF file: {e}")))?;
    let blocks = content
        .metadata
        .get("llama.block_count")
        .and_then(|v| v.to_u32().ok());
    if blocks != Some(model.config.num_layers as u32) {
        return Err(TrainError::file(
            source,
            format!(
                "its llama.block_count ({blocks:?}) is not the model's {} blocks: not the file \
                 this model was trained from",
                model.config.num_layers
            ),
        ));
    }
    let mut metadata: HashMap<String, Value> = content.metadata.clone();
    metadata.insert("general.file_type".into(), Value::U32(1)); // mostly f16
    let (weights, _) = named_weights(model).map_err(TrainError::tensor("merging adapters"))?;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, tensor) in weights {
        let gguf = gguf_name(&name)
            .ok_or_else(|| TrainError::Invalid(format!("weight `{name}` has no GGUF name")))?;
        let tensor = gguf_layout(&model.config, &name, tensor)
            .and_then(|t| t.to_device(&Device::Cpu))
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(TrainError::tensor(format!("preparing {gguf}")))?;
        let dtype = if tensor.rank() == 1 {
            GgmlDType::F32
        } else {
            GgmlDType::F16
        };
        let q = QTensor::quantize(&tensor, dtype)
            .map_err(TrainError::tensor(format!("converting {gguf}")))?;
        tensors.push((gguf, q));
    }
    // Precomputed Llama 3 RoPE factors are not trained: they come from the source as they are.
    if let Some(info) = content.tensor_infos.get("rope_freqs.weight") {
        let q = info
            .read(&mut file, content.tensor_data_offset, &Device::Cpu)
            .map_err(TrainError::tensor("reading rope_freqs.weight"))?;
        tensors.push(("rope_freqs.weight".into(), q));
    }
    let partial = out.with_extension("gguf.partial");
    let mut writer =
        BufWriter::new(File::create(&partial).map_err(|e| TrainError::io(&partial, e))?);
    let mut keys: Vec<&String> = metadata.keys().collect();
    keys.sort();
    let metadata_refs: Vec<(&str, &Value)> =
        keys.iter().map(|k| (k.as_str(), &metadata[*k])).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    gguf_file::write(&mut writer, &metadata_refs, &tensor_refs)
        .map_err(TrainError::tensor(format!("writing {}", partial.display())))?;
    drop(writer);
    std::fs::rename(&partial, out).map_err(|e| TrainError::io(out, e))
}
