//! The loss curve of a run, as CSV: one row per optimizer step, appended as the run goes (a
//! resumed run appends to the same file).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::TrainError;
use crate::steps::Step;

/// The CSV header.
pub const HEADER: &str = "step,epoch,lr,loss,eval_loss,grad_norm,tokens,seconds,tokens_per_second";

/// Appends step rows to a CSV file.
pub struct LossCurve {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl LossCurve {
    /// Opens `path` for appending, writing the header when the file is new or empty.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        let mut curve = Self {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
        };
        if empty {
            curve.line(HEADER)?;
        }
        Ok(curve)
    }

    /// Appends one step (flushed, so the file is current if the run dies).
    pub fn push(&mut self, log: &Step) -> Result<(), TrainError> {
        let eval = log
            .held_out
            .as_ref()
            .and_then(|m| m.first())
            .map(|l| format!("{l:.6}"))
            .unwrap_or_default();
        self.line(&format!(
            "{},{:.4},{:.3e},{:.6},{},{:.4},{},{:.3},{:.1}",
            log.step,
            log.epoch,
            log.lr,
            log.loss,
            eval,
            log.grad_norm,
            log.tokens,
            log.duration.as_secs_f64(),
            log.tokens_per_second()
        ))
    }

    fn line(&mut self, text: &str) -> Result<(), TrainError> {
        writeln!(self.writer, "{text}")
            .and_then(|()| self.writer.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}
