//! R-SFT: full fine-tuning on reasoning traces, the next-token loss on output tokens only (SPEC
//! section 7). The step loop is [`crate::steps`]; this file says what a micro-batch costs.
//!
//! The loss of a step is the mean NLL per output token over all of the step's micro-batches
//! (what transformers' Trainer minimizes, counting items across accumulation).

use crate::encode::Example;
use crate::error::TrainError;
use crate::loss::{self, Batch};
use crate::model::Trainable;
use crate::optim::AdamW;
use crate::trainer::{self, Micro, Schedule, Step};

/// Trains `model` on `train`, the held-out NLL measured on `held_out` (first entry of
/// [`Step::held_out`]); see [`trainer::run`] for `on_step`.
pub fn train(
    model: &Trainable,
    optimizer: &mut AdamW,
    train: &[Example],
    held_out: &[Example],
    schedule: &Schedule,
    on_step: impl FnMut(&Step, &AdamW) -> Result<bool, TrainError>,
) -> Result<Vec<Step>, TrainError> {
    let device = model.device();
    let micro = |indices: &[usize]| -> Result<Micro, TrainError> {
        let items: Vec<&Example> = indices.iter().map(|&i| &train[i]).collect();
        let batch = batch_of(&items, &device)?;
        let loss = model
            .step_model()
            .and_then(|step_model| loss::nll_sum(&step_model, &batch))
            .map_err(TrainError::tensor("forward"))?;
        Ok(Micro {
            loss,
            normalizer: items.iter().map(|e| e.output_tokens()).sum::<usize>() as f64,
            tokens: items.iter().map(|e| e.ids.len()).sum(),
            metrics: Vec::new(),
        })
    };
    let mut measure = || -> Result<Vec<f64>, TrainError> {
        Ok(vec![evaluate(model, held_out, schedule.batch_size)?])
    };
    let held_out_fn: Option<&mut dyn FnMut() -> Result<Vec<f64>, TrainError>> =
        if held_out.is_empty() {
            None
        } else {
            Some(&mut measure)
        };
    trainer::run(
        model,
        optimizer,
        train.len(),
        schedule,
        micro,
        held_out_fn,
        on_step,
    )
}

/// A fresh optimizer over `model`'s variables.
pub fn optimizer(model: &Trainable, schedule: &Schedule) -> Result<AdamW, TrainError> {
    AdamW::new(model.var_list(), schedule.adamw).map_err(TrainError::tensor("the optimizer"))
}

fn batch_of(items: &[&Example], device: &candle_core::Device) -> Result<Batch, TrainError> {
    let sequences: Vec<(&[u32], usize)> = items
        .iter()
        .map(|e| (e.ids.as_slice(), e.output_start))
        .collect();
    Batch::new(&sequences, 0, device).map_err(TrainError::tensor("a batch"))
}

/// Mean NLL per output token over `examples`, with the weights as they are now (outside the
/// autograd graph).
pub fn evaluate(
    model: &Trainable,
    examples: &[Example],
    batch_size: usize,
) -> Result<f64, TrainError> {
    let device = model.device();
    let current = model.detached();
    let (mut nll, mut scored) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let items: Vec<&Example> = chunk.iter().collect();
        let batch = batch_of(&items, &device)?;
        let loss = loss::nll_sum(&current, &batch).map_err(TrainError::tensor("held-out loss"))?;
        nll += loss
            .to_scalar::<f32>()
            .map_err(TrainError::tensor("held-out loss"))? as f64;
        scored += chunk.iter().map(Example::output_tokens).sum::<usize>();
    }
    Ok(nll / scored.max(1) as f64)
}
