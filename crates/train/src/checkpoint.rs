//! Checkpoints of a run (the weights, the optimizer's moments, where the run was) and resuming
//! from one.
//!
//! A full fine-tuning checkpoint is itself a model directory, so `--model` and `check --model`
//! take it, and resuming reloads the weights from it. A LoRA checkpoint holds only the adapter,
//! in PEFT's layout (`adapter_model.safetensors`, `adapter_config.json`, as transformers'
//! Trainer writes a PEFT checkpoint): resuming loads the base model from `--model` again and the
//! adapter from the checkpoint. Either way AdamW's moments and step are restored and the steps
//! already taken are skipped: the data order is a function of the seed, so the run continues on
//! the same batches it would have seen.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::lora::{self, LoraConfig};
use crate::model::{hf_layout, model_layout, Precision, TrainModel};
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
    /// The `--model` the run started from (a LoRA resume loads it again as the base).
    #[serde(default)]
    pub model: String,
    /// The adapter's settings, for a LoRA run.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// The peak learning rate (absent in checkpoints written before it was recorded).
    #[serde(default)]
    pub lr: Option<f64>,
    /// The precision of the steps (absent in checkpoints written before it was recorded).
    #[serde(default)]
    pub precision: Option<Precision>,
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
    match &state.lora {
        Some(config) => lora::save_adapter(&partial, &model.trainable, config, &state.model)?,
        None => model.save(&partial, DType::F32)?,
    }
    let config = &model.trainable.model.config;
    let mut tensors = HashMap::new();
    let moments = optimizer
        .moments()
        .map_err(TrainError::tensor("reading the optimizer's moments"))?;
    for ((name, _), (m, v)) in model.trainable.vars.iter().zip(moments) {
        // Moments follow their parameter's layout, and the saved Q/K are in Hugging Face's.
        let layout = |t| hf_layout(config, name, t).map_err(TrainError::tensor("moments"));
        tensors.insert(format!("{name}.m"), layout(m)?);
        tensors.insert(format!("{name}.v"), layout(v)?);
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

/// Reads a checkpoint's state, without touching a model: which model to load for the resume
/// (the checkpoint itself, or the base of a LoRA run) depends on it.
pub fn state(dir: &Path) -> Result<TrainerState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        TrainError::file(
            &path,
            format!("not a trainer state (line {}): {e}", e.line()),
        )
    })
}

