//! Training GuardReasoner guards (SPEC section 7), on the candle Llama the engine runs.
//!
//! The data flows through the modules in the order the paper trains:
//! - [`data`]: labelled sources in, GuardReasonerTrain records (instruction, input, output,
//!   labels) in and out.
//! - [`encode`]: records to token sequences with the output's start (the loss mask).
//! - [`loss`]: the R-SFT and HS-DPO objectives; [`optim`]: AdamW and the schedule.
//! - [`model`]: the model a run starts from and the Hugging Face directory it ends as.
//! - [`trainer`]: the optimizer-step loop R-SFT and HS-DPO share; [`sft`]: the R-SFT loop.
//! - [`mine`]: the R-SFT model's sampled outputs to hard samples, preference pairs and weights.
//!
//! The engine stays an inference crate; everything that updates weights lives here.

// Every public item says what it is for; keep it so.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod curve;
pub mod data;
pub mod dpo;
pub mod encode;
pub mod error;
pub mod export;
pub mod fused;
pub mod lora;
pub mod loss;
pub mod mine;
pub mod model;
pub mod optim;
pub mod sft;
pub mod synth;
pub mod trainer;

pub use error::TrainError;
