//! Evaluation of guard models on the GuardReasoner benchmarks.
//!
//! Data flows one way through this crate:
//! [`registry`] (which benchmarks exist) → [`dataset`] (their samples and ground truth) →
//! [`predictions`] (a model's saved outputs, checked line by line against the samples) →
//! [`score`] (F1 and friends per benchmark and task, averages, headline) → [`report`] (a table,
//! markdown or JSON, beside the paper's own numbers from [`published`]).
//!
//! Nothing here depends on an ML library: the scorer works on outputs from any runtime.

// Every public item says what it is for; keep it so.
#![deny(missing_docs)]

use std::path::Path;

pub mod dataset;
pub mod error;
pub mod metrics;
pub mod predictions;
pub mod published;
pub mod registry;
pub mod report;
pub mod score;
mod wildguard;

pub use error::EvalError;
pub use registry::{Benchmark, BENCHMARKS};
pub use score::{Report, ScoreMode, Weighting};

/// Scores every benchmark whose outputs are found under `outputs` (a directory in GuardReasoner's
/// layout or ours, or one JSONL file of ours), against the benchmark files under `benchmarks`.
///
/// Every output line is checked against its sample first; the first mismatch is the error.
pub fn score_outputs(
    outputs: &Path,
    benchmarks: &Path,
    mode: ScoreMode,
    weighting: Weighting,
) -> Result<Report, EvalError> {
    let root = dataset::resolve_root(benchmarks)?;
    let found = predictions::discover(outputs)?;
    if found.is_empty() {
        return Err(EvalError::file(
            outputs,
            format!(
                "no model outputs found: expected <Benchmark>/{} folders or *.jsonl files",
                predictions::GUARDREASONER_FILE
            ),
        ));
    }
    let mut scores = Vec::new();
    for found in &found {
        let dataset = dataset::load(&root, found.benchmark)?;
        let aligned = predictions::align(found, &dataset)?;
        let too_long = found
            .too_long
            .iter()
            .filter(|&&index| index < aligned.len())
            .count();
        for &(task, _) in found.benchmark.tasks {
            let mut score = score::score_task(&dataset, &aligned, task, mode, weighting);
            score.too_long = too_long;
            scores.push(score);
        }
    }
    let order = registry::scored_pairs();
    scores.sort_by_key(|s| {
        order
            .iter()
            .position(|(b, t)| b.name == s.benchmark && *t == s.task)
    });
    Ok(Report::new(mode, weighting, scores))
}
