//! WildGuardTest from its public Parquet file (allenai/wildguardmix, config `wildguardtest`).
//!
//! GuardReasoner's own WildGuardTest JSON is not public; the upstream test set is. Its rows carry
//! `prompt`, `response` and the three label columns, with nulls where annotators did not agree.
//! Each row becomes a sample in GuardReasoner's layout, the input block built by the protocol.

use std::fs::File;
use std::path::Path;

use guardreasoner_protocol::{Conversation, Task, INSTRUCTION};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::dataset::{label_for, Sample, Truth};
use crate::error::EvalError;

/// Reads the WildGuardTest Parquet file into samples, in row order.
pub(crate) fn load_parquet(path: &Path) -> Result<Vec<Sample>, EvalError> {
    let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| EvalError::file(path, format!("not a readable Parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| EvalError::file(path, format!("cannot read rows: {e}")))?;

    let mut samples = Vec::new();
    for (index, row) in rows.enumerate() {
        let record = index + 1;
        let row = row.map_err(|e| EvalError::at_record(path, record, e.to_string()))?;
        let mut prompt = None;
        let mut response = None;
        let mut truth = Truth::default();
        for (name, field) in row.get_column_iter() {
            let text = match field {
                Field::Str(text) => Some(text.as_str()),
                Field::Null => None,
                _ => continue,
            };
            let task = match name.as_str() {
                "prompt" => {
                    prompt = text.map(str::to_string);
                    continue;
                }
                "response" => {
                    response = text.map(str::to_string);
                    continue;
                }
                "prompt_harm_label" => Task::Request,
                "response_refusal_label" => Task::Completion,
                "response_harm_label" => Task::Response,
                _ => continue,
            };
            let label = text
                .map(|text| label_for(task, name, text))
                .transpose()
                .map_err(|message| EvalError::at_record(path, record, message))?;
            match task {
                Task::Request => truth.request = label,
                Task::Completion => truth.completion = label,
                Task::Response => truth.response = label,
            }
        }
        let prompt = prompt.ok_or_else(|| {
            EvalError::at_record(path, record, "column `prompt` is missing or null")
        })?;
        let conversation = Conversation { prompt, response };
        samples.push(Sample {
            instruction: INSTRUCTION.to_string(),
            input: conversation.input_block(),
            output: answers_block(&truth),
            truth,
        });
    }
    if samples.is_empty() {
        return Err(EvalError::file(path, "the Parquet file has no rows"));
    }
    Ok(samples)
}

/// The `output` field GuardReasoner's layout gives a WildGuardTest row: its labels as an answers
/// block, `None` where a label is missing.
fn answers_block(truth: &Truth) -> String {
    let label = |task| truth.get(task).map_or("None", |label| label.as_str());
    format!(
        "Answers: \nRequest: {}\nCompletion: {}\nResponse: {}\n",
        label(Task::Request),
        label(Task::Completion),
        label(Task::Response)
    )
}
