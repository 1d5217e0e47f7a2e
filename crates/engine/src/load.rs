//! Loading what `--model` names into a backend: one loader for the command line and the server.
//!
//! [`generator`] gives a [`Generate`] for whole batches; [`scheduler`] gives a [`Scheduler`] a
//! server drives (llama.cpp's continuous batching, or any other backend one sequence at a time).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::backends::openai::{OpenAiEngine, OpenAiOptions};
use crate::convert::GgufType;
use crate::device::DeviceSpec;
use crate::error::EngineError;
use crate::generate::Generate;
use crate::model::{self, ModelLocation};
use crate::schedule::{Scheduler, Serial, DEFAULT_QUEUE_CAPACITY};

guardreasoner_protocol::choice! {
    /// Which backend runs a model.
    #[derive(Default)]
    pub enum Backend("backend") {
        /// llama.cpp for GGUF files and Hugging Face repos (converted to GGUF once, into the
        /// models cache), candle for local model directories.
        #[default]
        Auto = "auto",
        /// llama.cpp (GGUF files).
        LlamaCpp = "llama-cpp",
        /// candle (GGUF files and safetensors directories).
        Candle = "candle",
        /// A remote OpenAI-compatible `/v1/completions` server.
        Openai = "openai",
    }
}

guardreasoner_protocol::choice! {
    /// llama.cpp's flash-attention policy. The fused kernel sums in another order than the plain
    /// one, so greedy text on the two can part where two tokens are nearly tied; llama-cpp-python
    /// turns it off unless asked, llama.cpp itself picks per device. candle has no such kernel.
    #[derive(Default)]
    pub enum FlashAttention("flash-attention policy") {
        /// llama.cpp decides (on where the layers run).
        #[default]
        Auto = "auto",
        /// The fused kernel.
        On = "on",
        /// Plain attention: softmax of the scores, then the product with the values.
        Off = "off",
    }
}

/// Tokens per decode call when the caller gives no budget: llama.cpp's own physical batch.
pub const DEFAULT_STEP_TOKENS: usize = 512;

/// Everything that decides how a model is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A GGUF file, a model directory, a Hugging Face repo id, or an alias; with the openai
    /// backend, the served model's name.
    pub model: String,
    /// Which backend runs it.
    pub backend: Backend,
    /// The OpenAI-compatible server's base URL (openai backend).
    pub openai_url: Option<String>,
    /// Its API key.
    pub openai_key: Option<String>,
    /// The served model's tokenizer (a `tokenizer.json`, a directory holding one, or a GGUF
    /// file): with it the openai backend sends prompts as token ids, so that the server's
    /// tokenizer cannot turn a conversation's control strings into control tokens.
    pub openai_tokenizer: Option<std::path::PathBuf>,
    /// Tokens one sequence may hold, prompt and generation together.
    pub context: usize,
    /// Sequences decoded together (requests in flight, for openai).
    pub batch_size: usize,
    /// CPU threads for llama.cpp (all cores when `None`).
    pub threads: Option<usize>,
    /// Where the model runs.
    pub device: DeviceSpec,
    /// llama.cpp on a GPU: layers to offload (all when `None`).
    pub gpu_layers: Option<u32>,
    /// llama.cpp's fused flash-attention kernel.
    pub flash_attention: FlashAttention,
    /// The most requests waiting for a slot (a scheduler refuses more at once).
    pub queue_capacity: usize,
    /// llama.cpp: tokens per decode call, decoding sequences' tokens first and prompt tokens
    /// up to the budget (more: prompts finish sooner, decoding sequences wait longer per token).
    pub step_tokens: usize,
    /// The GGUF type a safetensors model is converted to for llama.cpp.
    pub quant: GgufType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            model: model::DEFAULT_MODEL.to_string(),
            backend: Backend::Auto,
            openai_url: None,
            openai_key: None,
            openai_tokenizer: None,
            context: 4096,
            batch_size: 4,
            threads: None,
            device: DeviceSpec::Auto,
            gpu_layers: None,
            flash_attention: FlashAttention::Auto,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            step_tokens: DEFAULT_STEP_TOKENS,
            quant: GgufType::default(),
        }
    }
}

