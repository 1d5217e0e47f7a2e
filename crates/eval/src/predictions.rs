//! A model's saved outputs, found on disk and checked line by line against the benchmark samples.
//!
//! Two layouts are read:
//! - GuardReasoner's: `<dir>/<Benchmark>/generated_predictions.jsonl`, one line per sample in file
//!   order, with the fields `prompt`, `label`, `predict`.
//! - Ours: any `*.jsonl` file with one line per sample in any order and the fields `benchmark`,
//!   `index` (0-based position in the benchmark file), `output` (or `predict`), and optionally
//!   `prompt`. Several benchmarks may share one file.
//!
//! Every line is checked: a line that is not JSON, a prompt or label that belongs to another
//! sample, a sample with no output or with two, is an error that names the file and the line.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use guardreasoner_protocol::PromptFormat;
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::EvalError;
use crate::registry::{self, Benchmark, BENCHMARKS};

/// The file name of GuardReasoner's output layout.
pub const GUARDREASONER_FILE: &str = "generated_predictions.jsonl";

/// The file `guardreasoner generate` writes beside the outputs, recording how they were made and
/// whether the run was limited to the first samples of the benchmark.
pub const RUN_FILE: &str = "generation.json";

/// `generation.json`: how a benchmark's outputs were made. `guardreasoner generate` writes it and
/// checks it when it resumes; the scorer reads `limit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The `--model` the outputs came from.
    pub model: String,
    /// The backend that ran it.
    pub backend: String,
    /// The prompt format (a [`PromptFormat`] name, or `model-chat`).
    pub format: String,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus sampling threshold.
    pub top_p: f32,
    /// Sampling seed.
    pub seed: u64,
    /// The most new tokens per sample.
    pub max_new_tokens: usize,
    /// The run covered only the first `limit` samples.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Samples (0-based) whose prompt did not fit the context: their output is empty.
    #[serde(default)]
    pub too_long: Vec<usize>,
}

impl RunRecord {
    /// Whether `other` made its outputs the same way (a run may resume only such a record's).
    pub fn same_settings(&self, other: &RunRecord) -> bool {
        (
            &self.model,
            &self.format,
            self.temperature,
            self.top_p,
            self.seed,
            self.max_new_tokens,
        ) == (
            &other.model,
            &other.format,
            other.temperature,
            other.top_p,
            other.seed,
            other.max_new_tokens,
        )
    }

    /// Writes the record to `path`.
    pub fn write(&self, path: &Path) -> Result<(), EvalError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| EvalError::file(path, e.to_string()))?;
        fs::write(path, text).map_err(|e| EvalError::io(path, e))
    }
}

/// One line of GuardReasoner's layout (`generated_predictions.jsonl`), as its released outputs
/// and `guardreasoner generate` write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictionLine {
    /// The protocol text the model was given (instruction and input).
    pub prompt: String,
    /// The benchmark file's `output` field (the ground truth as written).
    pub label: String,
    /// The model's output.
    pub predict: String,
}

/// One line of an outputs file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// The 1-based line number in its file.
    pub line: usize,
    /// The 0-based sample index it answers.
    pub index: usize,
    /// The prompt the model was given, when the file records it.
    pub prompt: Option<String>,
    /// The ground truth the file records, when it does (GuardReasoner's `label`).
    pub label: Option<String>,
    /// The model's output.
    pub output: String,
}

