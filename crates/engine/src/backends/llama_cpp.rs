//! The llama.cpp backend (through `llama-cpp-2`): the default for GGUF files.
//!
//! The model and its context live on a worker thread of their own, which owns them for their whole
//! life (the context borrows the model, and llama.cpp contexts must not be shared between threads).
//! The [`LlamaCppEngine`] handle sends it batches and relays the streamed tokens back.
//!
//! Batching: the prompts of a batch decode together in one context, one llama.cpp sequence each,
//! with a unified KV cache. The shared prefix (GuardReasoner's instruction, identical in every
//! guard prompt) is evaluated once into sequence 0 and kept there across batches; each prompt's
//! sequence starts from a copy of it, which in a unified cache shares the cells rather than copying
//! them, and only the rest of the prompt is evaluated.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::LlamaBackendDeviceType;

use crate::chat_template::ChatTemplate;
use crate::device::{cuda_not_built, DeviceSpec, CUDA_BUILT};
use crate::error::EngineError;
use crate::generate::{
    Batch, Generate, Generation, ModelInfo, SamplingParams, StopReason, Timings, TokenEvent,
    Utf8Stream,
};

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
    /// Prompt tokens evaluated per decode call.
    pub prefill_chunk: usize,
    /// Whether attention runs as llama.cpp's fused flash-attention kernel.
    pub flash_attention: FlashAttention,
}

/// llama.cpp's flash-attention policy. The fused kernel sums in another order than the plain
/// one, so greedy text on the two can part where two tokens are nearly tied; llama-cpp-python
/// turns it off unless asked, llama.cpp itself picks per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlashAttention {
    /// llama.cpp decides (on where the layers run).
    #[default]
    Auto,
    /// The fused kernel.
    On,
    /// Plain attention: softmax of the scores, then the product with the values.
    Off,
}

impl FlashAttention {
    /// llama.cpp's `llama_flash_attn_type` values.
    fn policy(self) -> i32 {
        match self {
            Self::Auto => -1,
            Self::Off => 0,
            Self::On => 1,
        }
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
            prefill_chunk: 512,
            flash_attention: FlashAttention::Auto,
        }
    }
}

enum Job {
    Generate {
        batch: Batch,
        events: mpsc::Sender<Event>,
    },
    Tokenize {
        text: String,
        reply: mpsc::Sender<Vec<u32>>,
    },
}

enum Event {
    Token { sequence: usize, text: String },
    Done(Result<Vec<Generation>, EngineError>),
}

/// A GGUF model running in llama.cpp on a worker thread.
pub struct LlamaCppEngine {
    info: ModelInfo,
    chat_template: Option<ChatTemplate>,
    jobs: Option<mpsc::Sender<Job>>,
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
        .map_err(|message| backend_error(message.clone()))
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

/// A GGUF quantization llama.cpp's quantizer makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// 8-bit, blocks of 32 (`Q8_0`): near-lossless.
    Q8_0,
    /// llama.cpp's 4-bit k-quant mix (`Q4_K_M`: Q4_K, with Q6_K for the output, token embedding
    /// and half of `attn_v`/`ffn_down`), as `llama-quantize` makes it.
    Q4KM,
}

