//! Text generation for guard models.
//!
//! - [`generate`]: the [`Generate`] trait every backend implements (a batch of prompts in, one
//!   [`Generation`] per prompt out, streamed token by token), and its types.
//! - [`backends`]: llama.cpp for GGUF files (feature `llama-cpp`), candle for GGUF files and
//!   Hugging Face directories (feature `candle`; both on by default), and a client of any
//!   OpenAI-compatible `/v1/completions` server.
//! - [`schedule`]: one sequence in, its events out: validation, the bounded queue, and the
//!   [`schedule::Scheduler`] a server drives (continuous batching on llama.cpp).
//! - [`load`]: what `--model` names, loaded into the backend that runs it (one loader for the
//!   command line and the server).
//! - [`convert`]: Hugging Face safetensors to GGUF (f32, f16, bf16, Q8_0, Q4_K_M), and the
//!   models cache's conversions of repo ids for llama.cpp.
//! - [`device`]: where a model runs (`auto`, `cpu`, `cuda:N`).
//! - [`chat_template`]: a model's own Jinja chat template, rendered as transformers does.
//! - [`tokenize`]: a [`Prompt`] (spans of the format's text and of content) into token ids, the
//!   one place that decides what may become a control token.
//! - [`sampling`]: greedy and nucleus sampling for backends that do not sample themselves.
//! - [`model`]: what `--model` names: a file, a directory, a repo id, or an alias; [`hub`]
//!   downloads a repo id.

// Every public item says what it is for; keep it so.
#![deny(missing_docs)]

pub mod backends;
pub mod chat_template;
pub mod convert;
pub mod device;
pub mod error;
pub mod generate;
pub mod hub;
pub mod load;
pub mod model;
pub mod sampling;
pub mod schedule;
pub mod tokenize;

pub use device::DeviceSpec;
pub use error::EngineError;
pub use generate::{
    Batch, Generate, Generation, ModelInfo, SamplingParams, StopReason, Timings, TokenEvent,
};
pub use guardreasoner_protocol::{Prompt, SpanKind};
