//! The options every command that runs a model shares, and loading the backend they name.

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use guardreasoner_engine::backends::openai::{OpenAiEngine, OpenAiOptions};
use guardreasoner_engine::model::{self, ModelLocation, DEFAULT_MODEL};
use guardreasoner_engine::{DeviceSpec, Generate, SamplingParams};
use guardreasoner_guard::{GuardConfig, UnparseablePolicy};
use guardreasoner_protocol::PromptFormat;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, a model directory, a Hugging Face repo id, or an alias: guardreasoner-1b,
    /// guardreasoner-3b, guardreasoner-8b, smollm2-135m. With --backend openai, the served model's
    /// name.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Which backend runs the model: `auto` picks llama.cpp for GGUF files and candle for model
    /// directories and Hugging Face repos.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Base URL of an OpenAI-compatible server (for --backend openai), e.g. http://localhost:8000.
    #[arg(long, env = "GUARDREASONER_OPENAI_URL")]
    pub openai_url: Option<String>,
    /// API key for the OpenAI-compatible server.
    #[arg(long, env = "GUARDREASONER_OPENAI_KEY", hide_env_values = true)]
    pub openai_key: Option<String>,
    /// Tokens one conversation may use, prompt and reasoning together.
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// Conversations decoded together (and, with openai, requests in flight).
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// CPU threads (default: all cores). For candle, process-wide: it wins over
    /// RAYON_NUM_THREADS and CANDLE_NUM_THREADS.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the model runs: `auto` (a CUDA GPU where the build has CUDA and the machine one,
    /// else the CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto", env = "GUARDREASONER_DEVICE")]
    pub device: DeviceSpec,
    /// With llama.cpp on a GPU: how many layers to offload, the rest on the CPU (default: all;
    /// 0 runs on the CPU). candle puts the whole model on the device.
    #[arg(long)]
    pub gpu_layers: Option<u32>,
    /// llama.cpp's fused flash-attention kernel: `auto` (llama.cpp decides per device), `on`,
    /// `off` (llama-cpp-python's default). candle has no such kernel and ignores it.
    #[arg(long, value_enum, default_value_t = FlashAttentionArg::Auto)]
    pub flash_attention: FlashAttentionArg,
}

/// `--flash-attention`: llama.cpp's attention kernel.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FlashAttentionArg {
    /// llama.cpp decides per device.
    Auto,
    /// The fused kernel.
    On,
    /// Plain attention.
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Backend {
    Auto,
    LlamaCpp,
    Candle,
    Openai,
}

#[derive(clap::Args, Debug, Clone)]
pub struct GenerationArgs {
    /// The most tokens to generate per conversation (the paper: 2048).
    #[arg(long, default_value_t = guardreasoner_engine::generate::DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy, as the paper evaluated.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling threshold (with --temperature above 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How the conversation becomes a prompt: `eval` (what the paper measured), `deploy`,
    /// `llama3-chat` (the training template), or `model-chat` (the eval text inside the model's
    /// own chat template, for instruction-tuned models that are not GuardReasoner's).
    #[arg(long, value_enum, default_value_t = Format::Eval)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Eval,
    Deploy,
    Llama3Chat,
    ModelChat,
}

impl GenerationArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            max_new_tokens: self.max_new_tokens,
            ..SamplingParams::default()
        }
    }

    /// The protocol format (`model-chat` wraps the eval format).
    pub fn format(&self) -> PromptFormat {
        match self.format {
            Format::Eval | Format::ModelChat => PromptFormat::Eval,
            Format::Deploy => PromptFormat::Deploy,
            Format::Llama3Chat => PromptFormat::Llama3Chat,
        }
    }

    pub fn guard_config(&self, policy: UnparseablePolicy) -> GuardConfig {
        GuardConfig {
            format: self.format(),
            policy,
            params: self.params(),
            model_chat_template: matches!(self.format, Format::ModelChat),
        }
    }
}

/// Loads the backend `args` name.
pub fn load_engine(args: &ModelArgs) -> Result<Box<dyn Generate>> {
    if matches!(args.backend, Backend::Openai) {
        let Some(base_url) = args.openai_url.clone() else {
            bail!("--backend openai needs --openai-url (the server's base URL)");
        };
        return Ok(Box::new(OpenAiEngine::new(OpenAiOptions {
            base_url,
            model: args.model.clone(),
            api_key: args.openai_key.clone(),
            max_in_flight: args.batch_size.max(1),
            context_length: args.context,
            timeout: std::time::Duration::from_secs(3600),
        })));
    }
    let location = model::resolve(&args.model)
        .with_context(|| format!("cannot resolve --model {}", args.model))?;
    let location = match location {
        ModelLocation::HuggingFaceRepo(repo) => {
            ModelLocation::HuggingFaceDir(guardreasoner_engine::hub::download(&repo)?)
        }
        other => other,
    };
    match (location, args.backend) {
        (ModelLocation::Gguf(path), Backend::Candle) => load_candle_gguf(&path, args),
        (ModelLocation::Gguf(path), _) => load_gguf(&path, args),
        (ModelLocation::HuggingFaceDir(path), Backend::LlamaCpp) => bail!(
            "{}: llama.cpp runs GGUF files; use --backend candle (or auto) for a safetensors directory",
            path.display()
        ),
        (ModelLocation::HuggingFaceDir(path), _) => load_candle_dir(&path, args),
        (ModelLocation::HuggingFaceRepo(_), _) => unreachable!("downloaded above"),
    }
}

fn candle_options(args: &ModelArgs) -> guardreasoner_engine::backends::candle::CandleOptions {
    guardreasoner_engine::backends::candle::CandleOptions {
        context_per_sequence: args.context,
        device: args.device,
        ..Default::default()
    }
}

fn load_candle_gguf(path: &std::path::Path, args: &ModelArgs) -> Result<Box<dyn Generate>> {
    use guardreasoner_engine::backends::candle::CandleEngine;
    Ok(Box::new(CandleEngine::load_gguf(
        path,
        candle_options(args),
    )?))
}

fn load_candle_dir(path: &std::path::Path, args: &ModelArgs) -> Result<Box<dyn Generate>> {
    use guardreasoner_engine::backends::candle::CandleEngine;
    Ok(Box::new(CandleEngine::load_dir(
        path,
        candle_options(args),
    )?))
}

#[cfg(feature = "llama-cpp")]
fn load_gguf(path: &std::path::Path, args: &ModelArgs) -> Result<Box<dyn Generate>> {
    use guardreasoner_engine::backends::llama_cpp::{
        FlashAttention, LlamaCppEngine, LlamaCppOptions,
    };
    let engine = LlamaCppEngine::load(
        path,
        LlamaCppOptions {
            context_per_sequence: args.context,
            max_batch: args.batch_size.max(1),
            threads: args.threads,
            device: args.device,
            gpu_layers: args.gpu_layers,
            flash_attention: match args.flash_attention {
                FlashAttentionArg::Auto => FlashAttention::Auto,
                FlashAttentionArg::On => FlashAttention::On,
                FlashAttentionArg::Off => FlashAttention::Off,
            },
            ..LlamaCppOptions::default()
        },
    )?;
    Ok(Box::new(engine))
}

#[cfg(not(feature = "llama-cpp"))]
fn load_gguf(path: &std::path::Path, _: &ModelArgs) -> Result<Box<dyn Generate>> {
    bail!(
        "{}: GGUF files run on llama.cpp, which this build leaves out (rebuild with the `llama-cpp` feature)",
        path.display()
    )
}