/// Quantizes the GGUF file `input` (f32/f16/bf16 weights) into `output` with llama.cpp's own
/// quantizer (`llama_model_quantize`, what `llama-quantize` runs), so that the mix of tensor types
/// is llama.cpp's exactly. `output` is written beside itself first and renamed when complete.
pub fn quantize(
    input: &Path,
    output: &Path,
    quantization: Quantization,
    threads: usize,
) -> Result<(), EngineError> {
    backend()?;
    let c_path = |path: &Path| {
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| backend_error(format!("{}: a path with a NUL byte", path.display())))
    };
    let partial = output.with_extension("gguf.partial");
    let (c_input, c_partial) = (c_path(input)?, c_path(&partial)?);
    // SAFETY: default parameters from llama.cpp itself; the two paths outlive the call.
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.nthread = threads as i32;
        params.ftype = match quantization {
            Quantization::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
            Quantization::Q4KM => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M,
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
    EngineError::Backend {
        backend: BACKEND,
        message: message.into(),
    }
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
        let (jobs, job_receiver) = mpsc::channel::<Job>();
        let (ready, ready_receiver) =
            mpsc::channel::<Result<(ModelInfo, Option<ChatTemplate>), EngineError>>();
        let path: PathBuf = path.to_path_buf();
        let worker = thread::Builder::new()
            .name("llama.cpp".into())
            .spawn(move || worker(backend, path, options, ready, job_receiver))
            .map_err(|e| backend_error(format!("cannot start the worker thread: {e}")))?;
        let (info, chat_template) = ready_receiver
            .recv()
            .map_err(|_| backend_error("the worker thread stopped while loading"))??;
        Ok(Self {
            info,
            chat_template,
            jobs: Some(jobs),
            worker: Some(worker),
        })
    }

    /// The token ids llama.cpp gives `text` (BOS where the model wants it, special-token text
    /// parsed as special tokens).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let (reply, receiver) = mpsc::channel();
        self.send(Job::Tokenize {
            text: text.to_string(),
            reply,
        })?;
        receiver
            .recv()
            .map_err(|_| backend_error("the worker thread stopped"))
    }

    fn send(&self, job: Job) -> Result<(), EngineError> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| backend_error("the worker thread has stopped"))
    }
}

impl Drop for LlamaCppEngine {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop; wait for it to free the model.
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
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
        batch.params.validate()?;
        let (events, receiver) = mpsc::channel();
        self.send(Job::Generate {
            batch: batch.clone(),
            events,
        })?;
        for event in receiver {
            match event {
                Event::Token { sequence, text } => on_token(TokenEvent {
                    sequence,
                    text: &text,
                }),
                Event::Done(result) => return result,
            }
        }
        Err(backend_error("the worker thread stopped while generating"))
    }

    fn count_tokens(&mut self, text: &str) -> Result<Option<usize>, EngineError> {
        self.tokenize(text).map(|ids| Some(ids.len()))
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }
}

fn worker(
    backend: &'static LlamaBackend,
    path: PathBuf,
    options: LlamaCppOptions,
    ready: mpsc::Sender<Result<(ModelInfo, Option<ChatTemplate>), EngineError>>,
    jobs: mpsc::Receiver<Job>,
) {
    let (model_params, device) = match placement(&options) {
        Ok(placement) => placement,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let model = match LlamaModel::load_from_file(backend, &path, &model_params) {
        Ok(model) => model,
        Err(error) => {
            let _ = ready.send(Err(EngineError::InvalidModel {
                path,
                message: format!("llama.cpp cannot load it ({error}): the file is truncated, corrupt, or of an architecture llama.cpp does not know"),
            }));
            return;
        }
    };
    let threads = options
        .threads
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
    let context_per_sequence = options
        .context_per_sequence
        .min(model.n_ctx_train() as usize)
        .max(16);
    let max_batch = options.max_batch.max(1);
    // Sequence 0 holds the shared prefix; sequences 1..=max_batch the prompts. The unified cache
    // is sized for every prompt at full length (the shared prefix only makes it roomier).
    let total = context_per_sequence * max_batch;
    let context_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(total as u32))
        .with_n_batch(options.prefill_chunk.max(1) as u32)
        .with_n_ubatch(options.prefill_chunk.max(1) as u32)
        .with_n_seq_max(max_batch as u32 + 1)
        .with_kv_unified(true)
        .with_flash_attention_policy(options.flash_attention.policy())
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut context = match model.new_context(backend, context_params) {
        Ok(context) => context,
        Err(error) => {
            let _ = ready.send(Err(backend_error(format!(
                "cannot create a context of {total} tokens: {error}"
            ))));
            return;
        }
    };
    let info = ModelInfo {
        backend: BACKEND,
        source: path.display().to_string(),
        context_length: context_per_sequence,
        max_batch,
        device,
    };
    let chat_template = match model.meta_val_str("tokenizer.chat_template") {
        Ok(source) => {
            let vocab = model.vocab();
            let text = |token| {
                String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
            };
            match ChatTemplate::new(
                &source,
                &text(vocab.bos()),
                &text(vocab.eos()),
                vocab.should_add_bos(),
            ) {
                Ok(template) => Some(template),
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            }
        }
        Err(_) => None,
    };
    if ready.send(Ok((info, chat_template))).is_err() {
        return;
    }
    let mut runner = Runner {
        model: &model,
        context: &mut context,
        context_per_sequence,
        max_batch,
        prefill_chunk: options.prefill_chunk.max(1),
        prefix: Vec::new(),
    };
    for job in jobs {
        match job {
            Job::Generate { batch, events } => {
                let result = runner.run(&batch, &events);
                let _ = events.send(Event::Done(result));
            }
            Job::Tokenize { text, reply } => {
                let ids = runner
                    .tokenize(&text)
                    .into_iter()
                    .map(|t| t.0 as u32)
                    .collect();
                let _ = reply.send(ids);
            }
        }
    }
}