/// Where the model is and which backend takes it, downloading a repo id's files first.
enum Plan {
    Openai(OpenAiOptions),
    LlamaCpp(std::path::PathBuf),
    CandleGguf(std::path::PathBuf),
    CandleDir(std::path::PathBuf),
}

fn plan(options: &LoadOptions) -> Result<Plan, EngineError> {
    if options.backend == Backend::Openai {
        let base_url = options.openai_url.clone().ok_or_else(|| {
            EngineError::UnknownModel(
                "the openai backend needs the server's base URL (`openai_url`)".into(),
            )
        })?;
        return Ok(Plan::Openai(OpenAiOptions {
            base_url,
            model: options.model.clone(),
            api_key: options.openai_key.clone(),
            max_in_flight: options.batch_size.max(1),
            context_length: options.context,
            timeout: Duration::from_secs(3600),
        }));
    }
    let to_gguf = |dir: &Path, label: &str, name: Option<&str>| {
        crate::convert::cached(
            dir,
            label,
            name,
            options.quant,
            options.threads,
            &mut |_, _, _| {},
        )
    };
    Ok(match (model::resolve(&options.model)?, options.backend) {
        (ModelLocation::Gguf(path), Backend::Candle) => Plan::CandleGguf(path),
        (ModelLocation::Gguf(path), _) => Plan::LlamaCpp(path),
        (ModelLocation::HuggingFaceRepo(repo), Backend::Candle) => {
            Plan::CandleDir(crate::hub::download(&repo)?)
        }
        // Without llama.cpp in the build, candle runs repos as before.
        (ModelLocation::HuggingFaceRepo(repo), Backend::Auto) if !cfg!(feature = "llama-cpp") => {
            Plan::CandleDir(crate::hub::download(&repo)?)
        }
        // A repo is converted to GGUF once, into the models cache, and runs on llama.cpp.
        (ModelLocation::HuggingFaceRepo(repo), _) => {
            let dir = crate::hub::download(&repo)?;
            Plan::LlamaCpp(to_gguf(&dir, &repo, Some(&repo))?)
        }
        // A local directory (a model being trained, say) runs on candle unless llama.cpp is
        // asked for; then it is converted into the cache too, and again whenever its files
        // change (names, sizes, modification times, headers).
        (ModelLocation::HuggingFaceDir(path), Backend::LlamaCpp) => {
            let label = path
                .canonicalize()
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string();
            Plan::LlamaCpp(to_gguf(&path, &label, None)?)
        }
        (ModelLocation::HuggingFaceDir(path), _) => Plan::CandleDir(path),
    })
}

/// What `options` asked that the loaded backend (`info`) does not do, said in the options' words
/// (`--batch-size 4` on candle, which runs one sequence at a time): callers print or log each.
pub fn ignored(options: &LoadOptions, info: &crate::ModelInfo) -> Vec<String> {
    let defaults = LoadOptions::default();
    let mut notes = Vec::new();
    // A default the user did not choose is not worth a note.
    if options.backend != Backend::Openai
        && options.batch_size > info.max_batch
        && options.batch_size != defaults.batch_size
    {
        notes.push(format!(
            "the {} backend runs {} sequence{} at a time: batch size {} is ignored (llama.cpp, the default for GGUF files and Hugging Face repos, batches)",
            info.backend,
            info.max_batch,
            if info.max_batch == 1 { "" } else { "s" },
            options.batch_size
        ));
    }
    let converted = Path::new(&info.source).starts_with(model::models_dir().join("converted"));
    if options.quant != defaults.quant && options.backend != Backend::Openai && !converted {
        notes.push(format!(
            "--quant {} applies to Hugging Face models converted for llama.cpp; this model was not converted, so it is ignored",
            options.quant
        ));
    }
    if info.backend == "openai" && options.openai_tokenizer.is_none() {
        notes.push(
            "the openai backend sends each prompt as text, and the server's tokenizer decides what in it becomes a control token: vLLM and llama-server parse control-token strings in a text prompt, so a conversation holding `<|eot_id|>` could end its turn there; --openai-tokenizer (the served model's tokenizer.json or GGUF) sends token ids instead".to_string(),
        );
    }
    if info.backend == "candle" {
        if options.flash_attention != FlashAttention::Auto {
            notes.push(format!(
                "candle has no flash-attention kernel: flash attention `{}` is ignored",
                options.flash_attention
            ));
        }
        if let Some(layers) = options.gpu_layers {
            notes.push(format!(
                "candle puts the whole model on its device: gpu layers {layers} is ignored"
            ));
        }
    }
    notes
}

