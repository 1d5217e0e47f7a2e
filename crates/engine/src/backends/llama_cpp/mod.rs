//! The llama.cpp backend (through `llama-cpp-2`): the default for GGUF files.
//!
//! The model is shared (llama.cpp's tokenizer may run on any thread, so requests are tokenized
//! where they are validated); its context lives on the scheduler's thread, which owns it for its
//! whole life (llama.cpp contexts must not be shared between threads). [`LlamaCppEngine`] is the
//! handle: it queues requests for the scheduler ([`Scheduler`]) and runs whole batches through
//! the same queue ([`Generate`]), so the command line and the server share one path.
//!
//! How the scheduler batches is in [`scheduler`]: continuous batching, one KV stream per slot,
//! each new sequence placed in the slot whose last prompt shares the longest start with it (so
//! GuardReasoner's instruction is evaluated once per slot, not once per check).

mod scheduler;
mod vocabulary;

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::LlamaBackendDeviceType;

use guardreasoner_protocol::Prompt;

use crate::chat_template::ChatTemplate;
use crate::device::{cuda_not_built, DeviceSpec, CUDA_BUILT};
use crate::error::EngineError;
use crate::generate::{Batch, Generate, Generation, ModelInfo, TokenEvent};
use crate::schedule::{
    run_batch, Events, JobQueue, Load, Rejected, Request, Scheduler, DEFAULT_QUEUE_CAPACITY,
};
use crate::tokenize::Vocabulary;
use vocabulary::LlamaVocabulary;

const BACKEND: &str = "llama.cpp";

/// How to load a GGUF model into llama.cpp.
#[derive(Debug, Clone)]
pub struct LlamaCppOptions {
    /// Tokens one sequence may hold, prompt and generation together.
    pub context_per_sequence: usize,
    /// The most prompts decoded together.
    pub max_batch: usize,
    /// CPU threads; all available cores when `None`.
    pub threads: Option<usize>,
    /// Where the layers run.
    pub device: DeviceSpec,
    /// On a GPU, how many layers to offload (the rest run on the CPU); all when `None`.
    pub gpu_layers: Option<u32>,
    /// Tokens one decode call takes: a token of every decoding sequence, then prompt tokens
    /// up to this budget (llama.cpp's `n_batch`).
    pub step_tokens: usize,
    /// Whether attention runs as llama.cpp's fused flash-attention kernel.
    pub flash_attention: FlashAttention,
    /// The most requests waiting for a slot; more are refused at once.
    pub queue_capacity: usize,
}

pub use crate::load::{FlashAttention, DEFAULT_STEP_TOKENS};

/// llama.cpp's `llama_flash_attn_type` value for `policy`.
fn flash_attention_type(policy: FlashAttention) -> i32 {
    match policy {
        FlashAttention::Auto => -1,
        FlashAttention::Off => 0,
        FlashAttention::On => 1,
    }
}

impl Default for LlamaCppOptions {
    fn default() -> Self {
        Self {
            // A long guard prompt (~1,500 tokens) plus the paper's 2,048 new tokens.
            context_per_sequence: 4096,
            max_batch: 4,
            threads: None,
            device: DeviceSpec::Auto,
            gpu_layers: None,
            step_tokens: DEFAULT_STEP_TOKENS,
            flash_attention: FlashAttention::Auto,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }
}

/// A GGUF model running in llama.cpp, its context on the scheduler's thread.
pub struct LlamaCppEngine {
    info: ModelInfo,
    chat_template: Option<ChatTemplate>,
    vocabulary: Arc<LlamaVocabulary>,
    queue: JobQueue,
    worker: Option<thread::JoinHandle<()>>,
}

/// llama.cpp's global state, initialised once per process.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND_STATE: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND_STATE
        .get_or_init(|| {
            LlamaBackend::init()
                .map(|mut backend| {
                    backend.void_logs();
                    backend
                })
                .map_err(|e| e.to_string())
        })
        .as_ref()
        // The error stays in the cell for every later caller, so its text is what is kept.
        .map_err(|message| backend_error(format!("cannot initialise llama.cpp: {message}")))
}

