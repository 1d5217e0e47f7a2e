//! The candle backend, pure Rust: GGUF files and Hugging Face model directories.
//!
//! Sequences run one after another (llama.cpp is the fast, batched path); the shared prefix's
//! keys and values are computed once and reused by every prompt that starts with it.

pub mod llama;
pub mod load;
pub mod ops;
pub mod tokenizer;

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use guardreasoner_protocol::Prompt;

use self::llama::{KvCache, Llama};
use self::load::{load_gguf, load_safetensors_dir, Weights};
use self::tokenizer::GuardTokenizer;
use crate::chat_template::ChatTemplate;
use crate::device::{cuda_not_built, DeviceSpec, CUDA_BUILT};
use crate::error::EngineError;
use crate::generate::{
    Batch, Generate, Generation, ModelInfo, SamplingParams, StopReason, Timings, TokenEvent,
};
use crate::sampling::Sampler;

const BACKEND: &str = "candle";

fn backend_error(message: impl Into<String>) -> EngineError {
    EngineError::backend(BACKEND, message)
}

/// A failed tensor operation, candle's error kept as the source.
fn tensor_error(error: candle_core::Error) -> EngineError {
    EngineError::backend_caused(BACKEND, "a tensor operation failed", error)
}

/// How to load a model into candle.
///
/// There is no thread count here: candle's CPU threads are process-wide, read from
/// `RAYON_NUM_THREADS` (and `CANDLE_NUM_THREADS`) when it first needs them, all physical cores
/// otherwise. A program sets those before it starts any thread, as the CLI's `main` does for
/// `--threads`; a library setting them could race with threads already reading the environment.
#[derive(Debug, Clone)]
pub struct CandleOptions {
    /// Tokens one sequence may hold, prompt and generation together.
    pub context_per_sequence: usize,
    /// Matrices as stored (quantized GGUF; half-precision safetensors on a GPU), or f32.
    pub weights: Weights,
    /// Where the model runs.
    pub device: DeviceSpec,
}

impl Default for CandleOptions {
    fn default() -> Self {
        Self {
            context_per_sequence: 4096,
            weights: Weights::AsStored,
            device: DeviceSpec::Auto,
        }
    }
}

/// A Llama model running in candle.
pub struct CandleEngine {
    model: Llama,
    chat_template: Option<ChatTemplate>,
    tokenizer: GuardTokenizer,
    info: ModelInfo,
    device: Device,
    /// The shared prefix's tokens and their keys and values.
    prefix: Option<(Vec<u32>, KvCache)>,
}

/// The candle device `spec` names; `auto` is the first CUDA GPU where the build has CUDA and the
/// driver answers, else the CPU.
fn candle_device(spec: DeviceSpec) -> Result<Device, EngineError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto if CUDA_BUILT => Ok(Device::new_cuda(0).unwrap_or(Device::Cpu)),
        DeviceSpec::Auto => Ok(Device::Cpu),
        DeviceSpec::Cuda(_) if !CUDA_BUILT => Err(backend_error(cuda_not_built(spec))),
        DeviceSpec::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| {
            // candle appends a backtrace where RUST_BACKTRACE is set; the first line says it.
            let error = e.to_string();
            let first = error.lines().next().unwrap_or_default();
            backend_error(format!(
                "device {spec}: cannot open it ({first}); is the NVIDIA driver loaded and the GPU there?"
            ))
        }),
    }
}

fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

