//! `guardreasoner parse`: one model output in, its verdict out as JSON.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use guardreasoner_protocol::parse::{paper, parse_structured, ParseMode};

#[derive(clap::Args)]
pub struct Args {
    /// Read the output from this file instead of stdin.
    file: Option<PathBuf>,
    /// `structured` reads the whole output (reasoning, steps, answers); `paper` reads only the last
    /// 300 characters, as the paper's evaluation script does.
    #[arg(long, default_value_t = ParseMode::Structured)]
    mode: ParseMode,
}

pub fn run(args: Args) -> Result<()> {
    let mut output = String::new();
    match &args.file {
        Some(path) => {
            output = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut output)
                .context("cannot read stdin (is it UTF-8 text?)")?;
        }
    }
    let json = match args.mode {
        ParseMode::Structured => serde_json::to_string_pretty(&parse_structured(&output))?,
        ParseMode::Paper => {
            let verdict = paper::parse_paper(&output);
            serde_json::to_string_pretty(&serde_json::json!({
                "verdict": verdict,
                "missing": verdict.missing(),
            }))?
        }
    };
    println!("{json}");
    Ok(())
}
