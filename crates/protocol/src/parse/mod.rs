//! Reading a guard's output back into a [`Verdict`](crate::Verdict).
//!
//! Two parsers, for two jobs:
//! - [`paper`] reproduces the paper's evaluation script exactly (the last 300 characters, one regex
//!   per task), so that the paper's numbers can be reproduced.
//! - [`structured`] reads the whole output: the reasoning per task and step, the conclusion, and the
//!   answers block, tolerant of the ways real outputs stray from the format.

pub mod paper;
pub mod structured;

pub use structured::{parse_structured, ParseIssue, ParsedOutput, ReasoningStep, TaskReasoning};

crate::choice! {
    /// Which parser reads an output.
    #[derive(Default)]
    pub enum ParseMode("parse mode") {
        /// The paper's script: the last 300 characters, case-insensitive, first match per task.
        Paper = "paper",
        /// The whole output: reasoning, steps, conclusions and the last answers block.
        #[default]
        Structured = "structured",
    }
}
