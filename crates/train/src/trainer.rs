//! The optimizer-step loop R-SFT and HS-DPO share: epochs of a seeded shuffle, micro-batches
//! accumulated into steps, the cosine schedule, gradient-norm clipping, AdamW, a held-out
//! measurement now and then, and resuming by skipping the steps already taken.
//!
//! An objective says what one micro-batch costs: a scalar to differentiate (a sum over its
//! items) and the normalizer it contributes (scored tokens for SFT, pairs for DPO). A step's loss
//! is the sum of its micro-batches' scalars over the sum of their normalizers, so accumulation
//! gives the same gradient as one big batch.

use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::TrainError;
use crate::model::Trainable;
use crate::optim::{self, AdamW, AdamWConfig};

/// How a run steps through its data. Defaults are the paper's R-SFT ones (lr 5e-5, cosine, no
/// warmup, 3 epochs, clip 1.0) with a batch that fits one machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Passes over the data.
    pub epochs: usize,
    /// Optimizer settings (the peak learning rate among them).
    pub adamw: AdamWConfig,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    /// Items (sequences, pairs) per forward pass.
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    pub grad_accum: usize,
    /// Gradient-norm clipping (0 for none).
    pub max_grad_norm: f64,
    /// Data order seed.
    pub seed: u64,
    /// Held-out measurement every this many steps (and at the end); 0 for only at the end.
    pub eval_every: usize,
    /// Stop after this many steps.
    pub max_steps: Option<usize>,
    /// Steps already taken (resuming from a checkpoint): skipped, not run.
    pub start_step: usize,
}

impl Default for Schedule {
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

impl Schedule {
    /// The steps a run over `items` takes.
    pub fn total_steps(&self, items: usize) -> usize {
        let per_step = self.batch_size.max(1) * self.grad_accum.max(1);
        let steps = items.div_ceil(per_step) * self.epochs;
        self.max_steps.map_or(steps, |max| steps.min(max))
    }

    fn check(&self) -> Result<(), TrainError> {
        if self.batch_size == 0 || self.grad_accum == 0 || self.epochs == 0 {
            return Err(TrainError::Invalid(
                "batch size, accumulation and epochs must be at least 1".into(),
            ));
        }
        let lr_ok = self.adamw.lr.is_finite() && self.adamw.lr >= 0.0;
        if !lr_ok || !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(TrainError::Invalid(format!(
                "learning rate {} and warmup ratio {} must be >= 0 and in [0, 1]",
                self.adamw.lr, self.warmup_ratio
            )));
        }
        Ok(())
    }
}

/// What one micro-batch cost.
pub struct Micro {
    /// The scalar to differentiate: a sum over the micro-batch's items.
    pub loss: Tensor,
    /// What the step's loss is divided by (scored tokens, pairs).
    pub normalizer: f64,
    /// Tokens processed (for tokens per second).
    pub tokens: usize,
    /// Further sums the objective reports (rewards, accuracy), normalized like the loss.
    pub metrics: Vec<f64>,
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1-based step.
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Progress in epochs.
    pub epoch: f64,
    /// The step's loss (sum over normalizer).
    pub loss: f64,
    /// The objective's further metrics, normalized.
    pub metrics: Vec<f64>,
    /// The learning rate used.
    pub lr: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens processed in the step.
    pub tokens: usize,
    /// Wall time of the step.
    pub duration: Duration,
    /// The held-out measurement, where taken at this step.
    pub held_out: Option<Vec<f64>>,
}

