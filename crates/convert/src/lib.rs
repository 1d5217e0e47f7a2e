//! Hugging Face Llama checkpoints to GGUF files for llama.cpp, in Rust.
//!
//! A model directory (`config.json`, `*.safetensors`, `tokenizer.json`, and where present
//! `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`) becomes one GGUF
//! file with the metadata keys, tensor names, tensor order and bytes that llama.cpp's own
//! `convert_hf_to_gguf.py` writes for it at f32, f16, bf16 or Q8_0 (tests compare the two on
//! tiny Llama 3 and SmolLM2 models; a model card's descriptive keys are not carried). Other quantizations are llama.cpp's quantizer's job, run on
//! this crate's output (the engine does that).
//!
//! - [`config`]: the hyperparameters, and the architecture check.
//! - [`checkpoint`]: the safetensors shards, memory-mapped; one tensor read at a time.
//! - [`tensors`]: names, Q/K row order, each tensor's type, Llama 3's `rope_freqs`.
//! - [`tokenizer`]: vocabulary, token types, merges, pre-tokenizer, special tokens, template.
//! - [`metadata`]: `general.*` (name, size label, sampling defaults).
//! - [`encode`]: f32 values into f16, bf16 and Q8_0 bytes.
//! - [`gguf`]: the file, written as a stream.
//!
//! The output is written to a temporary file beside it and renamed into place only when whole,
//! so an interrupted conversion never leaves a file that looks finished.

// Every public item says what it is for; keep it so.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod encode;
pub mod error;
pub mod gguf;
pub mod metadata;
pub mod tensors;
pub mod tokenizer;

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

pub use error::ConvertError;

use crate::checkpoint::Checkpoint;
use crate::config::{Config, RopeScaling};
use crate::gguf::{TensorType, Value, Writer};
use crate::tensors::Source;

/// The element type of the output's matrices (vectors and norms stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    /// 32-bit floats.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16 (lossless for the bf16 checkpoints Llama 3 ships).
    Bf16,
    /// 8-bit blocks of 32 with an f16 scale: near-lossless, half of f16's size.
    Q8_0,
}

impl OutType {
    /// The type's name (`convert_hf_to_gguf.py --outtype`'s).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// llama.cpp's `general.file_type` for a file of this type.
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Bf16 => 32,
        }
    }
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Report {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Tensors written.
    pub tensors: usize,
    /// Parameters (elements of every tensor).
    pub parameters: u64,
    /// llama.cpp's name for the tokenizer's pre-tokenizer.
    pub pre_tokenizer: String,
}

/// Converts the model directory `dir` into the GGUF file `out`. `name` stands in for the
/// directory's name where that is not the model's (a hub snapshot's directory is a commit
/// hash). `progress` hears of each tensor as it starts: (index, count, GGUF name).
pub fn convert(
    dir: &Path,
    out: &Path,
    out_type: OutType,
    name: Option<&str>,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Report, ConvertError> {
    let config = Config::read(dir)?;
    let checkpoint = Checkpoint::open(dir)?;
    let planned = tensors::plan(&config, &checkpoint, out_type)?;
    let parameters: u64 = planned.iter().map(|p| p.info.elements()).sum();
    let tokenizer = tokenizer::metadata(dir, config.vocab_size)?;
    let pre_tokenizer = tokenizer
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.pre")
        .and_then(|(_, v)| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default();

    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.type".into(), Value::String("model".into())),
    ];
    meta.extend(metadata::general(dir, name, &config.raw, parameters));
    meta.extend(hyperparameters(&config, out_type));
    meta.push(("general.quantization_version".into(), Value::U32(2)));
    meta.extend(tokenizer);

    let partial = partial_path(out);
    let result = write(&partial, &meta, &planned, &checkpoint, progress);
    if let Err(error) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, out).map_err(ConvertError::io(out))?;
    let bytes = std::fs::metadata(out).map_err(ConvertError::io(out))?.len();
    Ok(Report {
        path: out.to_path_buf(),
        bytes,
        tensors: planned.len(),
        parameters,
        pre_tokenizer,
    })
}

/// A temporary name beside `out`, unique to this process.
fn partial_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".into());
    out.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// The `llama.*` keys and `general.file_type`, in llama.cpp's order.
fn hyperparameters(config: &Config, out_type: OutType) -> Vec<(String, Value)> {
    let u32_of = |v: usize| Value::U32(v as u32);
    let mut out = vec![
        ("llama.block_count".to_string(), u32_of(config.layers)),
        // transformers' LlamaConfig default where config.json has none.
        (
            "llama.context_length".into(),
            Value::U32(config.context.unwrap_or(2048) as u32),
        ),
        ("llama.embedding_length".into(), u32_of(config.hidden_size)),
        (
            "llama.feed_forward_length".into(),
            u32_of(config.intermediate_size),
        ),
        ("llama.attention.head_count".into(), u32_of(config.heads)),
        (
            "llama.attention.head_count_kv".into(),
            u32_of(config.kv_heads),
        ),
    ];
    if let RopeScaling::Linear(factor) = config.rope_scaling {
        out.push((
            "llama.rope.scaling.type".into(),
            Value::String("linear".into()),
        ));
        out.push((
            "llama.rope.scaling.factor".into(),
            Value::F32(factor as f32),
        ));
    }
    out.extend([
        (
            "llama.rope.freq_base".to_string(),
            Value::F32(config.rope_theta.unwrap_or(10_000.0) as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(config.rms_norm_eps as f32),
        ),
        (
            "llama.attention.key_length".into(),
            u32_of(config.head_dim()),
        ),
        (
            "llama.attention.value_length".into(),
            u32_of(config.head_dim()),
        ),
        ("general.file_type".into(), Value::U32(out_type.file_type())),
        ("llama.vocab_size".into(), u32_of(config.vocab_size)),
        (
            "llama.rope.dimension_count".into(),
            u32_of(config.head_dim()),
        ),
    ]);
    out
}

fn write(
    partial: &Path,
    meta: &[(String, Value)],
    planned: &[tensors::Planned],
    checkpoint: &Checkpoint,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<(), ConvertError> {
    let file = File::create(partial).map_err(ConvertError::io(partial))?;
    let infos = planned.iter().map(|p| p.info.clone()).collect();
    let mut writer = Writer::new(BufWriter::with_capacity(1 << 20, file), meta, infos)
        .map_err(ConvertError::io(partial))?;
    for (index, tensor) in planned.iter().enumerate() {
        progress(index, planned.len(), &tensor.info.name);
        let values = match &tensor.source {
            Source::RopeFreqs(values) => values.clone(),
            Source::Checkpoint {
                name,
                permute_heads,
            } => {
                let values = checkpoint.read_f32(name)?;
                match permute_heads {
                    Some(heads) => {
                        let rows = tensor.info.shape[0] as usize;
                        let columns = values.len() / rows.max(1);
                        tensors::permute_rows(&values, rows, columns, *heads)
                    }
                    None => values,
                }
            }
        };
        let bytes = match tensor.info.kind {
            TensorType::F32 => encode::f32_bytes(&values),
            TensorType::F16 => encode::f16_bytes(&values),
            TensorType::Bf16 => encode::bf16_bytes(&values),
            TensorType::Q8_0 => encode::q8_0_bytes(&values),
        };
        drop(values);
        writer.tensor(&bytes).map_err(ConvertError::io(partial))?;
    }
    let (buffered, _) = writer.finish().map_err(ConvertError::io(partial))?;
    let file = buffered
        .into_inner()
        .map_err(|e| ConvertError::io(partial)(e.into_error()))?;
    file.sync_all().map_err(ConvertError::io(partial))
}
