//! The append-only JSONL files that make `mine` and `synth` resumable: one entry per line, flushed
//! as it comes, read back on a rerun (a torn last line, from a run that died mid-write, dropped).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The entries a previous run wrote; `index_of` gives an entry's item index, which must be below
/// `items`, else `beyond` names what the file holds instead (a log of another input file).
pub fn read<T: DeserializeOwned>(
    path: &Path,
    items: usize,
    index_of: impl Fn(&T) -> usize,
    beyond: impl Fn(usize) -> String,
) -> Result<Vec<T>> {
    let Ok(file) = File::open(path) else {
        return Ok(Vec::new());
    };
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", path.display()))?;
    let mut entries = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        match serde_json::from_str::<T>(line) {
            Ok(entry) if index_of(&entry) < items => entries.push(entry),
            Ok(entry) => bail!(
                "{}:{}: {}",
                path.display(),
                number + 1,
                beyond(index_of(&entry))
            ),
            Err(_) if number + 1 == lines.len() => {
                eprintln!("{}: dropping a torn last line", path.display())
            }
            Err(e) => bail!("{}:{}: {e}", path.display(), number + 1),
        }
    }
    Ok(entries)
}

/// A log open for appending.
pub struct Appender {
    path: PathBuf,
    file: File,
}

impl Appender {
    /// Opens (or creates, with its directory) `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one entry as a line, flushed so that the file is current if the run dies.
    pub fn push(&mut self, entry: &impl Serialize) -> Result<(), guardreasoner_train::TrainError> {
        let line = serde_json::to_string(entry).expect("serializable");
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(|source| guardreasoner_train::TrainError::Io {
                path: self.path.clone(),
                source,
            })
    }
}
