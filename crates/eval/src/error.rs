//! Errors that name the file, the line or record, and the field at fault.

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading benchmarks and outputs.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A problem at one line of a file (a JSONL line, or the line of a JSON document).
    #[error("{}:{line}: {message}", path.display())]
    AtLine {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong there.
        message: String,
    },
    /// A problem with one record of a JSON list or Parquet file.
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
}

impl EvalError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn at_line(path: &Path, line: usize, message: impl Into<String>) -> Self {
        EvalError::AtLine {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn at_record(path: &Path, record: usize, message: impl Into<String>) -> Self {
        EvalError::AtRecord {
            path: path.to_path_buf(),
            record,
            message: message.into(),
        }
    }

    pub(crate) fn file(path: &Path, message: impl Into<String>) -> Self {
        EvalError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
