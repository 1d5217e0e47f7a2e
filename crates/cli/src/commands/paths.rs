//! Where the benchmark files are, for the commands that read them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The environment variable naming the benchmarks directory.
const BENCHMARKS_ENV: &str = "GUARDREASONER_BENCHMARKS";

/// Where the benchmark files are, in the order documented on `--benchmarks`.
pub fn benchmarks_dir(given: Option<PathBuf>, outputs: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    if let Some(dir) = std::env::var_os(BENCHMARKS_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    // GuardReasoner's repository keeps outputs in data/test/<size> beside data/benchmark.
    if let Some(root) = outputs.and_then(Path::parent).and_then(Path::parent) {
        if root.join("benchmark").is_dir() {
            return Ok(root.to_path_buf());
        }
    }
    let cached = guardreasoner_data::benchmarks_dir(&guardreasoner_data::data_dir());
    if cached.join("benchmark").is_dir() {
        return Ok(cached);
    }
    bail!(
        "no benchmark files found: run `guardreasoner data fetch` (downloads them into {}), or pass --benchmarks DIR",
        cached.display()
    )
}
