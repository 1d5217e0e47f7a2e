//! Where fetched data lives: `$GUARDREASONER_DATA_DIR`, else the user's cache directory
//! (`~/.cache/guardreasoner/data` on Linux).

use std::path::PathBuf;

/// The environment variable that moves the data cache.
pub const DATA_DIR_ENV: &str = "GUARDREASONER_DATA_DIR";

/// The root of the data cache.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("guardreasoner")
        .join("data")
}

/// Where the benchmarks are in a data cache rooted at `data_dir`.
pub fn benchmarks_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("benchmarks")
}
