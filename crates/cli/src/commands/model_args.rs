//! The options every command that runs a model shares, and loading the backend they name.

use anyhow::{Context, Result};
use guardreasoner_engine::load::{self, LoadOptions};
use guardreasoner_engine::model::DEFAULT_MODEL;
use guardreasoner_engine::{DeviceSpec, Generate, SamplingParams};
use guardreasoner_guard::{GuardConfig, InputFormat, UnparseablePolicy};

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, a model directory, a Hugging Face repo id, or an alias: guardreasoner-1b,
    /// guardreasoner-3b, guardreasoner-8b, smollm2-135m. With --backend openai, the served model's
    /// name.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Which backend runs the model: `auto` (llama.cpp for GGUF files and Hugging Face repos,
    /// which are converted to GGUF once into the models cache; candle for local model
    /// directories), `llama-cpp` (converts a local directory too), `candle` or `openai`.
    #[arg(long, default_value = "auto")]
    pub backend: load::Backend,
    /// The GGUF type a Hugging Face model is converted to for llama.cpp: `q8_0`
    /// (near-lossless), `q4_k_m`, `bf16`, `f16` or `f32`.
    #[arg(long, default_value = "q8_0")]
    pub quant: guardreasoner_engine::convert::GgufType,
    /// Base URL of an OpenAI-compatible server (for --backend openai), e.g. http://localhost:8000.
    #[arg(long, env = "GUARDREASONER_OPENAI_URL")]
    pub openai_url: Option<String>,
    /// API key for the OpenAI-compatible server.
    #[arg(long, env = "GUARDREASONER_OPENAI_KEY", hide_env_values = true)]
    pub openai_key: Option<String>,
    /// The served model's tokenizer (tokenizer.json, a directory holding one, or a GGUF file),
    /// for --backend openai: prompts are then sent as token ids made here, so that the server's
    /// tokenizer cannot parse a conversation's control strings as control tokens, and are
    /// measured against --context before they are sent.
    #[arg(long, env = "GUARDREASONER_OPENAI_TOKENIZER")]
    pub openai_tokenizer: Option<std::path::PathBuf>,
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
    #[arg(long, default_value = "auto")]
    pub flash_attention: load::FlashAttention,
    /// llama.cpp: tokens per decode step, a token of every decoding conversation first, then
    /// prompt tokens up to the budget. More lets prompts finish in fewer steps while the
    /// conversations already decoding wait longer for each token (llama-server's default:
    /// 2048).
    #[arg(long, default_value_t = load::DEFAULT_STEP_TOKENS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub step_tokens: usize,
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
    #[arg(long, default_value = "eval")]
    pub format: InputFormat,
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

    pub fn guard_config(&self, policy: UnparseablePolicy) -> GuardConfig {
        GuardConfig {
            format: self.format,
            policy,
            params: self.params(),
        }
    }
}

impl ModelArgs {
    /// The library's load options for these flags.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            model: self.model.clone(),
            backend: self.backend,
            openai_url: self.openai_url.clone(),
            openai_key: self.openai_key.clone(),
            openai_tokenizer: self.openai_tokenizer.clone(),
            context: self.context,
            batch_size: self.batch_size,
            threads: self.threads,
            device: self.device,
            gpu_layers: self.gpu_layers,
            flash_attention: self.flash_attention,
            step_tokens: self.step_tokens,
            quant: self.quant,
            ..LoadOptions::default()
        }
    }
}

/// What the flags must give for `options` to load, said in the flags' words.
pub fn check_load_options(options: &LoadOptions) -> Result<()> {
    if options.backend == load::Backend::Openai && options.openai_url.is_none() {
        anyhow::bail!(
            "--backend openai needs the server's URL: --openai-url or GUARDREASONER_OPENAI_URL"
        );
    }
    Ok(())
}

/// Loads the backend `args` name.
pub fn load_engine(args: &ModelArgs) -> Result<Box<dyn Generate>> {
    let options = args.load_options();
    check_load_options(&options)?;
    let engine =
        load::generator(&options).with_context(|| format!("cannot load --model {}", args.model))?;
    for note in load::ignored(&options, engine.info()) {
        eprintln!("note: {note}");
    }
    Ok(engine)
}
