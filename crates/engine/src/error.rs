//! Engine errors: each says what failed and, where it can, what to do.

use std::path::PathBuf;

/// Everything that can go wrong loading a model or generating.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file or directory is absent.
    #[error("{}: no such model file or directory", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The file is not a model this backend can load.
    #[error("{}: {message}", path.display())]
    InvalidModel {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A model name that no backend knows.
    #[error("{0}")]
    UnknownModel(String),
    /// The prompt does not fit the context window.
    #[error("prompt {index} is {tokens} tokens; the context holds {context} per sequence, with room for at least one new token (shorten the conversation, or load the model with a longer context)")]
    PromptTooLong {
        /// The prompt's index in its batch.
        index: usize,
        /// Its length in tokens.
        tokens: usize,
        /// The context window.
        context: usize,
    },
    /// A prompt the model cannot read (token ids it does not have, say).
    #[error("prompt {index}: {message}")]
    InvalidPrompt {
        /// The prompt's index in its batch.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// Sampling parameters no backend can honour (e.g. `max_new_tokens` 0).
    #[error("invalid sampling parameters: {message}")]
    InvalidParams {
        /// The parameter at fault, as [`crate::SamplingParams`] names it (`max_new_tokens`,
        /// `temperature`, `top_p`), so that a caller can name its own field without reading the
        /// message.
        param: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The backend failed while running.
    #[error("{backend}: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What failed.
        message: String,
        /// Why: llama.cpp's, candle's, the tokenizer's or the HTTP client's own error, where
        /// there is one (a report with the error's chain prints it after `message`).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Reading or writing a local file failed.
    #[error("{context}")]
    Io {
        /// What was being done, to which file.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Converting a Hugging Face checkpoint to GGUF failed (the error names the file).
    #[error(transparent)]
    Convert(#[from] guardreasoner_convert::ConvertError),
    /// Downloading a model's files failed.
    #[error("{context}")]
    Download {
        /// What was being downloaded, from where.
        context: String,
        /// Why it failed (the HTTP client's, the hub client's or the verifier's error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An error's text followed by its causes' (`a: b: c`), for where only text can go (a JSON body,
/// a per-item error line); a report with the error's chain (anyhow's `{:#}`) prints the same.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

impl EngineError {
    /// A backend's failure that no other error caused.
    pub fn backend(backend: &'static str, message: impl Into<String>) -> Self {
        Self::Backend {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// A backend's failure (`message`: what it was doing) caused by `source`.
    pub fn backend_caused(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            backend,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A failed download: what was being fetched (`context`) and why.
    pub(crate) fn download(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Download {
            context: context.into(),
            source: source.into(),
        }
    }
}