/// The outputs found for one benchmark.
#[derive(Debug, Clone)]
pub struct FoundOutputs {
    /// The benchmark they answer.
    pub benchmark: &'static Benchmark,
    /// The file they were read from.
    pub path: PathBuf,
    /// The lines, in file order.
    pub lines: Vec<OutputLine>,
    /// The run covered only the first `limit` samples (from `generation.json`).
    pub limit: Option<usize>,
    /// Samples whose prompt did not fit the model's context when generated, so their outputs are
    /// empty (from `generation.json`).
    pub too_long: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct RawLine {
    #[serde(default)]
    benchmark: Option<String>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    predict: Option<String>,
    #[serde(default)]
    output: Option<String>,
}

/// Finds every benchmark's outputs under `path`: a directory in either layout, or one JSONL file of
/// ours. Returns them in registry order.
pub fn discover(path: &Path) -> Result<Vec<FoundOutputs>, EvalError> {
    if path.is_file() {
        return read_ours(path);
    }
    if !path.is_dir() {
        return Err(EvalError::file(path, "no such file or directory"));
    }
    let mut found = Vec::new();
    let entries = fs::read_dir(path).map_err(|e| EvalError::io(path, e))?;
    let mut entries: Vec<PathBuf> = entries
        .map(|entry| entry.map(|e| e.path()).map_err(|e| EvalError::io(path, e)))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        let file = entry.join(GUARDREASONER_FILE);
        if file.is_file() {
            let name = entry.file_name().unwrap_or_default().to_string_lossy();
            let Some(benchmark) = registry::find(&name) else {
                continue;
            };
            let record = read_run_record(&entry.join(RUN_FILE))?.unwrap_or_default();
            found.push(FoundOutputs {
                benchmark,
                lines: read_guardreasoner(&file)?,
                path: file,
                limit: record.limit,
                too_long: record.too_long,
            });
        } else if entry.extension().is_some_and(|ext| ext == "jsonl") && entry.is_file() {
            found.extend(read_ours(&entry)?);
        }
    }
    // One benchmark's outputs may come from only one place.
    for (i, a) in found.iter().enumerate() {
        if let Some(b) = found[i + 1..]
            .iter()
            .find(|b| b.benchmark.name == a.benchmark.name)
        {
            return Err(EvalError::file(
                &b.path,
                format!(
                    "outputs for {} also found in {}; keep one",
                    a.benchmark.name,
                    a.path.display()
                ),
            ));
        }
    }
    found.sort_by_key(|f| BENCHMARKS.iter().position(|b| b.name == f.benchmark.name));
    Ok(found)
}

/// Reads `generation.json`; `None` where there is none (GuardReasoner's released outputs).
pub fn read_run_record(path: &Path) -> Result<Option<RunRecord>, EvalError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EvalError::at_line(path, e.line(), e.to_string()))
}

fn read_lines(path: &Path) -> Result<Vec<(usize, RawLine)>, EvalError> {
    let text = fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let mut lines = Vec::new();
    let all: Vec<&str> = text.split('\n').collect();
    for (number, line) in all.iter().enumerate() {
        let line_number = number + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            // Only a final newline may leave an empty line behind.
            if all[number..].iter().all(|rest| rest.trim().is_empty()) {
                break;
            }
            return Err(EvalError::at_line(path, line_number, "empty line"));
        }
        let raw: RawLine = serde_json::from_str(line).map_err(|e| {
            EvalError::at_line(path, line_number, format!("not a JSON object: {e}"))
        })?;
        lines.push((line_number, raw));
    }
    Ok(lines)
}

fn output_of(path: &Path, line: usize, raw: &mut RawLine) -> Result<String, EvalError> {
    raw.predict
        .take()
        .or_else(|| raw.output.take())
        .ok_or_else(|| EvalError::at_line(path, line, "no `predict` or `output` field"))
}

/// Reads GuardReasoner's `generated_predictions.jsonl`: line k answers sample k.
pub fn read_guardreasoner(path: &Path) -> Result<Vec<OutputLine>, EvalError> {
    read_lines(path)?
        .into_iter()
        .enumerate()
        .map(|(index, (line, mut raw))| {
            Ok(OutputLine {
                line,
                index,
                output: output_of(path, line, &mut raw)?,
                prompt: raw.prompt,
                label: raw.label,
            })
        })
        .collect()
}

