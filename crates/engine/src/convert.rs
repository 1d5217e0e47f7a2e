//! Hugging Face safetensors to GGUF for the llama.cpp backend: `guardreasoner convert`, and the
//! models cache's conversions, made once on first use of a repo id and reused after.
//!
//! f32, f16, bf16 and Q8_0 are written by `guardreasoner-convert` (byte for byte what llama.cpp's
//! `convert_hf_to_gguf.py` writes); Q4_K_M is llama.cpp's own quantizer run on a bf16 or f16
//! conversion, as `llama-quantize` is run on the Python converter's output.

use std::path::{Path, PathBuf};

use guardreasoner_convert::checkpoint::Dtype;
use sha2::{Digest, Sha256};

use crate::error::EngineError;

/// A GGUF file's weight type: the converter's one type, for the command line and the cache.
pub use guardreasoner_convert::GgufType;

/// What a conversion wrote.
pub use guardreasoner_convert::Report;

/// Converts the Hugging Face model directory `dir` into `out`. `name` stands in for the
/// directory's name in the file's `general.name` (a hub snapshot's directory is a commit hash);
/// `threads` is for llama.cpp's quantizer (`None`: every core); `progress` hears of each tensor.
pub fn convert(
    dir: &Path,
    out: &Path,
    kind: GgufType,
    name: Option<&str>,
    threads: Option<usize>,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Report, EngineError> {
    if kind.written_by_converter() {
        return Ok(guardreasoner_convert::convert(
            dir, out, kind, name, progress,
        )?);
    }
    if !cfg!(feature = "llama-cpp") {
        // Said before a conversion that would be for nothing.
        return Err(quantizer_missing(dir));
    }
    // Quantized by llama.cpp from a lossless-enough intermediate: bf16 for bf16 checkpoints
    // (Llama 3's), f16 otherwise.
    let checkpoint = guardreasoner_convert::checkpoint::Checkpoint::open(dir)?;
    let all_bf16 = checkpoint
        .entries
        .iter()
        .all(|(_, e)| e.dtype == Dtype::BF16);
    drop(checkpoint);
    let intermediate_type = if all_bf16 {
        GgufType::Bf16
    } else {
        GgufType::F16
    };
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let intermediate = out.with_file_name(format!(
        ".{file_name}.{}.{}.intermediate",
        std::process::id(),
        intermediate_type.name()
    ));
    let result =
        guardreasoner_convert::convert(dir, &intermediate, intermediate_type, name, progress)
            .map_err(EngineError::from)
            .and_then(|report| {
                quantize_q4_k_m(&intermediate, out, threads)?;
                let bytes = std::fs::metadata(out)
                    .map_err(|source| EngineError::Io {
                        context: format!("reading {}", out.display()),
                        source,
                    })?
                    .len();
                Ok(Report {
                    path: out.to_path_buf(),
                    bytes,
                    ..report
                })
            });
    let _ = std::fs::remove_file(&intermediate);
    result
}

#[cfg(feature = "llama-cpp")]
fn quantize_q4_k_m(input: &Path, out: &Path, threads: Option<usize>) -> Result<(), EngineError> {
    crate::backends::llama_cpp::quantize(input, out, GgufType::Q4KM, threads)
}

#[cfg(not(feature = "llama-cpp"))]
fn quantize_q4_k_m(input: &Path, _: &Path, _: Option<usize>) -> Result<(), EngineError> {
    Err(quantizer_missing(input))
}

fn quantizer_missing(path: &Path) -> EngineError {
    EngineError::InvalidModel {
        path: path.to_path_buf(),
        message: "Q4_K_M is made by llama.cpp's quantizer; this build leaves llama.cpp out (rebuild with the `llama-cpp` feature)".into(),
    }
}

/// Bumped whenever the converter's output for the same input changes, so that conversions
/// already in the cache are made again.
const CONVERTER_REVISION: u32 = 1;

/// The cached GGUF of the model directory `dir` (known to users as `label`: a repo id, or the
/// directory), converting it into the models cache the first time. A conversion is reused while
/// its record matches the directory's files (names, sizes, modification times, the small files'
/// contents and every shard's header), the type and the converter's revision; otherwise it is
/// made again, and the conversions it supersedes are removed. Processes converting the same
/// model take turns (a lock file), so the second finds the first's file.
pub fn cached(
    dir: &Path,
    label: &str,
    name: Option<&str>,
    kind: GgufType,
    threads: Option<usize>,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<PathBuf, EngineError> {
    let fingerprint = fingerprint(dir, kind)?;
    let folder = crate::model::models_dir()
        .join("converted")
        .join(sanitize(label));
    let target = folder.join(format!("{}.{}.gguf", &fingerprint[..16], kind.name()));
    let record_path = target.with_extension("gguf.json");
    let io = |context: String| move |source| EngineError::Io { context, source };
    let reusable = || {
        let record = std::fs::read_to_string(&record_path).ok()?;
        let record: serde_json::Value = serde_json::from_str(&record).ok()?;
        let bytes = std::fs::metadata(&target).ok()?.len();
        (record["fingerprint"] == fingerprint.as_str() && record["bytes"] == bytes).then_some(())
    };
    if reusable().is_some() {
        return Ok(target);
    }
    std::fs::create_dir_all(&folder).map_err(io(format!("creating {}", folder.display())))?;
    let lock_path = folder.join(".lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(io(format!("creating {}", lock_path.display())))?;
    lock.lock()
        .map_err(io(format!("locking {}", lock_path.display())))?;
    // Another process may have converted it while this one waited.
    if reusable().is_some() {
        return Ok(target);
    }
    // Under the lock no other conversion of this model is running: what a killed one left,
    // and the conversions this one supersedes, can go.
    for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let leftover = file.starts_with('.')
            && (file.ends_with(".partial") || file.ends_with(".intermediate"));
        let superseded = file.ends_with(&format!(".{}.gguf", kind.name()))
            || file.ends_with(&format!(".{}.gguf.json", kind.name()));
        if leftover || superseded {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    eprintln!(
        "converting {label} to GGUF ({}) for llama.cpp, once, into {}",
        kind.name(),
        target.display()
    );
    let report = convert(dir, &target, kind, name, threads, progress)?;
    let record = serde_json::json!({
        "source": label,
        "directory": dir,
        "type": kind.name(),
        "fingerprint": fingerprint,
        "bytes": report.bytes,
        "converter": format!("guardreasoner {} (converter revision {CONVERTER_REVISION})", env!("CARGO_PKG_VERSION")),
    });
    let partial = record_path.with_extension(format!("json.{}.partial", std::process::id()));
    std::fs::write(&partial, format!("{record:#}\n"))
        .and_then(|()| std::fs::rename(&partial, &record_path))
        .map_err(io(format!("writing {}", record_path.display())))?;
    drop(lock);
    Ok(target)
}

/// A name safe as one path component.
fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

/// SHA-256 over what decides a conversion's bytes, read cheaply: the converter's revision, the
/// type, and for each file its name, size and modification time (a model saved again with new
/// weights has the same header and size), the small files' contents, and each shard's header
/// (names, shapes, offsets).
fn fingerprint(dir: &Path, kind: GgufType) -> Result<String, EngineError> {
    let mut hash = Sha256::new();
    hash.update(CONVERTER_REVISION.to_le_bytes());
    hash.update(kind.name());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| EngineError::Io {
            context: format!("reading the model directory {}", dir.display()),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::metadata(&path).map_err(|source| EngineError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        let size = meta.len();
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hash.update(name.as_bytes());
        hash.update(size.to_le_bytes());
        hash.update(modified.to_le_bytes());
        let read = |len: Option<usize>| -> Result<Vec<u8>, EngineError> {
            use std::io::Read;
            let mut file = std::fs::File::open(&path).map_err(|source| EngineError::Io {
                context: format!("reading {}", path.display()),
                source,
            })?;
            let mut bytes = Vec::new();
            match len {
                Some(len) => file.take(len as u64).read_to_end(&mut bytes),
                None => file.read_to_end(&mut bytes),
            }
            .map_err(|source| EngineError::Io {
                context: format!("reading {}", path.display()),
                source,
            })?;
            Ok(bytes)
        };
        if name.ends_with(".safetensors") {
            let head = read(Some(8))?;
            let header_len = head
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .unwrap_or(0)
                .min(100 << 20);
            hash.update(read(Some(8 + header_len as usize))?);
        } else if size <= 64 << 20 {
            hash.update(read(None)?);
        }
    }
    Ok(format!("{:x}", hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_the_documented_spellings() {
        for kind in GgufType::ALL {
            assert_eq!(kind.name().parse::<GgufType>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.name());
        }
        assert_eq!("Q4_K_M".parse::<GgufType>().unwrap(), GgufType::Q4KM);
        assert!("q5_k".parse::<GgufType>().unwrap_err().contains("q4_k_m"));
        assert_eq!(
            sanitize("yueliu1999/GuardReasoner-1B"),
            "yueliu1999-GuardReasoner-1B"
        );
    }
}
