//! Checkpoints of a run (the model as a Hugging Face directory, the optimizer's moments, where
//! the run was) and resuming from one.
//!
//! A checkpoint directory is itself a model directory, so `--model` and `check --model` take it.
//! Resuming reloads the weights from it, restores AdamW's moments and step, and skips the steps
//! already taken: the data order is a function of the seed, so the run continues on the same
//! batches it would have seen.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use guardreasoner_engine::backends::candle::llama::RopeLayout;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::model::{unpermute_rows, TrainModel};
use crate::optim::AdamW;

/// Where a run stood when its checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: usize,
    /// Steps the run was set to take.
    pub total_steps: usize,
    /// The data order seed.
    pub seed: u64,
}

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";

/// Writes a checkpoint into `dir` (written beside it and renamed, so that a checkpoint directory
/// either exists whole or not at all).
pub fn save(
    dir: &Path,
    model: &TrainModel,
    optimizer: &AdamW,
    state: &TrainerState,
) -> Result<(), TrainError> {
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| TrainError::io(&partial, e))?;
    }
    model.save(&partial, DType::F32)?;
    let config = &model.trainable.model.config;
    let mut tensors = HashMap::new();
    let moments = optimizer
        .moments()
        .map_err(TrainError::tensor("reading the optimizer's moments"))?;
    for ((name, _), (m, v)) in model.trainable.vars.iter().zip(moments) {
        // Moments follow their parameter's layout, and the saved Q/K are in Hugging Face's.
        let heads = match name.rsplit('.').next() {
            Some("wq") => Some(config.num_heads),
            Some("wk") => Some(config.num_kv_heads),
            _ => None,
        };
        let (m, v) = match heads {
            Some(heads) if config.rope_layout == RopeLayout::Interleaved => (
                unpermute_rows(&m, heads).map_err(TrainError::tensor("moments"))?,
                unpermute_rows(&v, heads).map_err(TrainError::tensor("moments"))?,
            ),
            _ => (m, v),
        };
        tensors.insert(format!("{name}.m"), m);
        tensors.insert(format!("{name}.v"), v);
    }
    let path = partial.join(OPTIMIZER_FILE);
    candle_core::safetensors::save(&tensors, &path)
        .map_err(TrainError::tensor(format!("writing {}", path.display())))?;
    let path = partial.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).expect("serializable") + "\n";
    std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&partial, dir).map_err(|e| TrainError::io(dir, e))
}

/// Reads a checkpoint's state and restores `optimizer` (built over `model`, which was loaded from
/// the checkpoint directory).
pub fn restore(
    dir: &Path,
    model: &TrainModel,
    optimizer: &mut AdamW,
) -> Result<TrainerState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| {
        TrainError::file(
            &path,
            format!("not a trainer state (line {}): {e}", e.line()),
        )
    })?;
    let path = dir.join(OPTIMIZER_FILE);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(TrainError::tensor(format!("reading {}", path.display())))?;
    let mut moments: Vec<(Tensor, Tensor)> = Vec::new();
    for (name, _) in &model.trainable.vars {
        let mut take = |suffix: &str| {
            tensors.remove(&format!("{name}.{suffix}")).ok_or_else(|| {
                TrainError::file(&path, format!("no moment `{name}.{suffix}` for this model"))
            })
        };
        moments.push((take("m")?, take("v")?));
    }
    optimizer
        .restore(moments, state.step)
        .map_err(TrainError::tensor(format!("restoring {}", path.display())))?;
    Ok(state)
}
