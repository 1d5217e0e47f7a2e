//! The safetensors weights of a Hugging Face model directory: the shards
//! `model.safetensors.index.json` names, else every `model*.safetensors`. Each shard is
//! memory-mapped and its header read; a tensor's bytes are touched only when it is read, one at
//! a time, and its pages released after (the converter's and the candle loader's reader).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
pub use safetensors::Dtype;
use safetensors::SafeTensors;

use crate::error::ConvertError;

/// A tensor of the checkpoint: which shard holds it, its dtype and shape.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Index of its shard in [`Checkpoint::shards`].
    pub shard: usize,
    /// Its stored element type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Where its bytes are in its shard's map (found once, when the header is read).
    bytes: std::ops::Range<usize>,
}

/// Every tensor of a checkpoint, by Hugging Face name.
pub struct Checkpoint {
    /// The shard files, in the order they are read (sorted by file name).
    pub shards: Vec<PathBuf>,
    maps: Vec<Mmap>,
    /// Tensors by name, in the order llama.cpp's converter visits them: shard by shard, and by
    /// name within a shard.
    pub entries: Vec<(String, Entry)>,
}

impl Checkpoint {
    /// Opens the weights of the model directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, ConvertError> {
        let shards = shard_files(dir)?;
        let mut maps = Vec::with_capacity(shards.len());
        let mut entries = Vec::new();
        for (index, path) in shards.iter().enumerate() {
            let file = File::open(path).map_err(ConvertError::io(path))?;
            // SAFETY: a read-only shared map of a file that must not be modified in place while
            // it is open: a file truncated underneath would fault (SIGBUS), one rewritten in place
            // would change bytes behind a `&[u8]`. Hugging Face's tools, hf-hub and our trainer
            // replace checkpoint files by writing a new file and renaming it, which leaves this
            // map's file intact; the same contract as candle's and safetensors' own loaders.
            let map = unsafe { Mmap::map(&file) }.map_err(ConvertError::io(path))?;
            let tensors = SafeTensors::deserialize(&map).map_err(|e| {
                ConvertError::file(path, format!("not a readable safetensors file: {e}"))
            })?;
            let mut names: Vec<(String, Entry)> = tensors
                .tensors()
                .into_iter()
                .map(|(name, view)| {
                    let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
                    let entry = Entry {
                        shard: index,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        bytes: start..start + view.data().len(),
                    };
                    (name, entry)
                })
                .collect();
            names.sort_by(|a, b| a.0.cmp(&b.0));
            entries.extend(names);
            maps.push(map);
        }
        let mut seen = BTreeMap::new();
        for (name, entry) in &entries {
            if let Some(first) = seen.insert(name.clone(), entry.shard) {
                return Err(ConvertError::file(
                    &shards[entry.shard],
                    format!("tensor `{name}` is also in {}", shards[first].display()),
                ));
            }
        }
        Ok(Self {
            shards,
            maps,
            entries,
        })
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, e)| e)
    }

    /// The stored bytes of tensor `name` (little-endian, its own dtype), copied out of the map.
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>, ConvertError> {
        self.with_bytes(name, |_, bytes| Ok(bytes.to_vec()))
    }

    /// Runs `f` on tensor `name`'s dtype and mapped bytes, then releases those pages.
    fn with_bytes<T>(
        &self,
        name: &str,
        f: impl FnOnce(Dtype, &[u8]) -> Result<T, ConvertError>,
    ) -> Result<T, ConvertError> {
        let entry = self.get(name).ok_or_else(|| {
            let dir = self.shards[0].parent().unwrap_or(Path::new("."));
            ConvertError::file(dir, format!("the checkpoint has no tensor `{name}`"))
        })?;
        let bytes = &self.maps[entry.shard][entry.bytes.clone()];
        let result = f(entry.dtype, bytes);
        self.release(entry.shard, bytes);
        result
    }

    /// The tensor `name` as f32 values (bf16 and f16 widened exactly, f64 narrowed as numpy
    /// does), in row-major order.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, ConvertError> {
        let path = self
            .get(name)
            .map(|e| self.shards[e.shard].clone())
            .unwrap_or_default();
        self.with_bytes(name, |dtype, bytes| Self::widen(&path, name, dtype, bytes))
    }

    fn widen(
        path: &Path,
        name: &str,
        dtype: Dtype,
        bytes: &[u8],
    ) -> Result<Vec<f32>, ConvertError> {
        let values = match dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => {
                return Err(ConvertError::file(
                    path,
                    format!("tensor `{name}` is {other:?}; floating-point weights (f32, bf16, f16, f64) are converted"),
                ))
            }
        };
        Ok(values)
    }

    /// Drops the mapped pages of `bytes` (a tensor already converted) from this process's
    /// memory: they are the file's, reread if touched again, and without this a conversion's
    /// resident size grows by the whole checkpoint.
    fn release(&self, shard: usize, bytes: &[u8]) {
        #[cfg(unix)]
        {
            let map = &self.maps[shard];
            let offset = bytes.as_ptr() as usize - map.as_ptr() as usize;
            // SAFETY: `Mmap::map` makes a read-only MAP_SHARED file mapping, which has no private
            // pages: MADV_DONTNEED only drops clean page-cache pages from this process, and a
            // later read faults them in again from the file, unchanged (on a private writable
            // map it would zero-fill; this is not one).
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, bytes.len())
            };
        }
        #[cfg(not(unix))]
        let _ = (shard, bytes);
    }
}

/// The shard files of `dir`: those the index names (sorted), else `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, ConvertError> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(ConvertError::io(&index_path))?;
        let index: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ConvertError::file(&index_path, format!("not valid JSON: {e}")))?;
        let map = index["weight_map"].as_object().ok_or_else(|| {
            ConvertError::file(&index_path, "no `weight_map` object naming the shards")
        })?;
        let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return Err(ConvertError::file(
                &index_path,
                "`weight_map` names no shard",
            ));
        }
        // Shards are files of this directory: a name with a path in it is refused, not followed.
        if let Some(bad) = names
            .iter()
            .find(|n| Path::new(n).components().count() != 1 || n.starts_with('.'))
        {
            return Err(ConvertError::file(
                &index_path,
                format!("`weight_map` names `{bad}`, which is not a file of this directory"),
            ));
        }
        let shards: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        if let Some(missing) = shards.iter().find(|p| !p.is_file()) {
            return Err(ConvertError::file(
                missing,
                format!("a shard {} names is missing", index_path.display()),
            ));
        }
        return Ok(shards);
    }
    // No index: every `model*.safetensors`, sorted, as llama.cpp's converter takes them.
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(ConvertError::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("model") && n.ends_with(".safetensors")
                })
        })
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(ConvertError::file(
            dir,
            "no model*.safetensors and no model.safetensors.index.json: not a safetensors checkpoint",
        ));
    }
    Ok(shards)
}