/// Loads the model `options` name, for whole batches.
pub fn generator(options: &LoadOptions) -> Result<Box<dyn Generate>, EngineError> {
    match plan(options)? {
        Plan::Openai(openai) => Ok(Box::new(openai_engine(openai, options)?)),
        Plan::LlamaCpp(path) => llama_cpp_generator(&path, options),
        Plan::CandleGguf(path) => candle_gguf(&path, options),
        Plan::CandleDir(path) => candle_dir(&path, options),
    }
}

/// Loads the model `options` name, for a server: llama.cpp batches continuously; every other
/// backend serves one sequence at a time ([`Scheduler::continuous`] says which).
pub fn scheduler(options: &LoadOptions) -> Result<Arc<dyn Scheduler>, EngineError> {
    let serial = |engine: Box<dyn Generate>| -> Result<Arc<dyn Scheduler>, EngineError> {
        Ok(Arc::new(Serial::new(engine, options.queue_capacity)?))
    };
    match plan(options)? {
        Plan::Openai(openai) => serial(Box::new(openai_engine(openai, options)?)),
        Plan::LlamaCpp(path) => llama_cpp_scheduler(&path, options),
        Plan::CandleGguf(path) => serial(candle_gguf(&path, options)?),
        Plan::CandleDir(path) => serial(candle_dir(&path, options)?),
    }
}

/// The openai backend, with the served model's tokenizer where one was given.
fn openai_engine(
    openai: OpenAiOptions,
    options: &LoadOptions,
) -> Result<OpenAiEngine, EngineError> {
    let engine = OpenAiEngine::new(openai);
    let Some(path) = &options.openai_tokenizer else {
        return Ok(engine);
    };
    #[cfg(feature = "candle")]
    {
        let tokenizer = crate::backends::candle::tokenizer::GuardTokenizer::load(path)?;
        Ok(engine.with_tokenizer(Box::new(tokenizer)))
    }
    #[cfg(not(feature = "candle"))]
    {
        let _ = engine;
        Err(left_out(path, "candle"))
    }
}

#[cfg(feature = "candle")]
fn candle_options(options: &LoadOptions) -> crate::backends::candle::CandleOptions {
    crate::backends::candle::CandleOptions {
        context_per_sequence: options.context,
        device: options.device,
        ..Default::default()
    }
}

#[cfg(feature = "candle")]
fn candle_gguf(path: &Path, options: &LoadOptions) -> Result<Box<dyn Generate>, EngineError> {
    use crate::backends::candle::CandleEngine;
    Ok(Box::new(CandleEngine::load_gguf(
        path,
        candle_options(options),
    )?))
}

#[cfg(feature = "candle")]
fn candle_dir(path: &Path, options: &LoadOptions) -> Result<Box<dyn Generate>, EngineError> {
    use crate::backends::candle::CandleEngine;
    Ok(Box::new(CandleEngine::load_dir(
        path,
        candle_options(options),
    )?))
}

#[cfg(not(feature = "candle"))]
fn candle_gguf(path: &Path, _: &LoadOptions) -> Result<Box<dyn Generate>, EngineError> {
    Err(left_out(path, "candle"))
}

#[cfg(not(feature = "candle"))]
fn candle_dir(path: &Path, _: &LoadOptions) -> Result<Box<dyn Generate>, EngineError> {
    Err(left_out(path, "candle"))
}