/// What the llama.cpp in this build was compiled with, as llama.cpp itself reports it
/// (`llama_print_system_info`): per backend, the instruction sets its kernels use, e.g.
/// `CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | ...`. `AMX_INT8 = 1` would mean ggml's AMX kernels
/// are compiled in, which the build config prevents (`.cargo/config.toml` says why).
pub fn system_info() -> Result<String, EngineError> {
    backend()?;
    // SAFETY: llama.cpp returns a pointer to a NUL-terminated static buffer, valid until the next
    // call; it is copied before this function returns.
    let text = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
    Ok(text
        .to_string_lossy()
        .trim()
        .trim_end_matches('|')
        .trim()
        .to_string())
}

/// Quantizes the GGUF file `input` (f32/f16/bf16 weights) into `output` of type `kind` with
/// llama.cpp's own quantizer (`llama_model_quantize`, what `llama-quantize` runs), so that the
/// mix of tensor types is llama.cpp's exactly (Q4_K_M: Q4_K, with Q6_K for the output, the token
/// embedding and half of `attn_v`/`ffn_down`). `output` is written beside itself first and renamed
/// when complete.
pub fn quantize(
    input: &Path,
    output: &Path,
    kind: crate::convert::GgufType,
    threads: Option<usize>,
) -> Result<(), EngineError> {
    use crate::convert::GgufType;
    backend()?;
    let c_path = |path: &Path| {
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| backend_error(format!("{}: a path with a NUL byte", path.display())))
    };
    // Hidden and unique to this process: two quantizations to one path never share it.
    let file_name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = output.with_file_name(format!(".{file_name}.{}.partial", std::process::id()));
    let (c_input, c_partial) = (c_path(input)?, c_path(&partial)?);
    // SAFETY: default parameters from llama.cpp itself; the two paths outlive the call.
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.nthread = crate::device::cpu_threads(threads) as i32;
        params.ftype = match kind {
            GgufType::F32 => llama_cpp_sys_2::LLAMA_FTYPE_ALL_F32,
            GgufType::F16 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_F16,
            GgufType::Bf16 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_BF16,
            GgufType::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
            GgufType::Q4KM => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M,
        };
        llama_cpp_sys_2::llama_model_quantize(c_input.as_ptr(), c_partial.as_ptr(), &params)
    };
    if status != 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(backend_error(format!(
            "llama.cpp could not quantize {} (status {status})",
            input.display()
        )));
    }
    std::fs::rename(&partial, output).map_err(|source| EngineError::Io {
        context: format!("renaming {} into place", partial.display()),
        source,
    })
}

/// The model parameters that put the layers where `options` asks, and the device's name.
fn placement(options: &LlamaCppOptions) -> Result<(LlamaModelParams, String), EngineError> {
    let cpu = || {
        (
            LlamaModelParams::default().with_n_gpu_layers(0),
            "cpu".into(),
        )
    };
    // CUDA GPUs only: another GPU backend llama.cpp may have been built with (Metal on macOS)
    // is not what `cuda` or `auto` name here.
    let cuda_gpus = || {
        llama_cpp_2::list_llama_ggml_backend_devices()
            .into_iter()
            .filter(|d| matches!(d.device_type, LlamaBackendDeviceType::Gpu) && d.backend == "CUDA")
            .count()
    };
    let ordinal = match options.device {
        DeviceSpec::Cpu => return Ok(cpu()),
        DeviceSpec::Auto if !CUDA_BUILT || cuda_gpus() == 0 => return Ok(cpu()),
        DeviceSpec::Auto => 0,
        DeviceSpec::Cuda(_) if !CUDA_BUILT => {
            return Err(backend_error(cuda_not_built(options.device)))
        }
        DeviceSpec::Cuda(ordinal) => {
            let count = cuda_gpus();
            if ordinal >= count {
                return Err(backend_error(format!(
                    "device {}: llama.cpp sees {count} CUDA GPU(s){}",
                    options.device,
                    if count == 0 {
                        " (is the NVIDIA driver loaded?)"
                    } else {
                        ""
                    }
                )));
            }
            ordinal
        }
    };
    if options.gpu_layers == Some(0) {
        return Ok(cpu());
    }
    // Below the number of GPUs llama.cpp sees, so it fits.
    let main_gpu = ordinal as i32;
    Ok((
        LlamaModelParams::default()
            .with_n_gpu_layers(options.gpu_layers.unwrap_or(u32::MAX))
            .with_split_mode(LlamaSplitMode::None)
            .with_main_gpu(main_gpu),
        format!("cuda:{ordinal}"),
    ))
}

