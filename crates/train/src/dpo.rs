//! HS-DPO: weighted sigmoid DPO against the frozen R-SFT model, with LLaMA-Factory's auxiliary
//! SFT term (SPEC section 7). The step loop is [`crate::steps`]; this file encodes pairs, caches
//! the reference log-probabilities, and says what a micro-batch of pairs costs.
//!
//! Chosen and rejected outputs of a micro-batch go through the model as one batch. The
//! reference's log-probabilities are computed once, before training: the reference never changes.

use candle_core::{Device, Tensor};
use guardreasoner_engine::backends::candle::llama::Llama;
use guardreasoner_engine::backends::candle::tokenizer::GuardTokenizer;
use guardreasoner_protocol::PromptFormat;

use crate::data::PreferencePair;
use crate::encode::{encode_one, Example, Fitted, Overlong, Text};
use crate::error::TrainError;
use crate::loss::{self, Batch, DpoSettings};
use crate::model::Trainable;
use crate::optim::AdamW;
use crate::trainer::{self, Micro, Schedule, Step};

/// One encoded pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairExample {
    /// Prompt and chosen output.
    pub chosen: Example,
    /// Prompt and rejected output.
    pub rejected: Example,
    /// The pair's weight.
    pub weight: f64,
}

/// The encoded pairs and what did not fit.
#[derive(Debug, Clone, Default)]
pub struct EncodedPairs {
    /// The pairs, in file order.
    pub pairs: Vec<PairExample>,
    /// Pairs with an output cut to fit.
    pub truncated: usize,
    /// Pairs left out.
    pub skipped: usize,
}

/// Encodes pairs as [`crate::encode::encode`] encodes records.
pub fn encode_pairs(
    tokenizer: &GuardTokenizer,
    pairs: &[PreferencePair],
    format: PromptFormat,
    end_token: Option<u32>,
    max_length: usize,
    overlong: Overlong,
) -> Result<EncodedPairs, TrainError> {
    let mut encoded = EncodedPairs::default();
    for (index, pair) in pairs.iter().enumerate() {
        let one = |output: &str| {
            let text = Text {
                instruction: &pair.instruction,
                input: &pair.input,
                output,
            };
            encode_one(tokenizer, text, format, end_token, max_length, overlong)
                .map_err(|message| TrainError::Invalid(format!("pair {}: {message}", index + 1)))
        };
        let (chosen, rejected) = (one(&pair.chosen)?, one(&pair.rejected)?);
        let truncated =
            matches!(chosen, Fitted::Truncated(_)) || matches!(rejected, Fitted::Truncated(_));
        match (chosen, rejected) {
            (
                Fitted::Whole(chosen) | Fitted::Truncated(chosen),
                Fitted::Whole(rejected) | Fitted::Truncated(rejected),
            ) => {
                encoded.truncated += usize::from(truncated);
                encoded.pairs.push(PairExample {
                    chosen,
                    rejected,
                    weight: pair.weight,
                });
            }
            _ => encoded.skipped += 1,
        }
    }
    Ok(encoded)
}

/// The reference model's sequence log-probabilities `(chosen, rejected)` of every pair.
pub fn reference_logprobs(
    reference: &Llama,
    pairs: &[PairExample],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<(f64, f64)>, TrainError> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_size.max(1)) {
        let items: Vec<&PairExample> = chunk.iter().collect();
        let (logps, _) = sequence_logprobs(reference, &items, device)?;
        let logps: Vec<f32> = logps
            .to_vec1()
            .map_err(TrainError::tensor("reference log-probabilities"))?;
        let n = items.len();
        out.extend((0..n).map(|i| (logps[i] as f64, logps[n + i] as f64)));
    }
    Ok(out)
}

/// Sums of log-probabilities over completion tokens `[2n]` (chosen first, then rejected) and the
/// chosen outputs' token counts `[n]`.
fn sequence_logprobs(
    model: &Llama,
    items: &[&PairExample],
    device: &Device,
) -> Result<(Tensor, Tensor), TrainError> {
    let sequences: Vec<(&[u32], usize)> = items
        .iter()
        .map(|p| &p.chosen)
        .chain(items.iter().map(|p| &p.rejected))
        .map(|e| (e.ids.as_slice(), e.output_start))
        .collect();
    let batch = Batch::new(&sequences, 0, device).map_err(TrainError::tensor("a batch"))?;
    let logps = loss::token_logprobs(model, &batch)
        .and_then(|t| t.sum(1))
        .map_err(TrainError::tensor("forward"))?;
    let counts = batch
        .token_counts()
        .and_then(|c| c.narrow(0, 0, items.len()))
        .map_err(TrainError::tensor("token counts"))?;
    Ok((logps, counts))
}

