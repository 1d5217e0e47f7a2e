//! The GuardReasonerTrain layout: `instruction`, `input`, `output`, plus the label fields.
//!
//! The released GuardReasonerTrain is a JSON list of `{instruction, input, output}` per split
//! (`WildGuardTrainR`, `AegisTrainR`, ...); the labels live only in the output's answers block.
//! Our files add the split as `source` and the three labels as WildGuardMix names them
//! (`prompt_harm_label`, `response_refusal_label`, `response_harm_label`), so that mining and
//! filtering need not re-parse outputs. Reading accepts both.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::OnceLock;

use guardreasoner_eval::dataset::Truth;
use guardreasoner_protocol::{Label, Task};
use regex::Regex;
use serde_json::{Map, Value};

use crate::data::table::{self, Row};
use crate::error::TrainError;

/// The field that holds each task's label.
pub const LABEL_FIELDS: [(Task, &str); 3] = [
    (Task::Request, "prompt_harm_label"),
    (Task::Completion, "response_refusal_label"),
    (Task::Response, "response_harm_label"),
];

/// One training sample in the GuardReasonerTrain layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainRecord {
    /// The instruction (GuardReasoner's, byte for byte).
    pub instruction: String,
    /// The input block: `"Human user:\n...\n\nAI assistant:\n...\n\n"`.
    pub input: String,
    /// What the model learns to write: reasoning, then the answers block.
    pub output: String,
    /// The labelled source it came from (`WildGuardTrain`, `AegisTrain`, ...), when known; hard
    /// samples are weighted per source.
    pub source: Option<String>,
    /// The ground truth; `None` where the source has no label for a task.
    pub truth: Truth,
}

impl TrainRecord {
    /// The record as a JSON object, label fields included (`null` where there is no label).
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("instruction".into(), self.instruction.clone().into());
        object.insert("input".into(), self.input.clone().into());
        object.insert("output".into(), self.output.clone().into());
        if let Some(source) = &self.source {
            object.insert("source".into(), source.clone().into());
        }
        for (task, field) in LABEL_FIELDS {
            let label = self.truth.get(task).map(|l| Value::from(l.as_str()));
            object.insert(field.into(), label.unwrap_or(Value::Null));
        }
        Value::Object(object)
    }

    /// Reads one record from a row; `source` is used where the row names none.
    pub fn from_row(row: &Row, source: Option<&str>) -> Result<Self, String> {
        let instruction = table::required(row, "instruction")?.to_string();
        let input = table::required(row, "input")?.to_string();
        let output = table::required(row, "output")?.to_string();
        let mut truth = answers_in(&output)?;
        for (task, field) in LABEL_FIELDS {
            if row.contains_key(field) {
                truth_set(
                    &mut truth,
                    task,
                    parse_label(task, field, table::text(row, field)?)?,
                );
            }
        }
        let source = table::text(row, "source")?.or(source).map(str::to_string);
        Ok(TrainRecord {
            instruction,
            input,
            output,
            source,
            truth,
        })
    }
}

/// Sets one task's label (the eval crate's `Truth` keeps its setter private).
pub(crate) fn truth_set(truth: &mut Truth, task: Task, label: Option<Label>) {
    match task {
        Task::Request => truth.request = label,
        Task::Completion => truth.completion = label,
        Task::Response => truth.response = label,
    }
}

/// A label field's value: one of the task's two labels, or `None`/null for no label. Anything
/// else is an error naming the field and the allowed values.
pub fn parse_label(task: Task, field: &str, text: Option<&str>) -> Result<Option<Label>, String> {
    let Some(text) = text.map(str::trim) else {
        return Ok(None);
    };
    if text.eq_ignore_ascii_case("none") || text.is_empty() {
        return Ok(None);
    }
    match Label::parse(text) {
        Some(label) if task.accepts(label) => Ok(Some(label)),
        _ => {
            let [a, b] = task.labels();
            Err(format!(
                "field `{field}`: `{text}` is not a {} label (expected {a}, {b} or None)",
                task.name()
            ))
        }
    }
}

/// The regex the paper's mining script reads labels with (SPEC section 7).
pub fn answer_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| Regex::new(r"(Request|Response|Completion):\s*(\w+)").expect("valid"))
}

/// The labels an output states, read as the paper's mining script reads them: every
/// `Key: word` match, the last one per key winning (the script fills a dict); `None` for keys
/// the output never states or states as `None`. A stated word that is not a label of its task
/// is an error.
pub fn answers_in(output: &str) -> Result<Truth, String> {
    let mut truth = Truth::default();
    for (task, word) in stated_answers(output) {
        let field = task.answer_key();
        truth_set(&mut truth, task, parse_label(task, field, Some(word))?);
    }
    Ok(truth)
}

