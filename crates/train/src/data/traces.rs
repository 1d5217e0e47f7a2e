//! Training records from a guard's saved outputs on labelled data: each sample's instruction and
//! input with the guard's output as the trace to learn, kept only where the output's answers equal
//! the ground truth on every task the sample labels (the check the paper skipped for its teacher's
//! traces). GuardReasoner's released outputs on the benchmarks are real reasoning traces of this
//! kind.

use guardreasoner_eval::dataset::Dataset;
use guardreasoner_protocol::Task;

use crate::data::record::answers_in;
use crate::data::TrainRecord;

/// The records, and how many outputs were left out.
#[derive(Debug, Clone, Default)]
pub struct Traces {
    /// Records whose output agrees with the ground truth.
    pub records: Vec<TrainRecord>,
    /// Outputs whose answers disagree with the ground truth, or do not parse.
    pub wrong: usize,
}

/// Pairs `dataset`'s samples with `outputs` (one per sample, in order), keeping those that are
/// right (all of them when `keep_wrong`).
pub fn from_outputs(dataset: &Dataset, outputs: &[String], keep_wrong: bool) -> Traces {
    let mut traces = Traces::default();
    for (sample, output) in dataset.samples.iter().zip(outputs) {
        let stated = answers_in(output).unwrap_or_default();
        let right = Task::ALL.iter().all(|&task| match sample.truth.get(task) {
            Some(label) => stated.get(task) == Some(label),
            None => true,
        });
        if !right && !keep_wrong {
            traces.wrong += 1;
            continue;
        }
        traces.records.push(TrainRecord {
            instruction: sample.instruction.clone(),
            input: sample.input.clone(),
            output: output.clone(),
            source: Some(dataset.benchmark.name.to_string()),
            truth: sample.truth,
        });
    }
    traces
}