fn backend_error(message: impl Into<String>) -> EngineError {
    EngineError::backend(BACKEND, message)
}

/// Checks that `path` is a GGUF file before llama.cpp sees it, for a clear error.
pub fn check_gguf_header(path: &Path) -> Result<(), EngineError> {
    use std::io::Read;
    if !path.exists() {
        return Err(EngineError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let invalid = |message: &str| EngineError::InvalidModel {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let mut magic = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| invalid(&e.to_string()))?;
    file.read_exact(&mut magic)
        .map_err(|_| invalid("too short to be a GGUF file"))?;
    if &magic[..4] != b"GGUF" {
        return Err(invalid("not a GGUF file (no GGUF magic at its start)"));
    }
    let version = u32::from_le_bytes([magic[4], magic[5], magic[6], magic[7]]);
    if !(2..=3).contains(&version) {
        return Err(invalid(&format!(
            "GGUF version {version} is not supported (2 or 3 are)"
        )));
    }
    Ok(())
}

impl LlamaCppEngine {
    /// Loads a GGUF file. Fails with a clear error on a missing, truncated or corrupt file.
    pub fn load(path: &Path, options: LlamaCppOptions) -> Result<Self, EngineError> {
        check_gguf_header(path)?;
        let backend = backend()?;
        let (model_params, device) = placement(&options)?;
        let model = LlamaModel::load_from_file(backend, path, &model_params).map_err(|error| {
            EngineError::InvalidModel {
                path: path.to_path_buf(),
                message: format!("llama.cpp cannot load it ({error}): the file is truncated, corrupt, or of an architecture llama.cpp does not know"),
            }
        })?;
        let model = Arc::new(model);
        let chat_template = chat_template(&model)?;
        let vocabulary = Arc::new(LlamaVocabulary::new(model.clone()));
        let threads = crate::device::cpu_threads(options.threads);
        let context_per_sequence = options
            .context_per_sequence
            .min(model.n_ctx_train() as usize)
            .max(16);
        let max_batch = options.max_batch.max(1);
        // One KV stream per slot, each for a sequence at full length (llama.cpp's non-unified
        // cache, as llama-server runs its slots): a sequence's attention spans its own cells
        // only. A step carries a token of every decoding sequence beside prefill tokens.
        let total = context_per_sequence * max_batch;
        let step_tokens = options.step_tokens.max(max_batch + 1);
        // llama.cpp splits a call into physical batches of `n_ubatch`; past its default of 512
        // a bigger one buys nothing on a CPU and costs a bigger compute buffer.
        // (Measured at 16 clients on the load test: 2,048 physical against 512 changed nothing.)
        let ubatch = step_tokens.min(DEFAULT_STEP_TOKENS);
        let context_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(total as u32))
            .with_n_batch(step_tokens as u32)
            .with_n_ubatch(ubatch as u32)
            .with_n_seq_max(max_batch as u32)
            .with_kv_unified(false)
            .with_flash_attention_policy(flash_attention_type(options.flash_attention))
            .with_n_threads(threads as i32)
            .with_n_threads_batch(threads as i32);
        let (queue, job_receiver) = JobQueue::new(options.queue_capacity, max_batch);
        let settings = scheduler::Settings {
            context_per_sequence,
            slots: max_batch,
            step_tokens,
        };
        let (ready, ready_receiver) = mpsc::channel();
        let worker = {
            let (model, gauge, vocabulary) =
                (model.clone(), queue.gauge().clone(), vocabulary.clone());
            thread::Builder::new()
                .name("llama.cpp".into())
                .spawn(move || {
                    let context = match model.new_context(backend, context_params) {
                        Ok(context) => context,
                        Err(error) => {
                            let _ = ready.send(Err(EngineError::backend_caused(
                                BACKEND,
                                format!("cannot create a context of {total} tokens"),
                                error,
                            )));
                            return;
                        }
                    };
                    if ready.send(Ok(())).is_ok() {
                        scheduler::run(
                            &model,
                            &vocabulary,
                            context,
                            settings,
                            &gauge,
                            job_receiver,
                        );
                    }
                })
                .map_err(|e| {
                    EngineError::backend_caused(BACKEND, "cannot start the scheduler thread", e)
                })?
        };
        ready_receiver
            .recv()
            .map_err(|_| backend_error("the scheduler thread stopped while loading"))??;
        Ok(Self {
            info: ModelInfo {
                backend: BACKEND,
                source: path.display().to_string(),
                context_length: context_per_sequence,
                max_batch,
                device,
            },
            chat_template,
            vocabulary,
            queue,
            worker: Some(worker),
        })
    }

    /// The token ids of `prompt` (BOS where the model wants it): control tokens where its
    /// format spans write them, its content as plain text ([`crate::tokenize`]). Runs on the
    /// calling thread.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        crate::tokenize::tokenize(self.vocabulary.as_ref(), prompt)
    }

    /// The ids llama.cpp's own tokenizer gives `text` as one string (BOS where the model wants
    /// it), with its special-token parsing on or off: the reference [`Self::tokenize`] is
    /// checked against.
    pub fn tokenize_text(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.vocabulary.whole(text, parse_special)
    }

    /// The control tokens of the vocabulary: what no conversation's text may become.
    pub fn control_tokens(&self) -> &[crate::tokenize::Control] {
        self.vocabulary.markers().controls()
    }
}