/// The state the worker keeps between batches.
struct Runner<'m, 'c> {
    model: &'m LlamaModel,
    context: &'c mut LlamaContext<'m>,
    context_per_sequence: usize,
    max_batch: usize,
    prefill_chunk: usize,
    /// The tokens held in sequence 0.
    prefix: Vec<LlamaToken>,
}

/// One prompt in flight.
struct Sequence {
    tokens: usize,
    cached: usize,
    position: usize,
    /// llama.cpp's sampler chain; `None` for greedy decoding, which takes the argmax itself.
    sampler: Option<LlamaSampler>,
    utf8: Utf8Stream,
    text: String,
    token_ids: Vec<u32>,
    logprobs: Option<Vec<f32>>,
    stop: Option<StopReason>,
    first_token_at: Option<Instant>,
    finished_at: Option<Instant>,
    /// The token to feed next.
    next: Option<LlamaToken>,
}

const PREFIX_SEQUENCE: i32 = 0;

fn sequence_id(index: usize) -> i32 {
    index as i32 + 1
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn sampler_for(params: &SamplingParams, index: usize) -> Option<LlamaSampler> {
    if params.is_greedy() {
        return None;
    }
    let seed = params.seed.wrapping_add(index as u64) as u32;
    Some(LlamaSampler::chain_simple([
        LlamaSampler::top_p(params.top_p, 1),
        LlamaSampler::temp(params.temperature),
        LlamaSampler::dist(seed),
    ]))
}

impl Runner<'_, '_> {
    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        // Special-token text is parsed as special tokens, as Hugging Face tokenizers and vLLM do
        // with raw prompts (the llama3 chat format relies on it).
        self.model.vocab().tokenize(text.as_bytes(), true, true)
    }

    fn run(
        &mut self,
        batch: &Batch,
        events: &mpsc::Sender<Event>,
    ) -> Result<Vec<Generation>, EngineError> {
        let mut generations = Vec::with_capacity(batch.prompts.len());
        for (chunk_index, chunk) in batch.prompts.chunks(self.max_batch).enumerate() {
            let offset = chunk_index * self.max_batch;
            generations.extend(self.run_chunk(chunk, offset, batch, events)?);
        }
        Ok(generations)
    }

    fn run_chunk(
        &mut self,
        prompts: &[String],
        offset: usize,
        batch: &Batch,
        events: &mpsc::Sender<Event>,
    ) -> Result<Vec<Generation>, EngineError> {
        let started = Instant::now();
        let prompt_tokens: Vec<Vec<LlamaToken>> =
            prompts.iter().map(|p| self.tokenize(p)).collect();
        for (index, tokens) in prompt_tokens.iter().enumerate() {
            if tokens.is_empty() || tokens.len() + 1 > self.context_per_sequence {
                return Err(EngineError::PromptTooLong {
                    index: offset + index,
                    tokens: tokens.len(),
                    context: self.context_per_sequence,
                });
            }
        }

        // The shared prefix: the caller's hint, else what the prompts of this chunk share; never
        // longer than what every prompt really starts with.
        let mut shared = match &batch.shared_prefix {
            Some(text) => self.tokenize(text),
            None if prompt_tokens.len() > 1 => prompt_tokens[0].clone(),
            None => Vec::new(),
        };
        for tokens in &prompt_tokens {
            shared.truncate(common_prefix(&shared, tokens));
        }
        if shared.is_empty() && !self.prefix.is_empty() {
            // Keep the cached prefix for the prompts that do start with it.
            let reusable = prompt_tokens
                .iter()
                .map(|t| common_prefix(&self.prefix, t))
                .min()
                .unwrap_or(0);
            shared = self.prefix[..reusable].to_vec();
        }
        self.load_prefix(&shared)?;

        let mut sequences: Vec<Sequence> = Vec::with_capacity(prompts.len());
        for (index, tokens) in prompt_tokens.iter().enumerate() {
            let id = sequence_id(index);
            self.clear(id)?;
            // The last prompt token is always evaluated: its logits choose the first new token.
            let cached = shared.len().min(tokens.len() - 1);
            if cached > 0 {
                self.context
                    .copy_kv_cache_seq(PREFIX_SEQUENCE, id, Some(0), Some(cached as u32))
                    .map_err(|e| backend_error(e.to_string()))?;
            }
            sequences.push(Sequence {
                tokens: tokens.len(),
                cached,
                position: cached,
                sampler: sampler_for(&batch.params, offset + index),
                utf8: Utf8Stream::default(),
                text: String::new(),
                token_ids: Vec::new(),
                logprobs: batch.params.logprobs.then(Vec::new),
                stop: None,
                first_token_at: None,
                finished_at: None,
                next: None,
            });
        }

        // Prefill: every prompt's uncached tokens, packed into chunks across sequences.
        let pending: Vec<(usize, usize)> = sequences
            .iter()
            .enumerate()
            .flat_map(|(index, sequence)| {
                (sequence.cached..sequence.tokens).map(move |pos| (index, pos))
            })
            .collect();
        let mut llama_batch = LlamaBatch::new(
            self.prefill_chunk.max(sequences.len()),
            sequences.len() as i32,
        );
        for piece in pending.chunks(self.prefill_chunk) {
            llama_batch.clear();
            let mut finishing = Vec::new();
            for &(index, position) in piece {
                let last = position + 1 == sequences[index].tokens;
                llama_batch
                    .add(
                        prompt_tokens[index][position],
                        position as i32,
                        &[sequence_id(index)],
                        last,
                    )
                    .map_err(|e| backend_error(e.to_string()))?;
                if last {
                    finishing.push((index, llama_batch.n_tokens() - 1));
                }
            }
            self.decode(&mut llama_batch)?;
            for (index, logits_index) in finishing {
                sequences[index].position = sequences[index].tokens;
                self.sample(
                    &mut sequences[index],
                    offset + index,
                    logits_index,
                    &batch.params,
                    events,
                );
            }
        }

        // Decode: one token per live sequence per step.
        loop {
            llama_batch.clear();
            let mut live = Vec::new();
            for (index, sequence) in sequences.iter().enumerate() {
                if let (None, Some(token)) = (sequence.stop, sequence.next) {
                    llama_batch
                        .add(token, sequence.position as i32, &[sequence_id(index)], true)
                        .map_err(|e| backend_error(e.to_string()))?;
                    live.push((index, llama_batch.n_tokens() - 1));
                }
            }
            if live.is_empty() {
                break;
            }
            self.decode(&mut llama_batch)?;
            for (index, logits_index) in live {
                sequences[index].position += 1;
                self.sample(
                    &mut sequences[index],
                    offset + index,
                    logits_index,
                    &batch.params,
                    events,
                );
            }
        }

        for index in 0..sequences.len() {
            self.clear(sequence_id(index))?;
        }
        Ok(sequences
            .into_iter()
            .map(|mut sequence| {
                let rest = sequence.utf8.finish();
                sequence.text.push_str(&rest);
                let first = sequence.first_token_at.unwrap_or(started);
                let finished = sequence.finished_at.unwrap_or(first);
                Generation {
                    text: sequence.text,
                    prompt_tokens: sequence.tokens,
                    cached_prompt_tokens: sequence.cached,
                    generated_tokens: sequence.token_ids.len(),
                    token_ids: sequence.token_ids,
                    logprobs: sequence.logprobs,
                    stop: sequence.stop.unwrap_or(StopReason::MaxTokens),
                    timings: Timings {
                        prefill: first.duration_since(started),
                        decode: finished.saturating_duration_since(first),
                    },
                }
            })
            .collect())
    }

    /// Samples the next token of `sequence` from the logits at `logits_index`, streams its text,
    /// and decides whether the sequence stops.
    fn sample(
        &self,
        sequence: &mut Sequence,
        batch_index: usize,
        logits_index: i32,
        params: &SamplingParams,
        events: &mpsc::Sender<Event>,
    ) {
        let token = match &mut sequence.sampler {
            Some(sampler) => sampler.sample(self.context, logits_index),
            // A plain argmax over the logits: the same token as llama.cpp's greedy sampler,
            // without building its candidate array over the whole vocabulary every step.
            None => LlamaToken(
                crate::sampling::argmax(self.context.get_logits_ith(logits_index)) as i32,
            ),
        };
        let now = Instant::now();
        sequence.first_token_at.get_or_insert(now);
        let vocab = self.model.vocab();
        if vocab.is_eog(token) && !params.ignore_eos {
            sequence.stop = Some(StopReason::EndOfText);
            sequence.finished_at = Some(now);
            return;
        }
        if let Some(logprobs) = &mut sequence.logprobs {
            logprobs.push(crate::sampling::log_probability(
                self.context.get_logits_ith(logits_index),
                token.0 as u32,
            ));
        }
        sequence.token_ids.push(token.0 as u32);
        let piece = vocab.token_to_piece(token, false, None);
        let text = sequence.utf8.push(&piece);
        if !text.is_empty() {
            sequence.text.push_str(&text);
            let _ = events.send(Event::Token {
                sequence: batch_index,
                text,
            });
        }
        sequence.next = Some(token);
        if sequence.token_ids.len() >= params.max_new_tokens {
            sequence.stop = Some(StopReason::MaxTokens);
        } else if sequence.position + 1 >= self.context_per_sequence {
            sequence.stop = Some(StopReason::ContextFull);
        }
        if sequence.stop.is_some() {
            sequence.finished_at = Some(now);
        }
    }

    /// Makes sequence 0 hold exactly `tokens`, evaluating only what it does not hold yet.
    fn load_prefix(&mut self, tokens: &[LlamaToken]) -> Result<(), EngineError> {
        let keep = common_prefix(&self.prefix, tokens);
        if keep == tokens.len() && keep == self.prefix.len() {
            return Ok(());
        }
        self.context
            .clear_kv_cache_seq(Some(PREFIX_SEQUENCE as u32), Some(keep as u32), None)
            .map_err(|e| backend_error(e.to_string()))?;
        self.prefix.truncate(keep);
        let mut llama_batch = LlamaBatch::new(self.prefill_chunk, 1);
        for (chunk_index, chunk) in tokens[keep..].chunks(self.prefill_chunk).enumerate() {
            llama_batch.clear();
            for (i, &token) in chunk.iter().enumerate() {
                let position = keep + chunk_index * self.prefill_chunk + i;
                llama_batch
                    .add(token, position as i32, &[PREFIX_SEQUENCE], false)
                    .map_err(|e| backend_error(e.to_string()))?;
            }
            self.decode(&mut llama_batch)?;
            self.prefix.extend_from_slice(chunk);
        }
        Ok(())
    }

    fn clear(&mut self, sequence: i32) -> Result<(), EngineError> {
        self.context
            .clear_kv_cache_seq(Some(sequence as u32), None, None)
            .map(|_| ())
            .map_err(|e| backend_error(e.to_string()))
    }

    fn decode(&mut self, batch: &mut LlamaBatch) -> Result<(), EngineError> {
        self.context
            .decode(batch)
            .map_err(|e| backend_error(format!("decode failed: {e}")))
    }
}