#[cfg(feature = "llama-cpp")]
fn llama_cpp(
    path: &Path,
    options: &LoadOptions,
) -> Result<crate::backends::llama_cpp::LlamaCppEngine, EngineError> {
    use crate::backends::llama_cpp::{LlamaCppEngine, LlamaCppOptions};
    LlamaCppEngine::load(
        path,
        LlamaCppOptions {
            context_per_sequence: options.context,
            max_batch: options.batch_size.max(1),
            threads: options.threads,
            device: options.device,
            gpu_layers: options.gpu_layers,
            flash_attention: options.flash_attention,
            queue_capacity: options.queue_capacity,
            step_tokens: options.step_tokens,
        },
    )
}

#[cfg(feature = "llama-cpp")]
fn llama_cpp_generator(
    path: &Path,
    options: &LoadOptions,
) -> Result<Box<dyn Generate>, EngineError> {
    Ok(Box::new(llama_cpp(path, options)?))
}

#[cfg(feature = "llama-cpp")]
fn llama_cpp_scheduler(
    path: &Path,
    options: &LoadOptions,
) -> Result<Arc<dyn Scheduler>, EngineError> {
    Ok(Arc::new(llama_cpp(path, options)?))
}

#[cfg(not(feature = "llama-cpp"))]
fn llama_cpp_generator(path: &Path, _: &LoadOptions) -> Result<Box<dyn Generate>, EngineError> {
    Err(left_out(path, "llama-cpp"))
}

#[cfg(not(feature = "llama-cpp"))]
fn llama_cpp_scheduler(path: &Path, _: &LoadOptions) -> Result<Arc<dyn Scheduler>, EngineError> {
    Err(left_out(path, "llama-cpp"))
}

#[cfg(any(not(feature = "llama-cpp"), not(feature = "candle")))]
fn left_out(path: &Path, feature: &str) -> EngineError {
    EngineError::InvalidModel {
        path: path.to_path_buf(),
        message: format!(
            "this build leaves out the backend that runs it (rebuild with the `{feature}` feature)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_spellings() {
        for (name, backend) in [
            ("auto", Backend::Auto),
            ("llama-cpp", Backend::LlamaCpp),
            ("candle", Backend::Candle),
            ("openai", Backend::Openai),
        ] {
            assert_eq!(name.parse::<Backend>().unwrap(), backend);
            assert_eq!(backend.to_string(), name);
        }
        assert!("vllm"
            .parse::<Backend>()
            .unwrap_err()
            .to_string()
            .contains("llama-cpp"));
        for (name, policy) in [
            ("auto", FlashAttention::Auto),
            ("on", FlashAttention::On),
            ("off", FlashAttention::Off),
        ] {
            assert_eq!(name.parse::<FlashAttention>().unwrap(), policy);
            assert_eq!(policy.to_string(), name);
        }
        assert!("yes".parse::<FlashAttention>().is_err());
    }

    #[test]
    fn options_a_backend_cannot_honour_are_named() {
        let info = crate::ModelInfo {
            backend: "candle",
            source: "dir".into(),
            context_length: 4096,
            max_batch: 1,
            device: "cpu".into(),
        };
        // Defaults the user did not choose are not noted.
        assert!(ignored(&LoadOptions::default(), &info).is_empty());
        let options = LoadOptions {
            batch_size: 8,
            flash_attention: FlashAttention::On,
            quant: GgufType::Q4KM,
            ..LoadOptions::default()
        };
        let notes = ignored(&options, &info);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("batch size 8 is ignored"), "{notes:?}");
        assert!(notes[1].contains("--quant q4_k_m"), "{notes:?}");
        assert!(notes[2].contains("flash attention `on`"), "{notes:?}");
        let llama = crate::ModelInfo {
            backend: "llama.cpp",
            max_batch: 8,
            source: model::models_dir()
                .join("converted/x/y.q4_k_m.gguf")
                .display()
                .to_string(),
            ..info
        };
        assert!(ignored(&options, &llama).is_empty());
    }

    #[test]
    fn the_openai_backend_needs_a_url() {
        let options = LoadOptions {
            backend: Backend::Openai,
            ..LoadOptions::default()
        };
        let error = generator(&options).err().unwrap().to_string();
        assert!(error.contains("base URL"), "{error}");
    }
}
