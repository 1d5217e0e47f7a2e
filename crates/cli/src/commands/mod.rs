//! One module per subcommand, and what several share.

pub mod bench;
pub mod check;
pub mod convert;
pub mod data;
pub mod export;
pub mod generate;
pub mod mine;
pub mod model_args;
pub mod parse;
mod paths;
mod progress;
pub mod prompt;
mod resume_log;
pub mod score;
pub mod serve;
pub mod synth;
pub mod train;
