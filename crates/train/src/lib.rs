//! Training GuardReasoner guards (SPEC section 7), on the candle Llama the engine runs.
//!
//! The data flows through the modules in the order the paper trains:
//! - [`data`]: labelled sources in, GuardReasonerTrain records (instruction, input, output,
//!   labels) in and out.
//! - [`mine`]: the R-SFT model's sampled outputs to hard samples, preference pairs and weights.
//!
//! The engine stays an inference crate; everything that updates weights lives here.

pub mod data;
pub mod error;
pub mod loss;
pub mod mine;
pub mod optim;

pub use error::TrainError;
