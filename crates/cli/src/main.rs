//! `guardreasoner`: the command line. Argument parsing and printing only; the crates do the work.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Reasoning-based LLM safeguards (GuardReasoner, arXiv 2501.18492).
#[derive(Parser)]
#[command(name = "guardreasoner", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Judge a conversation with a guard model: streams the reasoning, then prints the verdict.
    Check(commands::check::Args),
    /// Run a model over the benchmarks, writing outputs that `score` reads (resumable).
    Generate(commands::generate::Args),
    /// Measure prefill and decode speed, time per guard check, and peak memory.
    Bench(commands::bench::Args),
    /// Score saved model outputs on the GuardReasoner benchmarks (F1 per benchmark and task).
    Score(commands::score::Args),
    /// Parse one guard output from stdin (or a file) and print the verdict as JSON.
    Parse(commands::parse::Args),
    /// Print the exact prompt a guard model reads for a conversation.
    Prompt(commands::prompt::Args),
    /// Download and verify the benchmark data.
    #[command(subcommand)]
    Data(commands::data::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => commands::check::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Score(args) => commands::score::run(args),
        Command::Parse(args) => commands::parse::run(args),
        Command::Prompt(args) => commands::prompt::run(args),
        Command::Data(command) => commands::data::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