/// The metrics a DPO step reports beside its loss, in [`Step::metrics`] order.
pub const METRICS: [&str; 3] = ["rewards/chosen", "rewards/rejected", "rewards/accuracy"];

/// What a set of pairs costs: summed losses, and sums of the [`METRICS`].
fn pair_terms(
    model: &Llama,
    items: &[&PairExample],
    reference: &[(f64, f64)],
    settings: DpoSettings,
    device: &Device,
) -> Result<(Tensor, Vec<f64>), TrainError> {
    let n = items.len();
    let (logps, counts) = sequence_logprobs(model, items, device)?;
    let tensor = |values: Vec<f32>| {
        Tensor::from_vec(values, n, device).map_err(TrainError::tensor("a batch"))
    };
    let reference_chosen = tensor(reference.iter().map(|r| r.0 as f32).collect())?;
    let reference_rejected = tensor(reference.iter().map(|r| r.1 as f32).collect())?;
    let weights = tensor(items.iter().map(|p| p.weight as f32).collect())?;
    let t = (|| {
        let terms = loss::dpo_terms(
            &logps.narrow(0, 0, n)?,
            &logps.narrow(0, n, n)?,
            &reference_chosen,
            &reference_rejected,
            &counts,
            &weights,
            settings,
        )?;
        let chosen: Vec<f32> = terms.chosen_rewards.to_vec1()?;
        let rejected: Vec<f32> = terms.rejected_rewards.to_vec1()?;
        let accuracy = chosen.iter().zip(&rejected).filter(|(c, r)| c > r).count();
        Ok::<_, candle_core::Error>((
            terms.losses.sum_all()?,
            vec![
                chosen.iter().map(|&x| x as f64).sum(),
                rejected.iter().map(|&x| x as f64).sum(),
                accuracy as f64,
            ],
        ))
    })();
    t.map_err(TrainError::tensor("the DPO loss"))
}

/// Trains `model` on `pairs` (reference log-probabilities `reference`, same order); the held-out
/// pairs report `[loss, rewards/chosen, rewards/rejected, rewards/accuracy]`.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &Trainable,
    optimizer: &mut AdamW,
    pairs: &[PairExample],
    reference: &[(f64, f64)],
    held_out: (&[PairExample], &[(f64, f64)]),
    settings: DpoSettings,
    schedule: &Schedule,
    on_step: impl FnMut(&Step, &AdamW) -> Result<bool, TrainError>,
) -> Result<Vec<Step>, TrainError> {
    if reference.len() != pairs.len() || held_out.0.len() != held_out.1.len() {
        return Err(TrainError::Invalid(
            "every pair needs its reference log-probabilities".into(),
        ));
    }
    let device = model.device();
    let micro = |indices: &[usize]| -> Result<Micro, TrainError> {
        let items: Vec<&PairExample> = indices.iter().map(|&i| &pairs[i]).collect();
        let references: Vec<(f64, f64)> = indices.iter().map(|&i| reference[i]).collect();
        let step_model = model
            .step_model()
            .map_err(TrainError::tensor("the step's model"))?;
        let (loss, metrics) = pair_terms(&step_model, &items, &references, settings, &device)?;
        Ok(Micro {
            loss,
            normalizer: items.len() as f64,
            tokens: items
                .iter()
                .map(|p| p.chosen.ids.len() + p.rejected.ids.len())
                .sum(),
            metrics,
        })
    };
    let mut measure = || -> Result<Vec<f64>, TrainError> {
        let current = model.detached();
        let (mut loss, mut sums) = (0f64, vec![0f64; METRICS.len()]);
        for (chunk, references) in held_out
            .0
            .chunks(schedule.batch_size.max(1))
            .zip(held_out.1.chunks(schedule.batch_size.max(1)))
        {
            let items: Vec<&PairExample> = chunk.iter().collect();
            let (l, m) = pair_terms(&current, &items, references, settings, &device)?;
            loss += l
                .to_scalar::<f32>()
                .map_err(TrainError::tensor("held-out"))? as f64;
            for (s, v) in sums.iter_mut().zip(m) {
                *s += v;
            }
        }
        let n = held_out.0.len().max(1) as f64;
        Ok(std::iter::once(loss / n)
            .chain(sums.into_iter().map(|s| s / n))
            .collect())
    };
    let held_out_fn: Option<&mut dyn FnMut() -> Result<Vec<f64>, TrainError>> =
        if held_out.0.is_empty() {
            None
        } else {
            Some(&mut measure)
        };
    trainer::run(
        model,
        optimizer,
        pairs.len(),
        schedule,
        micro,
        held_out_fn,
        on_step,
    )
}
