//! Training data and configs for LLaMA-Factory, the engine the paper trained with, for runs that
//! outgrow one machine (DeepSpeed ZeRO-3 over many GPUs and nodes).
//!
//! Written: `rsft.json` (alpaca: instruction, input, output), `hsdpo.json` (pairwise:
//! instruction, input, chosen, rejected, sample_weight), `dataset_info.json`, `rsft.yaml` and
//! `hsdpo.yaml` with the paper's flags, DeepSpeed's `ds_z3_config.json`, and
//! `sample_weight_patch.py` + `train_weighted.py`: LLaMA-Factory drops columns it does not know,
//! so without the patch HS-DPO's per-pair weights would be lost (written against llamafactory
//! 0.9.5; `scripts/llamafactory/check_export.py` checks an export with LLaMA-Factory's own loader).

use std::path::Path;

use serde_json::{json, Value};

use crate::data::record::write_json_atomically;
use crate::data::{PreferencePair, TrainRecord};
use crate::error::TrainError;

/// The patch that carries `sample_weight` into LLaMA-Factory's DPO loss.
pub const PATCH: &str = include_str!("../../../../scripts/llamafactory/sample_weight_patch.py");
/// `llamafactory-cli train` with the patch imported in every process.
pub const LAUNCHER: &str = include_str!("../../../../scripts/llamafactory/train_weighted.py");

/// What to export and for which model.
#[derive(Debug, Clone)]
pub struct Export<'a> {
    /// R-SFT records, if any.
    pub records: Option<&'a [TrainRecord]>,
    /// HS-DPO pairs, if any.
    pub pairs: Option<&'a [PreferencePair]>,
    /// `model_name_or_path` of the R-SFT run (the paper: base Llama 3.x).
    pub base_model: String,
    /// GPUs per node the batch sizes are written for.
    pub gpus: usize,
}

/// DeepSpeed ZeRO-3 as LLaMA-Factory's examples configure it (`examples/deepspeed/`).
fn zero3() -> Value {
    json!({
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": true,
        "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000,
                 "initial_scale_power": 16, "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 3, "overlap_comm": false, "contiguous_gradients": true,
            "sub_group_size": 1e9, "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
            "stage3_gather_16bit_weights_on_model_save": true
        }
    })
}

/// Per-device batch and accumulation that give `effective` sequences per step on `gpus` GPUs.
fn batching(effective: usize, per_device: usize, gpus: usize) -> (usize, usize) {
    let accumulation = effective.div_ceil(per_device * gpus.max(1)).max(1);
    (per_device, accumulation)
}

