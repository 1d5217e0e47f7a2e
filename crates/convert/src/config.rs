//! The model's `config.json`: the hyperparameters of a Hugging Face Llama, read for the
//! converter and for the candle backend's loader alike (one reader, one set of checks).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ConvertError;

/// The architectures converted here (Llama 3.x and SmolLM-style models are both these).
pub const SUPPORTED_ARCHITECTURES: [&str; 1] = ["LlamaForCausalLM"];

/// Llama 3's RoPE scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3Rope {
    /// `factor`.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_context: f64,
}

/// Linear RoPE scaling (`rope_type == "linear"`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// None.
    None,
    /// Positions divided by `factor`.
    Linear(f64),
    /// Llama 3's per-frequency factors (`rope_freqs.weight`).
    Llama3(Llama3Rope),
}

/// What the converter needs of `config.json`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (errors name it).
    pub path: PathBuf,
    /// The whole file, for keys read by name.
    pub raw: serde_json::Value,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads` (the heads where absent).
    pub kv_heads: usize,
    /// `head_dim` where given.
    pub head_dim: Option<usize>,
    /// `max_position_embeddings`.
    pub context: Option<u64>,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
    /// `rope_theta` where given.
    pub rope_theta: Option<f64>,
    /// `rope_scaling`.
    pub rope_scaling: RopeScaling,
    /// `tie_word_embeddings`.
    pub tie_word_embeddings: bool,
}

#[derive(Deserialize)]
struct Raw {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<u64>,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

/// transformers' `LlamaConfig` default.
fn default_rms_norm_eps() -> f64 {
    1e-6
}

impl Config {
    /// Reads `dir/config.json` and checks it is a Llama (`architectures` naming
    /// `LlamaForCausalLM`, or, without `architectures`, `model_type` `llama`) of sizes a Llama can
    /// have.
    pub fn read(dir: &Path) -> Result<Self, ConvertError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(ConvertError::io(&path))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ConvertError::file(&path, format!("not valid JSON: {e}")))?;
        let architecture = value["architectures"]
            .get(0)
            .and_then(|a| a.as_str())
            .unwrap_or("")
            .to_string();
        let model_type = value["model_type"].as_str().unwrap_or("");
        let is_llama = SUPPORTED_ARCHITECTURES.contains(&architecture.as_str())
            || (architecture.is_empty() && model_type == "llama");
        if !is_llama {
            let named = if architecture.is_empty() {
                format!("no `architectures` (model_type `{model_type}`)")
            } else {
                format!("architecture `{architecture}`")
            };
            return Err(ConvertError::file(
                &path,
                format!(
                    "{named} is not supported: Llama models are ({}: Llama 3.x, SmolLM); \
                     llama.cpp's convert_hf_to_gguf.py converts many more",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            ));
        }
        // From the text, not the value, so that an error names its line.
        let raw: Raw = serde_json::from_str(&text)
            .map_err(|e| ConvertError::file(&path, format!("a Llama config needs {e}")))?;
        let rope_scaling = rope_scaling(&path, raw.rope_scaling.as_ref())?;
        let config = Self {
            path: path.clone(),
            raw: value,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            layers: raw.num_hidden_layers,
            heads: raw.num_attention_heads,
            kv_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw.head_dim,
            context: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings,
        };
        config.check()?;
        Ok(config)
    }

    /// The sizes' checks ([`check_sizes`]) under config.json's names (a config.json from
    /// elsewhere is not trusted).
    fn check(&self) -> Result<(), ConvertError> {
        check_sizes(&Sizes {
            vocab: ("vocab_size", self.vocab_size),
            hidden: ("hidden_size", self.hidden_size),
            intermediate: ("intermediate_size", self.intermediate_size),
            layers: ("num_hidden_layers", self.layers),
            heads: ("num_attention_heads", self.heads),
            kv_heads: ("num_key_value_heads", self.kv_heads),
            head_dim: ("head_dim", self.head_dim()),
        })
        .map_err(|message| ConvertError::file(&self.path, message))
    }

    /// The size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.heads.max(1))
    }
}

/// A Llama's sizes, each with the name its file gives it (errors name the field), for
/// [`check_sizes`].
pub struct Sizes<'a> {
    /// The vocabulary.
    pub vocab: (&'a str, usize),
    /// The residual stream's width.
    pub hidden: (&'a str, usize),
    /// The MLP's width.
    pub intermediate: (&'a str, usize),
    /// The blocks.
    pub layers: (&'a str, usize),
    /// The query heads.
    pub heads: (&'a str, usize),
    /// The key/value heads.
    pub kv_heads: (&'a str, usize),
    /// The width of one head.
    pub head_dim: (&'a str, usize),
}

/// Sizes a Llama can have, whatever file they come from: every count above zero and within
/// GGUF's u32, heads that split evenly into key/value groups, an even head size, and matrices
/// whose sizes fit in memory arithmetic. The message names the first size that fails.
pub fn check_sizes(s: &Sizes) -> Result<(), String> {
    let counts = [
        s.vocab,
        s.hidden,
        s.intermediate,
        s.layers,
        s.heads,
        s.kv_heads,
        s.head_dim,
    ];
    for (field, value) in counts {
        if value == 0 || value > 1 << 24 {
            return Err(format!(
                "field `{field}` is {value}: a Llama's is between 1 and 16,777,216"
            ));
        }
    }
    let (heads, kv_heads, head_dim) = (s.heads.1, s.kv_heads.1, s.head_dim.1);
    if !heads.is_multiple_of(kv_heads) || !head_dim.is_multiple_of(2) {
        return Err(format!(
            "{heads} attention heads, {kv_heads} key/value heads and head size {head_dim}: the \
             heads must split evenly into key/value groups and the head size be even"
        ));
    }
    let hidden = s.hidden.1;
    let largest = [
        s.vocab.1.checked_mul(hidden),
        heads
            .checked_mul(head_dim)
            .and_then(|q| q.checked_mul(hidden)),
        s.intermediate.1.checked_mul(hidden),
    ];
    if largest.iter().any(|n| n.is_none_or(|n| n > 1 << 40)) {
        return Err("the matrices these sizes make are too large for a Llama".into());
    }
    Ok(())
}

fn rope_scaling(
    path: &Path,
    value: Option<&serde_json::Value>,
) -> Result<RopeScaling, ConvertError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let number =
        |key: &str, default: f64| value.get(key).and_then(|v| v.as_f64()).unwrap_or(default);
    match kind.as_str() {
        "llama3" => Ok(RopeScaling::Llama3(Llama3Rope {
            factor: number("factor", 8.0),
            low_freq_factor: number("low_freq_factor", 1.0),
            high_freq_factor: number("high_freq_factor", 4.0),
            original_context: number("original_max_position_embeddings", 8192.0),
        })),
        "linear" => Ok(RopeScaling::Linear(number("factor", 1.0))),
        "default" | "" => Ok(RopeScaling::None),
        other => Err(ConvertError::file(
            path,
            format!("rope_scaling type `{other}` is not converted here (llama3 and linear are)"),
        )),
    }
}
