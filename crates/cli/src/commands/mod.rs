//! One module per subcommand.

pub mod data;
pub mod parse;
pub mod prompt;
pub mod score;
