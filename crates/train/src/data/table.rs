//! Rows of a data file, whatever its format, as JSON objects.
//!
//! The labelled sources ship as Parquet (WildGuardMix, Aegis), CSV (ToxicChat), JSONL, gzipped
//! JSONL (BeaverTails) or JSON (GuardReasonerTrain, and JUDGE-BENCH's ToxicChat copy). Each is read
//! into the same shape, so that a loader names columns once and every error names the record.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::TrainError;

/// One row: column name to value.
pub type Row = Map<String, Value>;

/// Reads every row of `path`, in file order, by its extension: `.json` (a list of objects, or an
/// object holding such a list under `instances`, `data` or `rows`), `.jsonl`, `.csv`, `.parquet`;
/// `.json.gz`, `.jsonl.gz` and `.csv.gz` are decompressed first.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, TrainError> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (name, gzipped) = match name.strip_suffix(".gz") {
        Some(inner) => (inner.to_string(), true),
        None => (name, false),
    };
    let extension = name.rsplit('.').next().unwrap_or_default().to_string();
    if extension == "parquet" {
        return read_parquet(path);
    }
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let reader = BufReader::new(reader);
    match extension.as_str() {
        "json" => read_json(path, reader),
        "jsonl" | "ndjson" => read_jsonl(path, reader),
        "csv" => read_csv(path, reader),
        _ => Err(TrainError::file(
            path,
            "unknown format: expected .json, .jsonl, .csv or .parquet (optionally .gz)",
        )),
    }
}

fn read_json(path: &Path, reader: impl Read) -> Result<Vec<Row>, TrainError> {
    let document: Value = serde_json::from_reader(reader).map_err(not_json(path))?;
    let list = match document {
        Value::Array(list) => list,
        Value::Object(mut object) => ["instances", "data", "rows"]
            .iter()
            .find_map(|key| match object.remove(*key) {
                Some(Value::Array(list)) => Some(list),
                _ => None,
            })
            .ok_or_else(|| {
                TrainError::file(
                    path,
                    "expected a JSON list of records (or an object with `instances`, `data` or \
                     `rows` holding one)",
                )
            })?,
        _ => return Err(TrainError::file(path, "expected a JSON list of records")),
    };
    list.into_iter()
        .enumerate()
        .map(|(index, value)| match value {
            Value::Object(row) => Ok(row),
            other => Err(TrainError::at_record(
                path,
                index + 1,
                format!("expected an object, found {}", kind(&other)),
            )),
        })
        .collect()
}

fn read_jsonl(path: &Path, reader: impl BufRead) -> Result<Vec<Row>, TrainError> {
    let mut rows = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = index + 1;
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(row)) => rows.push(row),
            Ok(other) => {
                return Err(TrainError::at_record(
                    path,
                    record,
                    format!("line {record}: expected an object, found {}", kind(&other)),
                ))
            }
            Err(e) => {
                return Err(TrainError::at_record(
                    path,
                    record,
                    format!("line {record}: not valid JSON: {e}"),
                ))
            }
        }
    }
    Ok(rows)
}

fn read_csv(path: &Path, reader: impl Read) -> Result<Vec<Row>, TrainError> {
    let mut csv = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let headers = csv
        .headers()
        .map_err(|e| TrainError::file(path, format!("cannot read the CSV header: {e}")))?
        .clone();
    let mut rows = Vec::new();
    for (index, record) in csv.records().enumerate() {
        let record =
            record.map_err(|e| TrainError::at_record(path, index + 1, format!("bad CSV: {e}")))?;
        rows.push(
            headers
                .iter()
                .zip(record.iter())
                .map(|(name, value)| (name.to_string(), Value::String(value.to_string())))
                .collect(),
        );
    }
    Ok(rows)
}

fn read_parquet(path: &Path) -> Result<Vec<Row>, TrainError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| TrainError::file(path, format!("not a readable Parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| TrainError::file(path, format!("cannot read rows: {e}")))?;
    rows.enumerate()
        .map(|(index, row)| {
            let row = row.map_err(|e| TrainError::at_record(path, index + 1, e.to_string()))?;
            match row.to_json_value() {
                Value::Object(row) => Ok(row),
                _ => Err(TrainError::at_record(path, index + 1, "not a record")),
            }
        })
        .collect()
}

/// The error for a file that does not parse as JSON, naming where.
pub(crate) fn not_json(path: &Path) -> impl Fn(serde_json::Error) -> TrainError + '_ {
    move |e| {
        TrainError::file(
            path,
            format!(
                "not valid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    }
}

/// What a JSON value is, for error messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A column's text: `Ok(None)` when absent or null, an error naming the column when it is not a
/// string.
pub(crate) fn text<'a>(row: &'a Row, column: &str) -> Result<Option<&'a str>, String> {
    match row.get(column) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(format!(
            "field `{column}`: expected a string, found {}",
            kind(other)
        )),
    }
}

/// A required column's text.
pub(crate) fn required<'a>(row: &'a Row, column: &str) -> Result<&'a str, String> {
    text(row, column)?.ok_or_else(|| format!("field `{column}` is missing or null"))
}

/// A column read as a boolean: JSON `true`/`false`, `0`/`1`, or the strings `true`, `false`,
/// `0`, `1` in any case (CSV has no types).
pub(crate) fn boolean(row: &Row, column: &str) -> Result<Option<bool>, String> {
    let bad = |found: &str| format!("field `{column}`: expected true/false or 0/1, found {found}");
    match row.get(column) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(bad(&n.to_string())),
        },
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Some(true)),
            "false" | "0" => Ok(Some(false)),
            _ => Err(bad(&format!("`{s}`"))),
        },
        Some(other) => Err(bad(kind(other))),
    }
}
