//! Hugging Face safetensors to GGUF for the llama.cpp backend: `guardreasoner convert`, and the
//! models cache's conversions, made once on first use of a repo id and reused after.
//!
//! f32, f16, bf16 and Q8_0 are written by `guardreasoner-convert` (byte for byte what llama.cpp's
//! `convert_hf_to_gguf.py` writes); Q4_K_M is llama.cpp's own quantizer run on a bf16 or f16
//! conversion, as `llama-quantize` is run on the Python converter's output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use guardreasoner_convert::checkpoint::Dtype;
use guardreasoner_convert::OutType;
use sha2::{Digest, Sha256};

use crate::error::EngineError;

/// A GGUF file's weight type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufType {
    /// 32-bit floats.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit blocks: near-lossless at half of f16's size (the cache's default).
    #[default]
    Q8_0,
    /// llama.cpp's 4-bit k-quant mix, made by its quantizer.
    Q4KM,
}

impl GgufType {
    /// Every type, in the order the command line lists them.
    pub const ALL: [GgufType; 5] = [Self::F32, Self::F16, Self::Bf16, Self::Q8_0, Self::Q4KM];

    /// The type's name on the command line and in cached file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4KM => "q4_k_m",
        }
    }

    /// The converter's own type, where the converter writes this type itself.
    fn direct(self) -> Option<OutType> {
        match self {
            Self::F32 => Some(OutType::F32),
            Self::F16 => Some(OutType::F16),
            Self::Bf16 => Some(OutType::Bf16),
            Self::Q8_0 => Some(OutType::Q8_0),
            Self::Q4KM => None,
        }
    }
}

impl FromStr for GgufType {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == name.to_ascii_lowercase())
            .ok_or_else(|| {
                format!("unknown GGUF type `{name}`: expected f32, f16, bf16, q8_0 or q4_k_m")
            })
    }
}

impl fmt::Display for GgufType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a conversion wrote.
pub use guardreasoner_convert::Report;

/// Converts the Hugging Face model directory `dir` into `out`. `name` stands in for the
/// directory's name in the file's `general.name` (a hub snapshot's directory is a commit hash);
/// `threads` is for llama.cpp's quantizer; `progress` hears of each tensor.
pub fn convert(
    dir: &Path,
    out: &Path,
    kind: GgufType,
    name: Option<&str>,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Report, EngineError> {
    if let Some(direct) = kind.direct() {
        return Ok(guardreasoner_convert::convert(
            dir, out, direct, name, progress,
        )?);
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
        OutType::Bf16
    } else {
        OutType::F16
    };
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let intermediate = out.with_file_name(format!(
        ".{file_name}.{}.intermediate",
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
fn quantize_q4_k_m(input: &Path, out: &Path, threads: usize) -> Result<(), EngineError> {
    use crate::backends::llama_cpp::{quantize, Quantization};
    quantize(input, out, Quantization::Q4KM, threads)
}

#[cfg(not(feature = "llama-cpp"))]
fn quantize_q4_k_m(input: &Path, _: &Path, _: usize) -> Result<(), EngineError> {
    Err(EngineError::InvalidModel {
        path: input.to_path_buf(),
        message: "Q4_K_M is made by llama.cpp's quantizer; rebuild with the `llama-cpp` feature"
            .into(),
    })
}

/// The cached GGUF of the model directory `dir` (known to users as `label`: a repo id, or the
/// directory), converting it into the models cache the first time. A conversion is reused while
/// its record matches the directory's files (names, sizes, the small files' contents and every
/// shard's header), the type and this converter's version; otherwise it is made again.
pub fn cached(
    dir: &Path,
    label: &str,
    name: Option<&str>,
    kind: GgufType,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<PathBuf, EngineError> {
    let fingerprint = fingerprint(dir, kind)?;
    let folder = crate::model::models_dir()
        .join("converted")
        .join(sanitize(label));
    let target = folder.join(format!("{}.{}.gguf", &fingerprint[..16], kind.name()));
    let record_path = target.with_extension("gguf.json");
    let io = |context: String| move |source| EngineError::Io { context, source };
    if let (Ok(record), Ok(meta)) = (
        std::fs::read_to_string(&record_path),
        std::fs::metadata(&target),
    ) {
        let record: serde_json::Value = serde_json::from_str(&record).unwrap_or_default();
        if record["fingerprint"] == fingerprint.as_str() && record["bytes"] == meta.len() {
            return Ok(target);
        }
    }
    std::fs::create_dir_all(&folder).map_err(io(format!("creating {}", folder.display())))?;
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
        "converter": concat!("guardreasoner ", env!("CARGO_PKG_VERSION")),
    });
    std::fs::write(&record_path, format!("{record:#}\n"))
        .map_err(io(format!("writing {}", record_path.display())))?;
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

/// SHA-256 over what decides a conversion's bytes, read cheaply: the converter's version, the
/// type, and for each file its name and size, the small files' contents, and each shard's
/// header (names, shapes, offsets).
fn fingerprint(dir: &Path, kind: GgufType) -> Result<String, EngineError> {
    let mut hash = Sha256::new();
    hash.update(env!("CARGO_PKG_VERSION"));
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
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        hash.update(name.as_bytes());
        hash.update(size.to_le_bytes());
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
