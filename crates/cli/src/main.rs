//! `guardreasoner`: the command line. Argument parsing and printing only; the crates do the work.

mod commands;
mod cpu;
mod cpu_name;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Synthesize reasoning traces for labelled samples with a teacher LLM, checked against the
    /// ground truth.
    Synth(commands::synth::Args),
    /// Mine hard samples for HS-DPO: sample k outputs per record, pair the disagreements.
    Mine(commands::mine::Args),
    /// Train a guard: reasoning SFT (`train sft`), hard-sample DPO (`train dpo`).
    #[command(subcommand)]
    Train(commands::train::Command),
    /// Convert a Hugging Face Llama model (safetensors) to GGUF for the llama.cpp backend.
    Convert(commands::convert::Args),
    /// Export a trained model to GGUF (`export gguf`).
    #[command(subcommand)]
    Export(commands::export::Command),
    /// Serve a guard over HTTP: /v1/guard, OpenAI's moderations and completions, LiteLLM's
    /// guardrail API, health and Prometheus metrics.
    Serve(commands::serve::Args),
    /// Download and verify the benchmark data.
    #[command(subcommand)]
    Data(commands::data::Command),
}

fn main() -> ExitCode {
    let mut command = Cli::command();
    // `--version` names the CPU features the build uses, asking llama.cpp for its own; only then,
    // since that initialises llama.cpp's backends.
    if std::env::args_os().any(|arg| arg == "--version") {
        // clap keeps the text for the rest of the process (it takes `&'static str`).
        let text: &'static str = Box::leak(cpu::long_version().into_boxed_str());
        command = command.long_version(text);
    }
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|error| error.exit());
    let threads = match &cli.command {
        Command::Check(args) => args.model.threads,
        Command::Generate(args) => args.model.threads,
        Command::Bench(args) => args.model.threads,
        Command::Serve(args) => args.model.threads,
        Command::Train(command) => command.threads(),
        Command::Mine(args) => args.threads(),
        _ => None,
    };
    if let Some(threads) = threads {
        // candle (through rayon and its own pools) reads its thread count from the environment,
        // once per process; set here, before any thread starts, `--threads` wins over both
        // variables. llama.cpp takes its count per context (model_args.rs).
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    }
    let result = match cli.command {
        Command::Check(args) => commands::check::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Score(args) => commands::score::run(args),
        Command::Parse(args) => commands::parse::run(args),
        Command::Prompt(args) => commands::prompt::run(args),
        Command::Data(command) => commands::data::run(command),
        Command::Train(command) => commands::train::run(command),
        Command::Mine(args) => commands::mine::run(args),
        Command::Synth(args) => commands::synth::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Export(command) => commands::export::run(command),
        Command::Serve(args) => commands::serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // The library says what does not fit; the command line says which flag helps.
            use guardreasoner_engine::EngineError;
            let too_long = error.chain().any(|cause| {
                let engine = cause.downcast_ref::<EngineError>().or_else(|| {
                    match cause.downcast_ref::<guardreasoner_guard::GuardError>() {
                        Some(guardreasoner_guard::GuardError::Engine(inner)) => Some(inner),
                        _ => None,
                    }
                });
                matches!(engine, Some(EngineError::PromptTooLong { .. }))
            });
            if too_long {
                eprintln!(
                    "hint: raise --context (tokens per conversation), or shorten the conversation"
                );
            }
            let no_template = error.chain().any(|cause| {
                matches!(
                    cause.downcast_ref::<guardreasoner_guard::GuardError>(),
                    Some(guardreasoner_guard::GuardError::NoChatTemplate)
                )
            });
            if no_template {
                eprintln!("hint: --format eval, deploy or llama3-chat need no chat template");
            }
            ExitCode::FAILURE
        }
    }
}