/// The chat template the GGUF file carries, rendered with the model's own BOS and EOS text.
fn chat_template(model: &LlamaModel) -> Result<Option<ChatTemplate>, EngineError> {
    let Ok(source) = model.meta_val_str("tokenizer.chat_template") else {
        return Ok(None);
    };
    let vocab = model.vocab();
    let text =
        |token| String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned();
    ChatTemplate::new(
        &source,
        &text(vocab.bos()),
        &text(vocab.eos()),
        vocab.should_add_bos(),
    )
    .map(Some)
}

impl Drop for LlamaCppEngine {
    fn drop(&mut self) {
        // Closing the queue ends the scheduler once its running sequences finish; wait for it
        // to free the context.
        self.queue.close();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Scheduler for LlamaCppEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Option<Vec<u32>>, EngineError> {
        LlamaCppEngine::tokenize(self, prompt).map(Some)
    }

    fn vocab_size(&self) -> Option<usize> {
        Some(self.vocabulary.size())
    }

    fn submit_all(&self, requests: Vec<(usize, Request)>, events: Events) -> Result<(), Rejected> {
        self.queue.submit_all(requests, events)
    }

    fn load(&self) -> Load {
        self.queue.gauge().load()
    }

    fn continuous(&self) -> bool {
        true
    }
}

impl Generate for LlamaCppEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(
        &mut self,
        batch: &Batch,
        on_token: &mut dyn FnMut(TokenEvent<'_>),
    ) -> Result<Vec<Generation>, EngineError> {
        run_batch(self, batch, on_token)
    }

    fn count_tokens(&mut self, prompt: &Prompt) -> Result<Option<usize>, EngineError> {
        Ok(Some(LlamaCppEngine::tokenize(self, prompt)?.len()))
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }
}