/// Every `Key: word` an output states, in order.
pub(crate) fn stated_answers(output: &str) -> impl Iterator<Item = (Task, &str)> {
    answer_pattern().captures_iter(output).map(|captures| {
        let task = match &captures[1] {
            "Request" => Task::Request,
            "Completion" => Task::Completion,
            _ => Task::Response,
        };
        (task, captures.get(2).map_or("", |m| m.as_str()))
    })
}

/// Reads a GuardReasonerTrain file: a JSON list of records, a JSON object of splits (split name
/// to list, the released layout; the split becomes each record's `source`), or JSONL.
pub fn read_records(path: &Path) -> Result<Vec<TrainRecord>, TrainError> {
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let not_json = table::not_json(path);
        let document: Value = serde_json::from_str(&text).map_err(&not_json)?;
        if let Value::Object(splits) = &document {
            if !splits.is_empty() && splits.values().all(Value::is_array) {
                // Read again keeping the file's split order (a JSON map here is sorted).
                let Splits(splits) = serde_json::from_str(&text).map_err(&not_json)?;
                let mut records = Vec::new();
                for (split, list) in &splits {
                    records.extend(records_of(path, list, Some(split), records.len())?);
                }
                return Ok(records);
            }
        }
        return records_of(path, &document, None, 0);
    }
    table::read_rows(path)?
        .iter()
        .enumerate()
        .map(|(index, row)| {
            TrainRecord::from_row(row, None)
                .map_err(|message| TrainError::at_record(path, index + 1, message))
        })
        .collect()
}

/// A JSON object's entries in file order.
struct Splits(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Splits {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Splits;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of splits")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Splits, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Splits(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

fn records_of(
    path: &Path,
    list: &Value,
    split: Option<&str>,
    offset: usize,
) -> Result<Vec<TrainRecord>, TrainError> {
    let Value::Array(list) = list else {
        return Err(TrainError::file(
            path,
            "expected a JSON list of records (or an object of splits, each a list)",
        ));
    };
    list.iter()
        .enumerate()
        .map(|(index, value)| {
            let record = offset + index + 1;
            let fail = |message: String| TrainError::at_record(path, record, message);
            let Value::Object(row) = value else {
                return Err(fail(format!(
                    "expected an object, found {}",
                    table::kind(value)
                )));
            };
            TrainRecord::from_row(row, split).map_err(fail)
        })
        .collect()
}

/// Writes records as a JSON list (the GuardReasonerTrain layout, label fields included), to a
/// temporary file renamed into place, so that an interrupted write never leaves half a file.
pub fn write_records(path: &Path, records: &[TrainRecord]) -> Result<(), TrainError> {
    write_json_atomically(
        path,
        &Value::Array(records.iter().map(TrainRecord::to_json).collect()),
    )
}

/// Writes `value` as pretty JSON through a temporary file in the same directory (created if
/// missing).
pub(crate) fn write_json_atomically(path: &Path, value: &Value) -> Result<(), TrainError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    let partial = path.with_extension("json.partial");
    let file = File::create(&partial).map_err(|e| TrainError::io(&partial, e))?;
    let mut writer = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut writer, value)
        .map_err(|e| TrainError::file(&partial, e.to_string()))?;
    writer
        .write_all(b"\n")
        .and_then(|()| writer.flush())
        .map_err(|e| TrainError::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_the_mining_script_reads_them() {
        let truth = answers_in(
            "# Task 1\n...Request: harmful is my guess\n---\n\nAnswers: \nRequest: unharmful\n\
             Completion: None\nResponse: None\n",
        )
        .unwrap();
        // The last `Request:` wins, as in a dict filled in order.
        assert_eq!(truth.request, Some(Label::Unharmful));
        assert_eq!(truth.completion, None);
        assert!(
            answers_in("Answers:\nRequest: harmful\nCompletion: harmful\n")
                .unwrap_err()
                .contains("not a refusal label")
        );
    }

    #[test]
    fn label_fields_outside_the_allowed_set_are_errors_naming_the_field() {
        let error =
            parse_label(Task::Completion, "response_refusal_label", Some("maybe")).unwrap_err();
        assert!(error.contains("`response_refusal_label`"), "{error}");
        assert!(error.contains("refusal, compliance or None"), "{error}");
        assert_eq!(
            parse_label(Task::Request, "prompt_harm_label", Some("None")).unwrap(),
            None
        );
    }
}