impl Step {
    /// Tokens per second of the step.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// Runs `schedule` over `items` items: `micro` computes a micro-batch from item indices,
/// `held_out` measures the held-out set (when there is one), `on_step` sees every step and may
/// stop the run by returning false.
pub fn run(
    model: &Trainable,
    optimizer: &mut AdamW,
    items: usize,
    schedule: &Schedule,
    mut micro: impl FnMut(&[usize]) -> Result<Micro, TrainError>,
    mut held_out: Option<&mut dyn FnMut() -> Result<Vec<f64>, TrainError>>,
    mut on_step: impl FnMut(&Step, &AdamW) -> Result<bool, TrainError>,
) -> Result<Vec<Step>, TrainError> {
    schedule.check()?;
    if items == 0 {
        return Err(TrainError::Invalid("nothing to train on".into()));
    }
    let vars = model.var_list();
    let total = schedule.total_steps(items);
    let warmup = (schedule.warmup_ratio * total as f64).ceil() as usize;
    let per_step = schedule.batch_size * schedule.grad_accum;
    let steps_per_epoch = items.div_ceil(per_step);
    let mut rng = rand::rngs::StdRng::seed_from_u64(schedule.seed);
    let mut steps = Vec::new();
    let mut step = 0;
    'epochs: for epoch in 0..schedule.epochs {
        let mut order: Vec<usize> = (0..items).collect();
        order.shuffle(&mut rng);
        for (index, chunk) in order.chunks(per_step).enumerate() {
            step += 1;
            if step > total {
                break 'epochs;
            }
            if step <= schedule.start_step {
                continue;
            }
            let started = Instant::now();
            let lr = optim::cosine_lr(schedule.adamw.lr, step - 1, warmup, total);
            let mut grads: Option<GradStore> = None;
            let (mut loss, mut normalizer, mut tokens) = (0f64, 0f64, 0usize);
            let mut metrics: Vec<f64> = Vec::new();
            for batch in chunk.chunks(schedule.batch_size) {
                let result = micro(batch)?;
                loss += result
                    .loss
                    .to_scalar::<f32>()
                    .map_err(TrainError::tensor("the loss"))? as f64;
                normalizer += result.normalizer;
                tokens += result.tokens;
                metrics.resize(result.metrics.len().max(metrics.len()), 0.0);
                for (sum, value) in metrics.iter_mut().zip(&result.metrics) {
                    *sum += value;
                }
                let new = result
                    .loss
                    .backward()
                    .map_err(TrainError::tensor("backward"))?;
                grads = Some(match grads {
                    None => new,
                    Some(sum) => add_grads(sum, &new, &vars)?,
                });
            }
            let grads = grads.expect("a step has at least one micro-batch");
            let scale = 1.0 / normalizer.max(1e-12);
            let grad_norm = optim::grad_norm(&grads, &vars)
                .map_err(TrainError::tensor("the gradient norm"))?
                * scale;
            let clip = if schedule.max_grad_norm > 0.0 {
                optim::clip_coefficient(grad_norm, schedule.max_grad_norm)
            } else {
                1.0
            };
            optimizer
                .step(&grads, lr, scale * clip)
                .map_err(TrainError::tensor("the optimizer step"))?;
            drop(grads);
            let last = step == total;
            let measured = match held_out.as_mut() {
                Some(measure)
                    if last
                        || (schedule.eval_every > 0
                            && step.is_multiple_of(schedule.eval_every)) =>
                {
                    Some(measure()?)
                }
                _ => None,
            };
            let record = Step {
                step,
                total_steps: total,
                epoch: epoch as f64 + (index + 1) as f64 / steps_per_epoch as f64,
                loss: loss * scale,
                metrics: metrics.iter().map(|m| m * scale).collect(),
                lr,
                grad_norm,
                tokens,
                duration: started.elapsed(),
                held_out: measured,
            };
            let go_on = on_step(&record, optimizer)?;
            steps.push(record);
            if !go_on {
                break 'epochs;
            }
        }
    }
    Ok(steps)
}

/// `sum + new`, variable by variable.
fn add_grads(mut sum: GradStore, new: &GradStore, vars: &[Var]) -> Result<GradStore, TrainError> {
    for var in vars {
        let Some(g) = new.get(var.as_tensor()) else {
            continue;
        };
        let added = match sum.get(var.as_tensor()) {
            Some(previous) => (previous + g).map_err(TrainError::tensor("summing gradients"))?,
            None => g.clone(),
        };
        sum.insert(var.as_tensor(), added);
    }
    Ok(sum)
}
