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
use crate::tensors::TensorSource;

/// A GGUF file's weight type: the element type of its matrices (vectors and norms stay f32).
/// The one name for the choice, from `--type`/`--quant` to llama.cpp's quantizer: this crate
/// writes f32, f16, bf16 and Q8_0 itself ([`GgufType::written_by_converter`]); Q4_K_M is
/// llama.cpp's quantizer's, run on this crate's output (the engine does that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GgufType {
    /// 32-bit floats.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16 (lossless for the bf16 checkpoints Llama 3 ships).
    Bf16,
    /// 8-bit blocks of 32 with an f16 scale: near-lossless, half of f16's size (the models
    /// cache's default).
    #[default]
    Q8_0,
    /// llama.cpp's 4-bit k-quant mix (Q4_K, with Q6_K for the output, the token embedding and
    /// half of `attn_v`/`ffn_down`), as `llama-quantize` makes it.
    Q4KM,
}

impl GgufType {
    /// Every type, in the order the command line lists them.
    pub const ALL: [GgufType; 5] = [Self::F32, Self::F16, Self::Bf16, Self::Q8_0, Self::Q4KM];

    /// The type's name (`convert_hf_to_gguf.py --outtype`'s, `llama-quantize`'s in lower case),
    /// on the command line and in cached file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4KM => "q4_k_m",
        }
    }

    /// Whether [`convert`] writes this type itself (byte for byte as llama.cpp's converter);
    /// the others are made by llama.cpp's quantizer from a file it writes.
    pub fn written_by_converter(self) -> bool {
        self != Self::Q4KM
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`) for a file of this type.
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
            Self::Bf16 => 32,
        }
    }
}

impl std::str::FromStr for GgufType {
    type Err = String;

    /// Either case (`Q4_K_M`, as llama-quantize spells it, or `q4_k_m`).
    fn from_str(name: &str) -> Result<Self, String> {
        let lower = name.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.name() == lower)
            .ok_or_else(|| {
                format!("unknown GGUF type `{name}`: expected f32, f16, bf16, q8_0 or q4_k_m")
            })
    }
}

impl std::fmt::Display for GgufType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
    out_type: GgufType,
    name: Option<&str>,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Report, ConvertError> {
    if !out_type.written_by_converter() {
        return Err(ConvertError::file(
            dir,
            format!("{out_type} is made by llama.cpp's quantizer from this converter's output, not by the converter"),
        ));
    }
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
fn hyperparameters(config: &Config, out_type: GgufType) -> Vec<(String, Value)> {
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
            TensorSource::RopeFreqs(values) => values.clone(),
            TensorSource::Checkpoint {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_converter_writes_every_type_but_q4_k_m_and_says_who_makes_that() {
        let written: Vec<GgufType> = GgufType::ALL
            .into_iter()
            .filter(|t| t.written_by_converter())
            .collect();
        assert_eq!(
            written,
            [GgufType::F32, GgufType::F16, GgufType::Bf16, GgufType::Q8_0]
        );
        let dir = std::env::temp_dir();
        let error = convert(
            &dir,
            &dir.join("never.gguf"),
            GgufType::Q4KM,
            None,
            &mut |_, _, _| {},
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("llama.cpp's quantizer"),
            "{error}"
        );
    }
}
