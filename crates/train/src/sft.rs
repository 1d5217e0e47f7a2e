//! R-SFT: full fine-tuning on reasoning traces with the next-token loss on output tokens only
//! (SPEC section 7): AdamW, cosine schedule with warmup, gradient accumulation, gradient-norm
//! clipping, a held-out loss, checkpoints.
//!
//! The loss of a step is the mean NLL per output token over every micro-batch of the step (what
//! transformers' Trainer minimizes since it counts items across accumulation): each micro-batch
//! adds its NLL sum to the gradients, and the optimizer divides by the step's token count.

use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::Var;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::TrainError;
use crate::examples::Example;
use crate::loss::{self, Batch};
use crate::model::Trainable;
use crate::optim::{self, AdamW, AdamWConfig};

/// The R-SFT settings. Defaults are the paper's (lr 5e-5, cosine, no warmup, 3 epochs, clip 1.0)
/// with a batch that fits one machine.
#[derive(Debug, Clone, PartialEq)]
pub struct SftConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Optimizer settings (the peak learning rate among them).
    pub adamw: AdamWConfig,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    pub grad_accum: usize,
    /// Gradient-norm clipping (0 for none).
    pub max_grad_norm: f64,
    /// Data order seed.
    pub seed: u64,
    /// Held-out loss every this many steps (and at the end); 0 for only at the end.
    pub eval_every: usize,
    /// Stop after this many steps (for short runs and benchmarks).
    pub max_steps: Option<usize>,
    /// Steps already taken (resuming from a checkpoint): they are skipped, not run.
    pub start_step: usize,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            adamw: AdamWConfig::default(),
            warmup_ratio: 0.0,
            batch_size: 1,
            grad_accum: 1,
            max_grad_norm: 1.0,
            seed: 42,
            eval_every: 0,
            max_steps: None,
            start_step: 0,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLog {
    /// 1-based step.
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Progress in epochs.
    pub epoch: f64,
    /// Mean NLL per output token of the step.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (prompt and output) processed in the step.
    pub tokens: usize,
    /// Wall time of the step.
    pub duration: Duration,
    /// Held-out loss, where measured at this step.
    pub eval_loss: Option<f64>,
}

impl StepLog {
    /// Tokens per second of the step.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// The steps a run over `examples` takes.
pub fn total_steps(examples: usize, config: &SftConfig) -> usize {
    let per_step = config.batch_size.max(1) * config.grad_accum.max(1);
    let steps = examples.div_ceil(per_step) * config.epochs;
    config.max_steps.map_or(steps, |max| steps.min(max))
}

/// Trains `model` on `train` with `optimizer` (made by [`optimizer`], or restored from a
/// checkpoint), measuring the loss on `held_out`; `on_step` sees every step (a progress bar, a
/// CSV writer, a checkpoint saver), and may stop the run by returning false.
pub fn train(
    model: &Trainable,
    optimizer: &mut AdamW,
    train: &[Example],
    held_out: &[Example],
    config: &SftConfig,
    mut on_step: impl FnMut(&StepLog, &AdamW) -> Result<bool, TrainError>,
) -> Result<Vec<StepLog>, TrainError> {
    if train.is_empty() {
        return Err(TrainError::Invalid("no training examples".into()));
    }
    if config.batch_size == 0 || config.grad_accum == 0 || config.epochs == 0 {
        return Err(TrainError::Invalid(
            "batch size, accumulation and epochs must be at least 1".into(),
        ));
    }
    let vars = model.var_list();
    let total = total_steps(train.len(), config);
    let warmup = (config.warmup_ratio * total as f64).ceil() as usize;
    let per_step = config.batch_size * config.grad_accum;
    let steps_per_epoch = train.len().div_ceil(per_step);
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut logs = Vec::new();
    let mut step = 0;
    'epochs: for epoch in 0..config.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        for (index, chunk) in order.chunks(per_step).enumerate() {
            step += 1;
            if step > total {
                break 'epochs;
            }
            if step <= config.start_step {
                continue;
            }
            let started = Instant::now();
            let lr = optim::cosine_lr(config.adamw.lr, step - 1, warmup, total);
            let (grads, nll, scored, tokens) =
                accumulate(model, &vars, train, chunk, config.batch_size)?;
            let scale = 1.0 / scored.max(1) as f64;
            let grad_norm = optim::grad_norm(&grads, &vars)
                .map_err(TrainError::tensor("the gradient norm"))?
                * scale;
            let clip = if config.max_grad_norm > 0.0 {
                optim::clip_coefficient(grad_norm, config.max_grad_norm)
            } else {
                1.0
            };
            optimizer
                .step(&grads, lr, scale * clip)
                .map_err(TrainError::tensor("the optimizer step"))?;
            let last = step == total;
            let eval_loss = if !held_out.is_empty()
                && (last || (config.eval_every > 0 && step % config.eval_every == 0))
            {
                Some(evaluate(model, held_out, config.batch_size)?)
            } else {
                None
            };
            let log = StepLog {
                step,
                total_steps: total,
                epoch: epoch as f64 + (index + 1) as f64 / steps_per_epoch as f64,
                loss: nll * scale,
                lr,
                grad_norm,
                tokens,
                duration: started.elapsed(),
                eval_loss,
            };
            let go_on = on_step(&log, &optimizer)?;
            logs.push(log);
            if !go_on {
                break 'epochs;
            }
        }
    }
    Ok(logs)
}

