//! Hard-sample mining: which samples an R-SFT model is unsure about, the preference pair each
//! gives, and its weight (SPEC section 7, HS-DPO steps 1-5).
//!
//! The model samples k outputs per training sample. A sample is hard when its outputs are a mix of
//! correct and incorrect on a task: Request first, then Response, then Completion, the last two
//! only where the ground truth and the AI response are there; the first task that qualifies
//! decides. Chosen = the longest correct output, rejected = the longest incorrect one (by
//! characters; the first of equals). Raw weight = #incorrect - #correct on that task, min-max
//! scaled per source to [0.8, 1.2].
//!
//! Where the paper's script is silent or breaks, we decide: the last `Key: word` of an output
//! wins (the script fills a dict); labels compare ignoring case; a source whose raw weights are
//! all equal gets 1.0, the middle of the range (the script divides by zero there); weights are
//! scaled after the ensemble union, over the pairs that are trained on.

use std::collections::{BTreeMap, HashSet};

use guardreasoner_eval::dataset::Truth;
use guardreasoner_protocol::Task;
use serde::Serialize;

use crate::data::pairs::PreferencePair;
use crate::data::record::stated_answers;

/// The order tasks are checked in (SPEC section 7, step 2).
pub const CHECK_ORDER: [Task; 3] = [Task::Request, Task::Response, Task::Completion];

/// The weight range of step 4.
pub const WEIGHT_RANGE: (f64, f64) = (0.8, 1.2);

/// What makes a sample hard: the deciding task, its tally, and the pair it gives.
#[derive(Debug, Clone, PartialEq)]
pub struct HardSample {
    /// The first task whose outputs disagreed.
    pub task: Task,
    /// Outputs that got that task right.
    pub correct: usize,
    /// Outputs that got it wrong.
    pub incorrect: usize,
    /// The longest correct output.
    pub chosen: String,
    /// The longest incorrect output.
    pub rejected: String,
}

impl HardSample {
    /// `#incorrect - #correct`: the more the model got wrong, the more the pair weighs.
    pub fn raw_weight(&self) -> f64 {
        self.incorrect as f64 - self.correct as f64
    }
}

/// The three stated labels of an output, or `None` when it states fewer (such outputs are dropped,
/// as the paper's script drops them).
fn stated(output: &str) -> Option<[String; 3]> {
    let mut found: [Option<String>; 3] = [None, None, None];
    for (task, word) in stated_answers(output) {
        found[task as usize] = Some(word.to_ascii_lowercase());
    }
    let [a, b, c] = found;
    Some([a?, b?, c?])
}

/// Judges one sample's outputs; `None` when it is not hard.
pub fn judge(truth: &Truth, has_response: bool, outputs: &[String]) -> Option<HardSample> {
    let parsed: Vec<(&String, [String; 3])> = outputs
        .iter()
        .filter_map(|output| stated(output).map(|labels| (output, labels)))
        .collect();
    for task in CHECK_ORDER {
        let Some(expected) = truth.get(task) else {
            continue;
        };
        if task != Task::Request && !has_response {
            continue;
        }
        let mut correct: Vec<&String> = Vec::new();
        let mut incorrect: Vec<&String> = Vec::new();
        for (output, labels) in &parsed {
            if labels[task as usize] == expected.as_str() {
                correct.push(output);
            } else {
                incorrect.push(output);
            }
        }
        if !correct.is_empty() && !incorrect.is_empty() {
            return Some(HardSample {
                task,
                correct: correct.len(),
                incorrect: incorrect.len(),
                chosen: longest(&correct),
                rejected: longest(&incorrect),
            });
        }
    }
    None
}

/// The longest text by characters, the first of equals.
fn longest(outputs: &[&String]) -> String {
    let mut best: &String = outputs[0];
    for output in &outputs[1..] {
        if output.chars().count() > best.chars().count() {
            best = output;
        }
    }
    best.clone()
}

/// Unions the pair sets of several models (the main R-SFT model's first), keeping the first pair
/// for each input, then scales the weights per source.
pub fn union_and_weigh(sets: Vec<Vec<PreferencePair>>) -> Vec<PreferencePair> {
    let mut seen = HashSet::new();
    let mut pairs: Vec<PreferencePair> = sets
        .into_iter()
        .flatten()
        .filter(|pair| seen.insert(pair.input.clone()))
        .collect();
    scale_weights(&mut pairs);
    pairs
}

