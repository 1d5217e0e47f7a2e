//! Benchmark samples and their ground truth, read from the GuardReasoner benchmark files.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use guardreasoner_protocol::parse::parse_structured;
use guardreasoner_protocol::{Answer, Conversation, Label, Prompt, PromptFormat, Task};
use serde::Deserialize;

use crate::error::EvalError;
use crate::registry::{Benchmark, LabelSource};
use crate::wildguard;

/// The ground truth of one sample: a label per task, `None` where the benchmark has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Truth {
    /// Is the request harmful?
    pub request: Option<Label>,
    /// Did the AI refuse (the `Completion:` answer)?
    pub completion: Option<Label>,
    /// Is the response harmful?
    pub response: Option<Label>,
}

impl Truth {
    /// The label for one task.
    pub fn get(&self, task: Task) -> Option<Label> {
        match task {
            Task::Request => self.request,
            Task::Completion => self.completion,
            Task::Response => self.response,
        }
    }

    fn set(&mut self, task: Task, label: Option<Label>) {
        match task {
            Task::Request => self.request = label,
            Task::Completion => self.completion = label,
            Task::Response => self.response = label,
        }
    }
}

/// One benchmark sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The instruction the file gives (GuardReasoner's, byte for byte, in every shipped file).
    pub instruction: String,
    /// The input block: `"Human user:\n...\n\nAI assistant:\n...\n\n"`.
    pub input: String,
    /// The file's `output` field as written (the paper's scripts compare against it).
    pub output: String,
    /// The ground truth per task.
    pub truth: Truth,
}

impl Sample {
    /// What a model is given in `format` (the input block's conversation as content).
    pub fn prompt(&self, format: PromptFormat) -> Prompt {
        format.render_parts(&self.instruction, &self.input)
    }

    /// The conversation the input block holds, when it is a well-formed input block.
    pub fn conversation(&self) -> Option<Conversation> {
        Conversation::from_input_block(&self.input)
    }
}

/// A loaded benchmark: its registry entry, the file it came from, and its samples in file order.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The registry entry.
    pub benchmark: &'static Benchmark,
    /// The file the samples were read from.
    pub path: PathBuf,
    /// The samples, in file order (outputs are aligned with them line by line).
    pub samples: Vec<Sample>,
}

/// The directory that holds `benchmark/` (and, optionally, `wildguardtest/`).
///
/// Accepts that directory itself or its `benchmark/` subdirectory.
pub fn resolve_root(dir: &Path) -> Result<PathBuf, EvalError> {
    if dir.join("benchmark").is_dir() || dir.join("wildguardtest").is_dir() {
        return Ok(dir.to_path_buf());
    }
    if dir.file_name().is_some_and(|name| name == "benchmark") && dir.is_dir() {
        if let Some(parent) = dir.parent() {
            return Ok(parent.to_path_buf());
        }
    }
    Err(EvalError::file(
        dir,
        "not a benchmarks directory: expected a `benchmark/` folder inside it \
         (run `guardreasoner data fetch` to download the benchmarks)",
    ))
}

/// The file of `benchmark` under `root`, if any of its candidate paths exists.
pub fn find_file(root: &Path, benchmark: &Benchmark) -> Option<PathBuf> {
    benchmark
        .files
        .iter()
        .map(|file| root.join(file))
        .find(|path| path.is_file())
}

/// Loads a benchmark from under `root`.
pub fn load(root: &Path, benchmark: &'static Benchmark) -> Result<Dataset, EvalError> {
    let path = find_file(root, benchmark).ok_or_else(|| {
        EvalError::file(
            root,
            format!(
                "no file for benchmark {} (looked for {})",
                benchmark.name,
                benchmark.files.join(", ")
            ),
        )
    })?;
    let samples = load_file(&path, benchmark)?;
    Ok(Dataset {
        benchmark,
        path,
        samples,
    })
}

/// Loads the samples of `benchmark` from one file.
pub fn load_file(path: &Path, benchmark: &Benchmark) -> Result<Vec<Sample>, EvalError> {
    if path.extension().is_some_and(|ext| ext == "parquet") {
        return wildguard::load_parquet(path);
    }
    let records = read_json_records(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            let truth = truth_of(&record, benchmark)
                .map_err(|message| EvalError::at_record(path, index + 1, message))?;
            Ok(Sample {
                instruction: record.instruction,
                input: record.input,
                output: record.output,
                truth,
            })
        })
        .collect()
}

