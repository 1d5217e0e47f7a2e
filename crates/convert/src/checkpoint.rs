//! The safetensors weights of a Hugging Face model directory: one `model.safetensors`, or the
//! shards `model.safetensors.index.json` names. Each shard is memory-mapped and its header read;
//! a tensor's bytes are touched only when it is converted, one at a time.

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
            // SAFETY: the map is read-only; a file changed underneath a conversion gives wrong
            // bytes in the output, never unsafety in safe code that reads the slice (the same
            // contract as candle's and safetensors' own loaders).
            let map = unsafe { Mmap::map(&file) }.map_err(ConvertError::io(path))?;
            let tensors = SafeTensors::deserialize(&map).map_err(|e| {
                ConvertError::file(path, format!("not a readable safetensors file: {e}"))
            })?;
            let mut names: Vec<(String, Entry)> = tensors
                .tensors()
                .into_iter()
                .map(|(name, view)| {
                    let entry = Entry {
                        shard: index,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
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
                    format!(
                        "tensor `{name}` is also in {}",
                        shards[first].display()
                    ),
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

    /// The tensor `name` as f32 values (bf16 and f16 widened exactly, f64 narrowed as numpy
    /// does), in row-major order.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, ConvertError> {
        let entry = self
            .get(name)
            .ok_or_else(|| ConvertError::file(&self.shards[0], format!("no tensor `{name}`")))?;
        let path = &self.shards[entry.shard];
        let tensors = SafeTensors::deserialize(&self.maps[entry.shard])
            .map_err(|e| ConvertError::file(path, e.to_string()))?;
        let view = tensors
            .tensor(name)
            .map_err(|e| ConvertError::file(path, format!("tensor `{name}`: {e}")))?;
        let bytes = view.data();
        let values = match view.dtype() {
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
            return Err(ConvertError::file(&index_path, "`weight_map` names no shard"));
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
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ConvertError::file(
        dir,
        "no model.safetensors and no model.safetensors.index.json: not a safetensors checkpoint",
    ))
}