/// Min-max scales the raw weights of each source to [0.8, 1.2]; 1.0 where a source's raw weights
/// are all equal.
pub fn scale_weights(pairs: &mut [PreferencePair]) {
    let mut ranges: BTreeMap<Option<String>, (f64, f64)> = BTreeMap::new();
    for pair in pairs.iter() {
        let range = ranges
            .entry(pair.source.clone())
            .or_insert((f64::INFINITY, f64::NEG_INFINITY));
        range.0 = range.0.min(pair.raw_weight);
        range.1 = range.1.max(pair.raw_weight);
    }
    let (low, high) = WEIGHT_RANGE;
    for pair in pairs.iter_mut() {
        let (min, max) = ranges[&pair.source];
        pair.weight = if max > min {
            low + (pair.raw_weight - min) / (max - min) * (high - low)
        } else {
            (low + high) / 2.0
        };
    }
}

/// How many samples were hard, per source and deciding task, out of how many judged.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MiningReport {
    /// Samples judged per source.
    pub judged: BTreeMap<String, usize>,
    /// Hard samples per source and task.
    pub hard: BTreeMap<String, BTreeMap<Task, usize>>,
    /// Outputs dropped because they state fewer than three labels.
    pub outputs_without_labels: usize,
}

impl MiningReport {
    /// Counts one judged sample.
    pub fn add(&mut self, source: Option<&str>, outputs: &[String], hard: Option<&HardSample>) {
        let source = source.unwrap_or("(no source)").to_string();
        *self.judged.entry(source.clone()).or_default() += 1;
        self.outputs_without_labels += outputs.iter().filter(|o| stated(o).is_none()).count();
        if let Some(hard) = hard {
            *self
                .hard
                .entry(source)
                .or_default()
                .entry(hard.task)
                .or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use guardreasoner_protocol::Label;

    use super::*;

    fn output(reasoning: &str, request: &str, completion: &str, response: &str) -> String {
        format!(
            "{reasoning}\n---\n\nAnswers: \nRequest: {request}\nCompletion: {completion}\n\
             Response: {response}\n"
        )
    }

    fn truth(prompt: Label, refusal: Option<Label>, response: Option<Label>) -> Truth {
        Truth {
            request: Some(prompt),
            completion: refusal,
            response,
        }
    }

    #[test]
    fn a_mix_on_the_request_decides_and_picks_the_longest_of_each_side() {
        let outputs = vec![
            output("short", "harmful", "None", "None"),
            output("a longer right answer", "harmful", "None", "None"),
            output("wrong", "unharmful", "None", "None"),
            output("no answers block at all", "", "", ""),
        ];
        let hard = judge(&truth(Label::Harmful, None, None), false, &outputs).unwrap();
        assert_eq!(hard.task, Task::Request);
        assert_eq!((hard.correct, hard.incorrect), (2, 1));
        assert!(hard.chosen.starts_with("a longer right answer"));
        assert!(hard.rejected.starts_with("wrong"));
        assert_eq!(hard.raw_weight(), -1.0);
    }

    #[test]
    fn response_is_checked_before_completion_and_only_with_a_response() {
        let truth = truth(
            Label::Unharmful,
            Some(Label::Refusal),
            Some(Label::Unharmful),
        );
        let outputs = vec![
            output("a", "unharmful", "refusal", "unharmful"),
            output("b", "unharmful", "compliance", "harmful"),
        ];
        let hard = judge(&truth, true, &outputs).unwrap();
        assert_eq!(hard.task, Task::Response);
        // Without the AI response, only the request counts: and all agree there.
        assert_eq!(judge(&truth, false, &outputs), None);
        // All correct is not hard; all wrong is not hard either.
        let agreeing = vec![outputs[0].clone(), outputs[0].clone()];
        assert_eq!(judge(&truth, true, &agreeing), None);
    }

    #[test]
    fn weights_scale_per_source_and_equal_weights_get_the_middle() {
        let pair = |input: &str, raw: f64, source: &str| PreferencePair {
            instruction: String::new(),
            input: input.into(),
            chosen: String::new(),
            rejected: String::new(),
            weight: 0.0,
            raw_weight: raw,
            source: Some(source.into()),
            task: Task::Request,
        };
        let pairs = union_and_weigh(vec![
            vec![
                pair("x", -2.0, "A"),
                pair("y", 2.0, "A"),
                pair("z", 0.0, "A"),
            ],
            // A second model's pair on an input already seen is dropped.
            vec![
                pair("x", 2.0, "A"),
                pair("w", 2.0, "B"),
                pair("v", 2.0, "B"),
            ],
        ]);
        let weights: Vec<f64> = pairs.iter().map(|p| p.weight).collect();
        assert_eq!(pairs.len(), 5);
        for (got, want) in weights.iter().zip([0.8, 1.2, 1.0, 1.0, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{weights:?}");
        }
    }
}

/// How mining samples (SPEC section 7: k = 4, temperature 0.7, top-p 0.95, up to 2048 tokens).
#[derive(Debug, Clone)]
pub struct SampleSettings {
    /// Outputs per sample.
    pub k: usize,
    /// Sampling parameters (the seed is the run's base seed).
    pub params: guardreasoner_engine::SamplingParams,
    /// The prompt form the R-SFT model was trained on.
    pub format: guardreasoner_protocol::PromptFormat,
    /// Records per backend call (each becomes k prompts).
    pub records_per_batch: usize,
}

/// One record's sampled outputs, as the samples file keeps them (one JSON line each), so that an
/// interrupted run resumes where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Sampled {
    /// The record's index in the training file.
    pub record: usize,
    /// Its k outputs.
    pub outputs: Vec<String>,
}

/// Samples k outputs for every record not yet in `done` through `engine`, calling `on_sampled`
/// with each record's outputs as they come (to append them to the samples file).
pub fn sample(
    engine: &mut dyn guardreasoner_engine::Generate,
    records: &[crate::data::TrainRecord],
    settings: &SampleSettings,
    done: &std::collections::HashSet<usize>,
    mut on_sampled: impl FnMut(&Sampled) -> Result<(), crate::TrainError>,
) -> Result<(), crate::TrainError> {
    let todo: Vec<usize> = (0..records.len()).filter(|i| !done.contains(i)).collect();
    let k = settings.k.max(1);
    // A batch's samplers are seeded by position, so a batch holds consecutive records only.
    let runs = todo.chunk_by(|a, b| a + 1 == *b);
    let chunks = runs.flat_map(|run| run.chunks(settings.records_per_batch.max(1)));
    for chunk in chunks {
        let mut prompts = Vec::with_capacity(chunk.len() * k);
        for &index in chunk {
            let record = &records[index];
            let prompt = settings
                .format
                .render_parts(&record.instruction, &record.input);
            prompts.extend(std::iter::repeat_n(prompt, k));
        }
        let shared_prefix = chunk
            .iter()
            .all(|&i| records[i].instruction == guardreasoner_protocol::INSTRUCTION)
            .then(|| settings.format.shared_prefix());
        // Each prompt's sampler is seeded `seed + position in the batch`: offset by the first
        // record's index so that a record's samples do not depend on how records were batched.
        let mut params = settings.params.clone();
        params.seed = params.seed.wrapping_add((chunk[0] * k) as u64);
        let batch = guardreasoner_engine::Batch {
            prompts,
            params,
            shared_prefix,
        };
        let generations = engine.generate(&batch, &mut |_| {})?;
        for (position, &index) in chunk.iter().enumerate() {
            let outputs = generations[position * k..(position + 1) * k]
                .iter()
                .map(|g| g.text.clone())
                .collect();
            on_sampled(&Sampled {
                record: index,
                outputs,
            })?;
        }
    }
    Ok(())
}

/// Judges every record's samples: its pair where it is hard, and the report.
pub fn pairs_of(
    records: &[crate::data::TrainRecord],
    samples: &[Sampled],
) -> (Vec<PreferencePair>, MiningReport) {
    let mut report = MiningReport::default();
    let mut pairs = Vec::new();
    for sampled in samples {
        let Some(record) = records.get(sampled.record) else {
            continue;
        };
        let has_response = guardreasoner_protocol::Conversation::from_input_block(&record.input)
            .is_some_and(|c| c.response.is_some());
        let hard = judge(&record.truth, has_response, &sampled.outputs);
        report.add(record.source.as_deref(), &sampled.outputs, hard.as_ref());
        if let Some(hard) = hard {
            pairs.push(PreferencePair {
                instruction: record.instruction.clone(),
                input: record.input.clone(),
                raw_weight: hard.raw_weight(),
                weight: 1.0,
                chosen: hard.chosen,
                rejected: hard.rejected,
                source: record.source.clone(),
                task: hard.task,
            });
        }
    }
    (pairs, report)
}