impl CandleEngine {
    /// Loads a Llama GGUF file and the tokenizer its metadata describes.
    pub fn load_gguf(path: &Path, options: CandleOptions) -> Result<Self, EngineError> {
        if !path.exists() {
            return Err(EngineError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let device = candle_device(options.device)?;
        let loaded = load_gguf(path, options.weights, options.context_per_sequence, &device)?;
        let tokenizer = GuardTokenizer::from_gguf(path, &loaded.metadata)?;
        let mut engine = Self::assemble(loaded.llama, tokenizer, path, device)?;
        engine.chat_template = gguf_chat_template(&loaded.metadata)?;
        engine.warm_up()?;
        Ok(engine)
    }

    /// Loads a Hugging Face model directory: `config.json`, `tokenizer.json`, `*.safetensors`.
    pub fn load_dir(dir: &Path, options: CandleOptions) -> Result<Self, EngineError> {
        let device = candle_device(options.device)?;
        let model =
            load_safetensors_dir(dir, options.context_per_sequence, &device, options.weights)?;
        let tokenizer = GuardTokenizer::from_file(&dir.join("tokenizer.json"), eos_ids(dir))?;
        let mut engine = Self::assemble(model, tokenizer, dir, device)?;
        engine.chat_template = config_chat_template(dir, &engine.tokenizer)?;
        Ok(engine)
    }

    fn assemble(
        model: Llama,
        tokenizer: GuardTokenizer,
        source: &Path,
        device: Device,
    ) -> Result<Self, EngineError> {
        let info = ModelInfo {
            backend: BACKEND,
            source: source.display().to_string(),
            context_length: model.max_positions(),
            max_batch: 1,
            device: device_name(&device),
        };
        Ok(Self {
            model,
            chat_template: None,
            tokenizer,
            info,
            device,
            prefix: None,
        })
    }

    /// Quantized kernels repack their weights on first use; do it now, not in the first check.
    fn warm_up(&self) -> Result<(), EngineError> {
        let ids = self.tokenizer.encode_text("warm up")?;
        self.forward_last(&ids, &mut KvCache::default()).map(|_| ())
    }

    /// The model.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GuardTokenizer {
        &self.tokenizer
    }

    /// Logits `[positions][vocab]` of a full forward pass over `ids` (for numerical checks).
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        let tokens = Tensor::new(ids, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(tensor_error)?;
        let logits = self
            .model
            .forward(&tokens, &mut KvCache::default())
            .map_err(tensor_error)?;
        logits
            .squeeze(0)
            .and_then(|l| l.to_vec2::<f32>())
            .map_err(tensor_error)
    }

    fn forward_last(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, EngineError> {
        let tokens = Tensor::new(ids, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(tensor_error)?;
        let logits = self
            .model
            .forward_last(&tokens, cache)
            .map_err(tensor_error)?;
        logits
            .squeeze(0)
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(tensor_error)
    }

    /// A cache holding the longest reusable part of the shared prefix for `ids`.
    fn cache_for(
        &mut self,
        ids: &[u32],
        shared_prefix: Option<&Prompt>,
    ) -> Result<(KvCache, usize), EngineError> {
        if let Some(prefix) = shared_prefix {
            let wanted = self.tokenizer.encode(prefix)?;
            let stale = self
                .prefix
                .as_ref()
                .is_none_or(|(tokens, _)| *tokens != wanted);
            if stale && !wanted.is_empty() {
                let mut cache = KvCache::default();
                self.forward_last(&wanted, &mut cache)?;
                self.prefix = Some((wanted, cache));
            }
        }
        if let Some((tokens, cache)) = &self.prefix {
            // Reuse only a whole cached prefix that the prompt really starts with (keeping at least
            // one prompt token to evaluate).
            if ids.len() > tokens.len() && ids.starts_with(tokens) {
                return Ok((cache.clone(), tokens.len()));
            }
        }
        Ok((KvCache::default(), 0))
    }

    /// Generates from a prompt's ids, already checked to fit the context.
    fn generate_one(
        &mut self,
        ids: &[u32],
        params: &SamplingParams,
        index: usize,
        shared_prefix: Option<&Prompt>,
        on_token: &mut dyn FnMut(TokenEvent<'_>),
    ) -> Result<Generation, EngineError> {
        let started = Instant::now();
        let context = self.info.context_length;
        let (mut cache, cached) = self.cache_for(ids, shared_prefix)?;
        let mut logits = self.forward_last(&ids[cached..], &mut cache)?;
        let mut sampler = Sampler::new(params, index);
        let mut token_ids = Vec::new();
        let mut text = self.tokenizer.text_stream();
        let mut logprobs = params.logprobs.then(Vec::new);
        let mut first_at = None;
        let stop = loop {
            let token = sampler.sample(&logits);
            first_at.get_or_insert_with(Instant::now);
            if self.tokenizer.eos.contains(&token) && !params.ignore_eos {
                break StopReason::EndOfText;
            }
            if let Some(logprobs) = &mut logprobs {
                logprobs.push(crate::sampling::log_probability(&logits, token));
            }
            token_ids.push(token);
            let piece = text.push(token)?;
            if !piece.is_empty() {
                on_token(TokenEvent {
                    sequence: index,
                    text: &piece,
                });
            }
            if token_ids.len() >= params.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if ids.len() + token_ids.len() >= context {
                break StopReason::ContextFull;
            }
            logits = self.forward_last(&[token], &mut cache)?;
        };
        let rest = text.finish();
        if !rest.is_empty() {
            on_token(TokenEvent {
                sequence: index,
                text: &rest,
            });
        }
        let finished = Instant::now();
        let first = first_at.unwrap_or(finished);
        Ok(Generation {
            text: text.into_text(),
            prompt_tokens: ids.len(),
            prompt_token_ids: ids.to_vec(),
            cached_prompt_tokens: cached,
            generated_tokens: token_ids.len(),
            token_ids,
            logprobs,
            stop,
            timings: Timings {
                prefill: first.duration_since(started),
                decode: finished.duration_since(first),
                ..Timings::default()
            },
        })
    }
}

/// The chat template a GGUF file carries (`tokenizer.chat_template`), with its BOS and EOS texts.
fn gguf_chat_template(
    metadata: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
) -> Result<Option<ChatTemplate>, EngineError> {
    let Some(source) = metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
    else {
        return Ok(None);
    };
    let tokens = metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok());
    let token = |key: &str| -> String {
        let id = metadata.get(key).and_then(|v| v.to_u32().ok());
        id.and_then(|id| tokens.and_then(|t| t.get(id as usize)))
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default()
    };
    let adds_bos = metadata
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    ChatTemplate::new(
        source,
        &token("tokenizer.ggml.bos_token_id"),
        &token("tokenizer.ggml.eos_token_id"),
        adds_bos,
    )
    .map(Some)
}

/// The chat template of a Hugging Face directory: `tokenizer_config.json`'s `chat_template` (a
/// string or a list of named templates, of which `default` is used), else `chat_template.jinja`
/// (where newer transformers versions save it). This is the precedence of llama.cpp's converter,
/// so both backends render the same template for the same directory.
fn config_chat_template(
    dir: &Path,
    tokenizer: &GuardTokenizer,
) -> Result<Option<ChatTemplate>, EngineError> {
    let Ok(text) = std::fs::read_to_string(dir.join("tokenizer_config.json")) else {
        return Ok(None);
    };
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::InvalidModel {
            path: dir.join("tokenizer_config.json"),
            message: format!("line {}: {e}", e.line()),
        })?;
    let source = match &config["chat_template"] {
        serde_json::Value::String(source) => source.clone(),
        serde_json::Value::Array(named) => match named.iter().find(|t| t["name"] == "default") {
            Some(t) => t["template"].as_str().unwrap_or_default().to_string(),
            None => return Ok(None),
        },
        serde_json::Value::Null => match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(source) => source,
            Err(_) => return Ok(None),
        },
        _ => return Ok(None),
    };
    let token = |key: &str| match &config[key] {
        serde_json::Value::String(text) => text.clone(),
        other => other["content"].as_str().unwrap_or_default().to_string(),
    };
    let bos = token("bos_token");
    ChatTemplate::new(
        &source,
        &bos,
        &token("eos_token"),
        tokenizer.adds_leading(&bos),
    )
    .map(Some)
}

/// End-of-generation ids from `config.json` / `generation_config.json` (`eos_token_id`, a number
/// or a list).
fn eos_ids(dir: &Path) -> Vec<u32> {
    let mut ids = Vec::new();
    for file in ["generation_config.json", "config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        match &value["eos_token_id"] {
            serde_json::Value::Number(n) => ids.extend(n.as_u64().map(|n| n as u32)),
            serde_json::Value::Array(list) => {
                ids.extend(list.iter().filter_map(|n| n.as_u64()).map(|n| n as u32))
            }
            _ => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl Generate for CandleEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(
        &mut self,
        batch: &Batch,
        on_token: &mut dyn FnMut(TokenEvent<'_>),
    ) -> Result<Vec<Generation>, EngineError> {
        batch.params.validate()?;
        // Tokenize and check every prompt before running any.
        let mut prompt_ids = Vec::with_capacity(batch.prompts.len());
        for (index, prompt) in batch.prompts.iter().enumerate() {
            let ids = self.tokenizer.encode(prompt)?;
            crate::schedule::fits(index, ids.len(), self.info.context_length)?;
            prompt_ids.push(ids);
        }
        prompt_ids
            .iter()
            .enumerate()
            .map(|(index, ids)| {
                self.generate_one(
                    ids,
                    &batch.params,
                    index,
                    batch.shared_prefix.as_ref(),
                    on_token,
                )
            })
            .collect()
    }

    fn count_tokens(&mut self, prompt: &Prompt) -> Result<Option<usize>, EngineError> {
        Ok(Some(self.tokenizer.encode(prompt)?.len()))
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }
}
