//! The GuardReasoner protocol: what goes into a guard model and how to read what comes out.
//!
//! This crate has no ML dependency, so that anyone who runs a GuardReasoner model elsewhere (vLLM,
//! llama.cpp, a hosted endpoint) can build prompts and parse outputs with it alone.
//!
//! - [`instruction`]: the exact instruction and input block the released models were trained on.
//! - [`Conversation`] and [`PromptFormat`]: a user turn plus optional AI response, rendered in one of
//!   the three prompt formats (evaluation, deploy, llama3 chat) as a [`Prompt`]: spans of the
//!   format's text and of the conversation's, so that no control-token string a user wrote reaches
//!   the model as a control token ([`prompt`]).
//! - [`Verdict`] and the label types: the three answers a guard gives.
//! - [`choice`](mod@choice): [`choice!`], one definition per set of named options (`name`, `ALL`,
//!   `FromStr`, `Display`, serde).
//! - [`parse`]: the paper's last-300-characters extractor and a structured parser of the whole output.

// Every public item says what it is for; keep it so.
#![deny(missing_docs)]

pub mod choice;
pub mod conversation;
pub mod format;
pub mod instruction;
pub mod label;
pub mod parse;
pub mod prompt;

pub use conversation::Conversation;
pub use format::PromptFormat;
pub use instruction::INSTRUCTION;
pub use label::{Answer, Harm, Label, Refusal, Task, Verdict};
pub use prompt::{Prompt, Span, SpanKind};
