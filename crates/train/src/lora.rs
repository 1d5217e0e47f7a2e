//! LoRA (Hu et al. 2021, as PEFT implements it): each target projection `W` becomes
//! `W + (alpha / r) B A` with `A` `[r, in]` drawn as PEFT draws it (Kaiming-uniform, bound
//! `1 / sqrt(in)`) and `B` `[out, r]` zero, so training starts from the model itself. Only `A` and
//! `B` are trained; the base weights are frozen (dense: a gradient must pass through them to the
//! layers below, which a quantized matrix's product cannot give).

use candle_core::{DType, Device, Tensor};
use guardreasoner_engine::backends::candle::llama::{Llama, Weight};
use rand::{Rng, SeedableRng};

use crate::error::TrainError;
use crate::model::Trainable;

/// The projections LoRA can adapt, by PEFT's module names, with ours.
pub const TARGETS: [(&str, &str); 7] = [
    ("q_proj", "wq"),
    ("k_proj", "wk"),
    ("v_proj", "wv"),
    ("o_proj", "wo"),
    ("gate_proj", "w_gate"),
    ("up_proj", "w_up"),
    ("down_proj", "w_down"),
];

/// LoRA's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    /// The rank r.
    pub rank: usize,
    /// alpha; the update is scaled by alpha / r.
    pub alpha: f64,
    /// PEFT module names to adapt (`q_proj`, ..., `down_proj`).
    pub targets: Vec<String>,
    /// Seed of A's initialisation.
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: TARGETS.iter().map(|(peft, _)| peft.to_string()).collect(),
            seed: 42,
        }
    }
}

impl LoraConfig {
    /// Our part names of the targets; an error names an unknown one.
    pub fn parts(&self) -> Result<Vec<&'static str>, TrainError> {
        self.targets
            .iter()
            .map(|target| {
                TARGETS
                    .iter()
                    .find(|(peft, ours)| peft == target || ours == target)
                    .map(|(_, ours)| *ours)
                    .ok_or_else(|| {
                        TrainError::Invalid(format!(
                            "unknown LoRA target `{target}`: expected some of q_proj, k_proj, \
                             v_proj, o_proj, gate_proj, up_proj, down_proj"
                        ))
                    })
            })
            .collect()
    }
}

fn dense(weight: &Weight) -> Result<Tensor, TrainError> {
    match weight {
        Weight::Dense(t) => t.to_dtype(DType::F32),
        Weight::Quantized(q) => q.dequantize_f16().and_then(|t| t.to_dtype(DType::F32)),
        Weight::Lora { .. } => Err(candle_core::Error::Msg(
            "the model already carries an adapter".into(),
        )),
    }
    .map_err(TrainError::tensor("preparing a LoRA base weight"))
}

/// A copy of `model` with adapters on `config`'s targets in every block; the variables are the
/// adapters' A and B, named `blocks.{i}.{part}.lora_a` / `.lora_b`.
pub fn with_adapters(model: &Llama, config: &LoraConfig) -> Result<Trainable, TrainError> {
    if config.rank == 0 {
        return Err(TrainError::Invalid("LoRA rank must be at least 1".into()));
    }
    let parts = config.parts()?;
    let device = model.norm.device().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let scale = config.alpha / config.rank as f64;
    let mut adapted = model.clone();
    let mut vars = Vec::new();
    for (i, block) in adapted.blocks.iter_mut().enumerate() {
        let names = guardreasoner_engine::backends::candle::llama::Block::PROJECTIONS;
        for (part, weight) in names.iter().zip(block.projections_mut()) {
            if !parts.contains(part) {
                continue;
            }
            let base = dense(weight)?;
            let (out, input) = base.dims2().map_err(TrainError::tensor("a LoRA base"))?;
            let bound = 1.0 / (input as f64).sqrt();
            let values: Vec<f32> = (0..config.rank * input)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            let make = |values: Vec<f32>, shape: (usize, usize), device: &Device| {
                Tensor::from_vec(values, shape, device)
                    .and_then(|t| candle_core::Var::from_tensor(&t))
                    .map_err(TrainError::tensor("a LoRA matrix"))
            };
            let a = make(values, (config.rank, input), &device)?;
            let b = make(vec![0.0; out * config.rank], (out, config.rank), &device)?;
            *weight = Weight::Lora {
                base: Box::new(Weight::Dense(base)),
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale,
            };
            vars.push((format!("blocks.{i}.{part}.lora_a"), a));
            vars.push((format!("blocks.{i}.{part}.lora_b"), b));
        }
    }
    Ok(Trainable::from_parts(adapted, vars))
}

