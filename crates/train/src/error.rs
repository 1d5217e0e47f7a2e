//! Errors that name the file, the record or line, and the field at fault.

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading training data and training a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A problem with one record (1-based: a JSON list's element, a JSONL/CSV line's row, a
    /// Parquet row).
    #[error("{}: record {record}: {message}", path.display())]
    AtRecord {
        /// The file.
        path: PathBuf,
        /// The 1-based record number.
        record: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A problem with a file as a whole.
    #[error("{}: {message}", path.display())]
    File {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor operation failed (shapes, device, out of memory).
    #[error("{context}: {source}")]
    Tensor {
        /// What was being done.
        context: String,
        /// candle's error.
        source: candle_core::Error,
    },
    /// Loading or running a model failed.
    #[error(transparent)]
    Engine(#[from] guardreasoner_engine::EngineError),
    /// A setting that cannot work (a learning rate below zero, a batch of none).
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn at_record(path: &Path, record: usize, message: impl Into<String>) -> Self {
        TrainError::AtRecord {
            path: path.to_path_buf(),
            record,
            message: message.into(),
        }
    }

    pub(crate) fn file(path: &Path, message: impl Into<String>) -> Self {
        TrainError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// Wraps a candle error with what was being done.
    pub fn tensor(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        move |source| TrainError::Tensor { context, source }
    }
}