/// A fresh optimizer over `model`'s variables.
pub fn optimizer(model: &Trainable, config: &SftConfig) -> Result<AdamW, TrainError> {
    AdamW::new(model.var_list(), config.adamw).map_err(TrainError::tensor("the optimizer"))
}

/// Runs the micro-batches of one step, summing their gradients: the gradients, the NLL sum, the
/// scored tokens and all tokens.
fn accumulate(
    model: &Trainable,
    vars: &[Var],
    data: &[Example],
    chunk: &[usize],
    batch_size: usize,
) -> Result<(GradStore, f64, usize, usize), TrainError> {
    let device = model.device();
    let mut total: Option<GradStore> = None;
    let (mut nll, mut scored, mut tokens) = (0f64, 0usize, 0usize);
    for micro in chunk.chunks(batch_size) {
        let sequences: Vec<(&[u32], usize)> = micro
            .iter()
            .map(|&i| (data[i].ids.as_slice(), data[i].output_start))
            .collect();
        let batch = Batch::new(&sequences, 0, &device).map_err(TrainError::tensor("a batch"))?;
        let loss = loss::nll_sum(&model.model, &batch).map_err(TrainError::tensor("forward"))?;
        nll += loss
            .to_scalar::<f32>()
            .map_err(TrainError::tensor("the loss"))? as f64;
        scored += micro
            .iter()
            .map(|&i| data[i].output_tokens())
            .sum::<usize>();
        tokens += micro.iter().map(|&i| data[i].ids.len()).sum::<usize>();
        let grads = loss.backward().map_err(TrainError::tensor("backward"))?;
        total = Some(match total {
            None => grads,
            Some(mut sum) => {
                for var in vars {
                    let Some(g) = grads.get(var.as_tensor()) else {
                        continue;
                    };
                    let added = match sum.get(var.as_tensor()) {
                        Some(previous) => (previous + g).map_err(TrainError::tensor("summing"))?,
                        None => g.clone(),
                    };
                    sum.insert(var.as_tensor(), added);
                }
                sum
            }
        });
    }
    Ok((
        total.expect("at least one micro-batch"),
        nll,
        scored,
        tokens,
    ))
}

/// Mean NLL per output token over `examples`.
pub fn evaluate(
    model: &Trainable,
    examples: &[Example],
    batch_size: usize,
) -> Result<f64, TrainError> {
    let device = model.device();
    // The weights as they are now, outside the autograd graph.
    let current = model.detached();
    let (mut nll, mut scored) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let sequences: Vec<(&[u32], usize)> = chunk
            .iter()
            .map(|e| (e.ids.as_slice(), e.output_start))
            .collect();
        let batch = Batch::new(&sequences, 0, &device).map_err(TrainError::tensor("a batch"))?;
        let loss = loss::nll_sum(&current, &batch).map_err(TrainError::tensor("eval"))?;
        nll += loss
            .to_scalar::<f32>()
            .map_err(TrainError::tensor("eval"))? as f64;
        scored += chunk.iter().map(Example::output_tokens).sum::<usize>();
    }
    Ok(nll / scored.max(1) as f64)
}