/// `W + scale * B A` as one dense matrix (an adapter merged into its base).
pub fn merged(weight: &Weight) -> candle_core::Result<Weight> {
    match weight {
        Weight::Lora { base, a, b, scale } => {
            let base = match base.as_ref() {
                Weight::Dense(t) => t.clone(),
                Weight::Quantized(q) => q.dequantize_f16()?.to_dtype(DType::F32)?,
                Weight::Lora { .. } => candle_core::bail!("nested adapters"),
            };
            Ok(Weight::Dense((base + (b.matmul(a)? * *scale)?)?))
        }
        other => Ok(other.clone()),
    }
}

/// The adapter weights' file in PEFT's layout.
const ADAPTER_FILE: &str = "adapter_model.safetensors";

/// PEFT's name for one of our adapter variables (`blocks.3.wq.lora_a` is
/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`).
fn peft_name(name: &str) -> Result<String, TrainError> {
    let not_adapter = || TrainError::Invalid(format!("`{name}` is not an adapter"));
    let (layer_part, matrix) = name.rsplit_once('.').ok_or_else(not_adapter)?;
    let hf = crate::model::hf_name(layer_part).ok_or_else(not_adapter)?;
    let hf = hf.strip_suffix(".weight").ok_or_else(not_adapter)?;
    let suffix = match matrix {
        "lora_a" => "lora_A",
        "lora_b" => "lora_B",
        _ => return Err(not_adapter()),
    };
    Ok(format!("base_model.model.{hf}.{suffix}.weight"))
}

/// The targets by PEFT's module names (`--lora-targets` also takes ours, `wq`, ...), in the
/// model's order.
fn peft_targets(config: &LoraConfig) -> Result<Vec<&'static str>, TrainError> {
    let parts = config.parts()?;
    Ok(TARGETS
        .iter()
        .filter(|(_, ours)| parts.contains(ours))
        .map(|(peft, _)| *peft)
        .collect())
}

/// Reads an adapter written by [`save_adapter`] from `dir` into `trainable`'s adapter variables
/// (made by [`with_adapters`] with the same settings); an error names a missing or misshapen
/// matrix.
pub fn load_adapter(dir: &std::path::Path, trainable: &Trainable) -> Result<(), TrainError> {
    let path = dir.join(ADAPTER_FILE);
    let device = trainable.device();
    let mut tensors = candle_core::safetensors::load(&path, &device)
        .map_err(TrainError::tensor(format!("reading {}", path.display())))?;
    for (name, var) in &trainable.vars {
        let key = peft_name(name)?;
        let tensor = tensors
            .remove(&key)
            .ok_or_else(|| TrainError::file(&path, format!("no `{key}` in the adapter")))?;
        if tensor.dims() != var.dims() {
            return Err(TrainError::file(
                &path,
                format!(
                    "`{key}` is {:?}; this run's adapter needs {:?}",
                    tensor.dims(),
                    var.dims()
                ),
            ));
        }
        crate::model::model_layout(&trainable.model.config, name, tensor)
            .and_then(|t| t.to_dtype(var.dtype()))
            .and_then(|t| var.set(&t))
            .map_err(TrainError::tensor(format!("loading `{key}`")))?;
    }
    Ok(())
}

/// Writes the adapters in PEFT's layout: `adapter_model.safetensors`
/// (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, ...) and
/// `adapter_config.json`, which `peft.PeftModel.from_pretrained` loads onto the base model.
pub fn save_adapter(
    dir: &std::path::Path,
    trainable: &Trainable,
    config: &LoraConfig,
    base_model: &str,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let model_config = &trainable.model.config;
    let mut tensors = std::collections::HashMap::new();
    for (name, var) in &trainable.vars {
        // B's rows are the base weight's output rows: in Hugging Face's order for Q and K.
        let tensor = crate::model::hf_layout(model_config, name, var.as_tensor().clone())
            .and_then(|t| t.to_device(&Device::Cpu))
            .map_err(TrainError::tensor("an adapter"))?;
        tensors.insert(peft_name(name)?, tensor);
    }
    let path = dir.join(ADAPTER_FILE);
    candle_core::safetensors::save(&tensors, &path)
        .map_err(TrainError::tensor(format!("writing {}", path.display())))?;
    let adapter_config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "target_modules": peft_targets(config)?,
        "inference_mode": true,
    });
    let path = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&adapter_config).expect("serializable") + "\n";
    std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
}