/// One record of a benchmark JSON file.
#[derive(Debug, Deserialize)]
struct Record {
    instruction: String,
    input: String,
    output: String,
    #[serde(default)]
    prompt_harm_label: Option<String>,
    #[serde(default)]
    response_refusal_label: Option<String>,
    #[serde(default)]
    response_harm_label: Option<String>,
}

fn read_json_records(path: &Path) -> Result<Vec<Record>, EvalError> {
    let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_reader(BufReader::new(file)).map_err(|e| {
        EvalError::at_line(
            path,
            e.line(),
            format!(
                "not a GuardReasoner benchmark file (a JSON list of {{instruction, input, output}}): {e}"
            ),
        )
    })
}

fn truth_of(record: &Record, benchmark: &Benchmark) -> Result<Truth, String> {
    let mut truth = Truth::default();
    match benchmark.labels {
        LabelSource::Plain => {
            let (task, _) = benchmark.tasks[0];
            truth.set(task, Some(label_for(task, "output", &record.output)?));
        }
        LabelSource::AnswersBlock => {
            let verdict = parse_structured(&record.output).verdict;
            for &(task, _) in benchmark.tasks {
                match verdict.get(task) {
                    Answer::Label(label) => truth.set(task, Some(label)),
                    _ => {
                        return Err(format!(
                            "field `output`: no {} label in the answers block {:?}",
                            task.answer_key(),
                            record.output
                        ))
                    }
                }
            }
        }
        LabelSource::WildGuardColumns => {
            let columns = [
                (
                    Task::Request,
                    "prompt_harm_label",
                    &record.prompt_harm_label,
                ),
                (
                    Task::Completion,
                    "response_refusal_label",
                    &record.response_refusal_label,
                ),
                (
                    Task::Response,
                    "response_harm_label",
                    &record.response_harm_label,
                ),
            ];
            for (task, field, value) in columns {
                let label = match value.as_deref() {
                    None => None,
                    Some(text) => Some(label_for(task, field, text)?),
                };
                truth.set(task, label);
            }
        }
    }
    Ok(truth)
}

/// Reads a ground-truth label of `task` from `field`.
pub(crate) fn label_for(task: Task, field: &str, text: &str) -> Result<Label, String> {
    Label::parse(text.trim())
        .filter(|label| task.accepts(label.to_owned()))
        .ok_or_else(|| {
            let [a, b] = task.labels();
            format!("field `{field}`: `{text}` is not a {task} label (expected {a} or {b})")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_file_of_the_wrong_shape_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "bad.json",
            "[\n  {\"instruction\": \"i\",\n   \"input\": \"x\"}\n]",
        );
        let err = load_file(&path, find("ToxicChat").unwrap()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("bad.json:3:"), "{message}");
        assert!(message.contains("missing field `output`"), "{message}");

        let path = write(dir.path(), "object.json", "{\"a\": 1}");
        let message = load_file(&path, find("ToxicChat").unwrap())
            .unwrap_err()
            .to_string();
        assert!(message.contains("object.json:1:"), "{message}");
    }

    #[test]
    fn a_label_of_the_wrong_task_names_the_record_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "b.json",
            r#"[{"instruction":"i","input":"x","output":"harmful"},{"instruction":"i","input":"x","output":"refusal"}]"#,
        );
        let message = load_file(&path, find("AegisSafetyTest").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("b.json: record 2: field `output`"),
            "{message}"
        );
    }

    #[test]
    fn wildguard_columns_keep_missing_labels_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "w.json",
            r#"[{"instruction":"i","input":"x","output":"o","prompt_harm_label":"harmful","response_refusal_label":null,"response_harm_label":"unharmful"}]"#,
        );
        let samples = load_file(&path, find("WildGuardTest").unwrap()).unwrap();
        assert_eq!(
            samples[0].truth,
            Truth {
                request: Some(Label::Harmful),
                completion: None,
                response: Some(Label::Unharmful)
            }
        );
    }

    #[test]
    fn resolve_root_accepts_the_root_or_its_benchmark_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("benchmark")).unwrap();
        assert_eq!(resolve_root(dir.path()).unwrap(), dir.path());
        assert_eq!(
            resolve_root(&dir.path().join("benchmark")).unwrap(),
            dir.path()
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(resolve_root(empty.path())
            .unwrap_err()
            .to_string()
            .contains("data fetch"));
    }
}
