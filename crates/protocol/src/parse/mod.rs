//! Reading a guard's output back into a [`Verdict`](crate::Verdict).
//!
//! Two parsers, for two jobs:
//! - [`paper`] reproduces the paper's evaluation script exactly (the last 300 characters, one regex
//!   per task), so that the paper's numbers can be reproduced.
//! - [`structured`] reads the whole output: the reasoning per task and step, the conclusion, and the
//!   answers block, tolerant of the ways real outputs stray from the format.

pub mod paper;
pub mod structured;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use structured::{parse_structured, ParseIssue, ParsedOutput, ReasoningStep, TaskReasoning};

/// Which parser reads an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParseMode {
    /// The paper's script: the last 300 characters, case-insensitive, first match per task.
    Paper,
    /// The whole output: reasoning, steps, conclusions and the last answers block.
    #[default]
    Structured,
}

impl ParseMode {
    /// The mode's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ParseMode::Paper => "paper",
            ParseMode::Structured => "structured",
        }
    }
}

impl fmt::Display for ParseMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ParseMode {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "paper" => Ok(ParseMode::Paper),
            "structured" => Ok(ParseMode::Structured),
            other => Err(format!(
                "unknown parse mode `{other}`: expected paper or structured"
            )),
        }
    }
}