/// Writes the export into `dir`; returns the files written.
pub fn write(dir: &Path, export: &Export<'_>) -> Result<Vec<String>, TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut written = Vec::new();
    let mut info = serde_json::Map::new();
    let write_text = |name: &str, text: &str| -> Result<(), TrainError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
    };
    let common = "finetuning_type: full\n\
                  template: llama3\n\
                  cutoff_len: 2048\n\
                  dataset_dir: .\n\
                  deepspeed: ds_z3_config.json\n\
                  lr_scheduler_type: cosine\n\
                  warmup_ratio: 0.0\n\
                  bf16: true\n\
                  logging_steps: 10\n\
                  save_strategy: epoch\n\
                  report_to: none\n\
                  ddp_timeout: 180000000\n\
                  preprocessing_num_workers: 16\n";
    if let Some(records) = export.records {
        let rows: Vec<Value> = records
            .iter()
            .map(|r| json!({"instruction": r.instruction, "input": r.input, "output": r.output}))
            .collect();
        write_json_atomically(&dir.join("rsft.json"), &Value::Array(rows))?;
        info.insert(
            "rsft".into(),
            json!({"file_name": "rsft.json",
                   "columns": {"prompt": "instruction", "query": "input", "response": "output"}}),
        );
        let (per_device, accumulation) = batching(384, 4, export.gpus);
        write_text(
            "rsft.yaml",
            &format!(
                "# R-SFT as the paper ran it (SPEC section 7): full fine-tuning, lr 5e-5, 3 epochs,\n\
                 # cosine, no warmup, effective batch 384 ({per_device} per GPU x {accumulation} \
                 accumulation x {gpus} GPUs).\n\
                 model_name_or_path: {model}\nstage: sft\ndo_train: true\n{common}\
                 dataset: rsft\nlearning_rate: 5.0e-5\nnum_train_epochs: 3.0\n\
                 per_device_train_batch_size: {per_device}\ngradient_accumulation_steps: {accumulation}\n\
                 output_dir: out/rsft\n",
                gpus = export.gpus,
                model = export.base_model,
            ),
        )?;
        written.extend(["rsft.json".to_string(), "rsft.yaml".to_string()]);
    }
    if let Some(pairs) = export.pairs {
        let rows: Vec<Value> = pairs
            .iter()
            .map(|p| {
                json!({"instruction": p.instruction, "input": p.input, "chosen": p.chosen,
                       "rejected": p.rejected, "sample_weight": p.weight})
            })
            .collect();
        write_json_atomically(&dir.join("hsdpo.json"), &Value::Array(rows))?;
        info.insert(
            "hsdpo".into(),
            json!({"file_name": "hsdpo.json", "ranking": true,
                   "columns": {"prompt": "instruction", "query": "input",
                               "chosen": "chosen", "rejected": "rejected"}}),
        );
        let (per_device, accumulation) = batching(256, 2, export.gpus);
        write_text(
            "hsdpo.yaml",
            &format!(
                "# HS-DPO as the paper ran it: sigmoid DPO, beta 0.01, pref_ftx 2.0, lr 5e-6, 2 epochs,\n\
                 # ZeRO-3, effective batch 256 ({per_device} per GPU x {accumulation} accumulation x \
                 {gpus} GPUs), the reference the\n\
                 # R-SFT model. Launch with train_weighted.py: the per-pair sample_weight needs the patch.\n\
                 model_name_or_path: out/rsft\nstage: dpo\ndo_train: true\n{common}\
                 dataset: hsdpo\npref_beta: 0.01\npref_loss: sigmoid\npref_ftx: 2.0\n\
                 learning_rate: 5.0e-6\nnum_train_epochs: 2.0\n\
                 per_device_train_batch_size: {per_device}\ngradient_accumulation_steps: {accumulation}\n\
                 output_dir: out/hsdpo\n",
                gpus = export.gpus,
            ),
        )?;
        written.extend(["hsdpo.json".to_string(), "hsdpo.yaml".to_string()]);
    }
    if info.is_empty() {
        return Err(TrainError::Invalid(
            "nothing to export: give records, pairs or both".into(),
        ));
    }
    write_json_atomically(&dir.join("dataset_info.json"), &Value::Object(info))?;
    write_json_atomically(&dir.join("ds_z3_config.json"), &zero3())?;
    write_text("sample_weight_patch.py", PATCH)?;
    write_text("train_weighted.py", LAUNCHER)?;
    write_text(
        "README.md",
        "# GuardReasoner training with LLaMA-Factory\n\n\
         Written by `guardreasoner export llamafactory`, for llamafactory 0.9.5 with DeepSpeed.\n\n\
         ```\n\
         pip install llamafactory==0.9.5 deepspeed\n\
         # one node, all its GPUs\n\
         FORCE_TORCHRUN=1 python train_weighted.py rsft.yaml\n\
         FORCE_TORCHRUN=1 python train_weighted.py hsdpo.yaml\n\
         # two nodes: the same on each, NODE_RANK=0 on the first and 1 on the second\n\
         FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 python train_weighted.py rsft.yaml\n\
         ```\n\n\
         `train_weighted.py` takes what `llamafactory-cli train` takes; use it rather than\n\
         `llamafactory-cli`, whose multi-GPU launcher starts workers that would not import\n\
         `sample_weight_patch.py`, and the pairs' weights would be dropped.\n",
    )?;
    written.extend(
        [
            "dataset_info.json",
            "ds_z3_config.json",
            "sample_weight_patch.py",
            "train_weighted.py",
            "README.md",
        ]
        .map(String::from),
    );
    Ok(written)
}
