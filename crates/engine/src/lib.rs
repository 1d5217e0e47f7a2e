//! Text generation for guard models.
//!
//! - [`generate`]: the [`Generate`] trait every backend implements (a batch of prompts in, one
//!   [`Generation`] per prompt out, streamed token by token), and its types.
//! - [`backends`]: llama.cpp for GGUF files (feature `llama-cpp`, on by default) and a client of
//!   any OpenAI-compatible `/v1/completions` server.
//! - [`model`]: what `--model` names: a file, a directory, a repo id, or an alias.

pub mod backends;
pub mod error;
pub mod generate;
pub mod model;

pub use error::EngineError;
pub use generate::{
    Batch, Generate, Generation, ModelInfo, SamplingParams, StopReason, Timings, TokenEvent,
};