/// Checks that a run whose settings are `run` (its step and, where not known yet, its
/// `total_steps` 0) can resume from the checkpoint in `dir` whose state is `saved`: the same data
/// order, schedule, starting model, kind of training and precision. Settings a checkpoint did not
/// record are not compared.
pub fn check_compatible(
    dir: &Path,
    saved: &TrainerState,
    run: &TrainerState,
) -> Result<(), TrainError> {
    let refuse = |why: String| Err(TrainError::file(dir, why));
    if saved.seed != run.seed {
        return refuse(format!(
            "the checkpoint was made with --seed {}, not {}: the data order would differ",
            saved.seed, run.seed
        ));
    }
    if run.total_steps > 0 && saved.total_steps != run.total_steps {
        return refuse(format!(
            "the run was set to {} steps; this one comes to {} (another batch size,              accumulation, epoch count, --max-steps or data): the schedule would differ",
            saved.total_steps, run.total_steps
        ));
    }
    if let (Some(saved_lr), Some(lr)) = (saved.lr, run.lr) {
        if (saved_lr - lr).abs() > 1e-12 * saved_lr.abs().max(lr.abs()) {
            return refuse(format!(
                "the run's learning rate was {saved_lr:e}, not {lr:e}"
            ));
        }
    }
    if let (Some(saved_precision), Some(precision)) = (saved.precision, run.precision) {
        if saved_precision != precision {
            return refuse(format!(
                "the run computed in {saved_precision}, not {precision} (--precision)"
            ));
        }
    }
    if !saved.model.is_empty() && !same_model(&saved.model, &run.model) {
        return refuse(format!(
            "the run started from --model {}, not {}",
            saved.model, run.model
        ));
    }
    match (&saved.lora, &run.lora) {
        (None, None) => Ok(()),
        (Some(_), None) => refuse(
            "a LoRA checkpoint: resume it with the run's --lora-rank, --lora-alpha and \
             --lora-targets"
                .into(),
        ),
        (None, Some(_)) => refuse(
            "a full fine-tuning checkpoint: resume it without --lora-rank (or start a LoRA run \
             from it with --model)"
                .into(),
        ),
        (Some(saved), Some(asked)) => {
            let parts = |config: &LoraConfig| -> Result<Vec<&'static str>, TrainError> {
                let mut parts = config.parts()?;
                parts.sort_unstable();
                Ok(parts)
            };
            let differs = saved.rank != asked.rank
                || saved.alpha != asked.alpha
                || parts(saved)? != parts(asked)?;
            if differs {
                refuse(format!(
                    "the adapter was rank {}, alpha {}, targets {}; this run asks for rank {}, \
                     alpha {}, targets {}",
                    saved.rank,
                    saved.alpha,
                    saved.targets.join(","),
                    asked.rank,
                    asked.alpha,
                    asked.targets.join(",")
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Whether two `--model` values name the same model: the same file or directory where both are
/// paths, else the same text (a repository id or an alias).
pub fn same_model(a: &str, b: &str) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Restores a checkpoint into `model` and `optimizer` (built over `model`). A full fine-tuning
/// model was loaded from the checkpoint directory; a LoRA model from its base, and its adapter is
/// read here.
pub fn restore(
    dir: &Path,
    state: &TrainerState,
    model: &TrainModel,
    optimizer: &mut AdamW,
) -> Result<(), TrainError> {
    if state.lora.is_some() {
        lora::load_adapter(dir, &model.trainable)?;
    }
    let config = &model.trainable.model.config;
    let path = dir.join(OPTIMIZER_FILE);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(TrainError::tensor(format!("reading {}", path.display())))?;
    let mut moments: Vec<(Tensor, Tensor)> = Vec::new();
    for (name, _) in &model.trainable.vars {
        let mut take = |suffix: &str| {
            let moment = tensors.remove(&format!("{name}.{suffix}")).ok_or_else(|| {
                TrainError::file(&path, format!("no moment `{name}.{suffix}` for this model"))
            })?;
            model_layout(config, name, moment).map_err(TrainError::tensor("moments"))
        };
        moments.push((take("m")?, take("v")?));
    }
    optimizer
        .restore(moments, state.step)
        .map_err(TrainError::tensor(format!("restoring {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> TrainerState {
        TrainerState {
            step: 3,
            total_steps: 10,
            seed: 42,
            model: "smollm2-135m".into(),
            lora: None,
            lr: Some(5e-5),
            precision: Some(Precision::F32),
        }
    }

    fn refused(saved: &TrainerState, run: &TrainerState) -> String {
        check_compatible(Path::new("ckpt"), saved, run)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_resume_that_would_not_continue_the_same_run_is_refused_naming_why() {
        let saved = state();
        assert!(check_compatible(Path::new("ckpt"), &saved, &state()).is_ok());
        // Not known yet (before the data is split): not compared.
        let early = TrainerState {
            total_steps: 0,
            lr: None,
            precision: None,
            ..state()
        };
        assert!(check_compatible(Path::new("ckpt"), &saved, &early).is_ok());
        let cases = [
            (TrainerState { seed: 7, ..state() }, "--seed 42, not 7"),
            (
                TrainerState {
                    total_steps: 12,
                    ..state()
                },
                "10 steps",
            ),
            (
                TrainerState {
                    lr: Some(1e-4),
                    ..state()
                },
                "learning rate",
            ),
            (
                TrainerState {
                    precision: Some(Precision::Bf16),
                    ..state()
                },
                "computed in f32, not bf16",
            ),
            (
                TrainerState {
                    model: "other".into(),
                    ..state()
                },
                "started from --model smollm2-135m, not other",
            ),
            (
                TrainerState {
                    lora: Some(LoraConfig::default()),
                    ..state()
                },
                "a full fine-tuning checkpoint",
            ),
        ];
        for (run, why) in cases {
            let error = refused(&saved, &run);
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn lora_targets_compare_as_a_set_of_projections() {
        let lora = |targets: &[&str], rank| LoraConfig {
            rank,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            ..LoraConfig::default()
        };
        let saved = TrainerState {
            lora: Some(lora(&["q_proj", "v_proj"], 8)),
            ..state()
        };
        let same = TrainerState {
            lora: Some(lora(&["v_proj", "wq"], 8)),
            ..state()
        };
        assert!(check_compatible(Path::new("ckpt"), &saved, &same).is_ok());
        let other = TrainerState {
            lora: Some(lora(&["q_proj", "k_proj"], 8)),
            ..state()
        };
        assert!(refused(&saved, &other).contains("targets q_proj,v_proj"));
        let rank = TrainerState {
            lora: Some(lora(&["q_proj", "v_proj"], 4)),
            ..state()
        };
        assert!(refused(&saved, &rank).contains("rank 8"));
        assert!(refused(&saved, &state()).contains("a LoRA checkpoint"));
    }
}