/// Reads our JSONL layout, grouping lines by benchmark.
pub fn read_ours(path: &Path) -> Result<Vec<FoundOutputs>, EvalError> {
    let mut groups: BTreeMap<usize, Vec<OutputLine>> = BTreeMap::new();
    for (line, mut raw) in read_lines(path)? {
        let name = raw
            .benchmark
            .as_deref()
            .ok_or_else(|| EvalError::at_line(path, line, "no `benchmark` field"))?;
        let position = BENCHMARKS
            .iter()
            .position(|b| Some(b.name) == registry::find(name).map(|f| f.name))
            .ok_or_else(|| EvalError::at_line(path, line, format!("unknown benchmark `{name}`")))?;
        let index = raw
            .index
            .ok_or_else(|| EvalError::at_line(path, line, "no `index` field"))?;
        groups.entry(position).or_default().push(OutputLine {
            line,
            index,
            output: output_of(path, line, &mut raw)?,
            prompt: raw.prompt,
            label: raw.label,
        });
    }
    Ok(groups
        .into_iter()
        .map(|(position, lines)| FoundOutputs {
            benchmark: &BENCHMARKS[position],
            path: path.to_path_buf(),
            lines,
            limit: None,
            too_long: Vec::new(),
        })
        .collect())
}

/// Checks `found` against the benchmark's samples and returns one output per sample, in order.
///
/// A run limited to the first samples (recorded in `generation.json`) yields that many outputs;
/// otherwise every sample must have one.
pub fn align(found: &FoundOutputs, dataset: &Dataset) -> Result<Vec<String>, EvalError> {
    let path = &found.path;
    let expected = found.limit.map_or(dataset.samples.len(), |limit| {
        limit.min(dataset.samples.len())
    });
    let samples = &dataset.samples[..expected];
    let mut outputs: Vec<Option<&OutputLine>> = vec![None; samples.len()];
    for line in &found.lines {
        let Some(sample) = samples.get(line.index) else {
            return Err(EvalError::at_line(
                path,
                line.line,
                format!(
                    "output for sample {} of {}, which has only {} samples ({}{})",
                    line.index + 1,
                    dataset.benchmark.name,
                    samples.len(),
                    dataset.path.display(),
                    if found.limit.is_some() {
                        ", as limited by generation.json"
                    } else {
                        ""
                    }
                ),
            ));
        };
        if let Some(previous) = outputs[line.index] {
            return Err(EvalError::at_line(
                path,
                line.line,
                format!(
                    "second output for sample {} of {} (the first is at line {})",
                    line.index + 1,
                    dataset.benchmark.name,
                    previous.line
                ),
            ));
        }
        if let Some(prompt) = &line.prompt {
            let matches = PromptFormat::ALL
                .iter()
                .any(|format| sample.prompt(*format).text() == *prompt);
            if !matches {
                return Err(EvalError::at_line(
                    path,
                    line.line,
                    format!(
                        "`prompt` is not the prompt of sample {} of {} ({}): the outputs are not aligned with the benchmark file",
                        line.index + 1,
                        dataset.benchmark.name,
                        dataset.path.display()
                    ),
                ));
            }
        }
        if let Some(label) = &line.label {
            if *label != sample.output {
                return Err(EvalError::at_line(
                    path,
                    line.line,
                    format!(
                        "`label` {label:?} differs from sample {}'s ground truth {:?} in {}",
                        line.index + 1,
                        sample.output,
                        dataset.path.display()
                    ),
                ));
            }
        }
        outputs[line.index] = Some(line);
    }
    if let Some(missing) = outputs.iter().position(Option::is_none) {
        let count = outputs.iter().filter(|o| o.is_none()).count();
        let last_line = found.lines.last().map_or(0, |l| l.line);
        return Err(EvalError::at_line(
            path,
            last_line + 1,
            format!(
                "{count} of {}'s {} samples have no output, the first is sample {} (the file has {} lines)",
                dataset.benchmark.name,
                samples.len(),
                missing + 1,
                found.lines.len()
            ),
        ));
    }
    Ok(outputs
        .into_iter()
        .map(|line| line.map(|l| l.output.clone()).unwrap_or_default())
        .collect())
}
