//! Preference pairs for HS-DPO: what mining writes and `train dpo` and the LLaMA-Factory export
//! read. A JSON list of `{instruction, input, chosen, rejected, weight, raw_weight, source, task}`
//! (LLaMA-Factory's pairwise alpaca columns plus ours).

use std::path::Path;

use guardreasoner_protocol::Task;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::record::write_json_atomically;
use crate::data::table;
use crate::error::TrainError;

/// One preference pair for HS-DPO, in the layout our `train dpo` and LLaMA-Factory's pairwise
/// alpaca format read (`instruction`, `input`, `chosen`, `rejected`), with its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// The instruction.
    pub instruction: String,
    /// The input block; pairs are deduplicated on it.
    pub input: String,
    /// The preferred output.
    pub chosen: String,
    /// The dispreferred output.
    pub rejected: String,
    /// The weight of the pair's DPO term, in [0.8, 1.2] once scaled.
    pub weight: f64,
    /// `#incorrect - #correct` before scaling.
    pub raw_weight: f64,
    /// The labelled source of the sample (weights are scaled per source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The task that made the sample hard.
    pub task: Task,
}

/// Reads a pairs file (JSON list or JSONL), each record checked: the four texts present, the
/// weight a finite positive number.
pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>, TrainError> {
    table::read_rows(path)?
        .into_iter()
        .enumerate()
        .map(|(index, row)| {
            let fail = |message: String| TrainError::at_record(path, index + 1, message);
            let mut row = row;
            // Pairs from elsewhere may lack our fields: weight 1, the task unknown (request).
            row.entry("weight").or_insert(Value::from(1.0));
            row.entry("raw_weight").or_insert(Value::from(0.0));
            row.entry("task").or_insert(Value::from("prompt"));
            let pair: PreferencePair = serde_json::from_value(Value::Object(row))
                .map_err(|e| fail(format!("not a preference pair: {e}")))?;
            if !(pair.weight.is_finite() && pair.weight > 0.0) {
                return Err(fail(format!(
                    "field `weight`: {} is not a positive number",
                    pair.weight
                )));
            }
            Ok(pair)
        })
        .collect()
}

/// Writes pairs as a JSON list (through a temporary file).
pub fn write_pairs(path: &Path, pairs: &[PreferencePair]) -> Result<(), TrainError> {
    let value = serde_json::to_value(pairs).expect("serializable");
    write_json_atomically(path, &value)
}
