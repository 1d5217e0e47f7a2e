//! `guardreasoner score`: F1 tables from saved outputs.

use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;
use guardreasoner_eval::report::{self, ReportFormat};
use guardreasoner_eval::{score_outputs, ScoreMode, Weighting};

#[derive(clap::Args)]
pub struct Args {
    /// Model outputs: a directory of `<Benchmark>/generated_predictions.jsonl` (GuardReasoner's
    /// layout) or of `*.jsonl` files with `benchmark`, `index`, `output` fields, or one such file.
    outputs: PathBuf,
    /// The benchmarks directory (holding `benchmark/`). Default: $GUARDREASONER_BENCHMARKS, then
    /// `../../benchmark` beside OUTPUTS as in GuardReasoner's repository, then the data cache.
    #[arg(long)]
    benchmarks: Option<PathBuf>,
    /// How a parse failure counts: `paper` reproduces the paper's script, quirks included;
    /// `strict` counts it once as wrong.
    #[arg(long, value_enum, default_value_t = Mode::Paper)]
    mode: Mode,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// What the per-task averages weigh benchmarks by: sample counts of the files, or the counts
    /// the paper's published averages imply.
    #[arg(long, value_enum, default_value_t = Weights::Files)]
    weights: Weights,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Paper,
    Strict,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Markdown,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Weights {
    Files,
    Paper,
}

pub fn run(args: Args) -> Result<()> {
    let benchmarks = super::paths::benchmarks_dir(args.benchmarks, Some(&args.outputs))?;
    let mode = match args.mode {
        Mode::Paper => ScoreMode::Paper,
        Mode::Strict => ScoreMode::Strict,
    };
    let weighting = match args.weights {
        Weights::Files => Weighting::Files,
        Weights::Paper => Weighting::Paper,
    };
    let format = match args.format {
        Format::Table => ReportFormat::Table,
        Format::Markdown => ReportFormat::Markdown,
        Format::Json => ReportFormat::Json,
    };
    let report = score_outputs(&args.outputs, &benchmarks, mode, weighting)?;
    print!("{}", report::render(&report, format));
    if format == ReportFormat::Json {
        println!();
        // The notes are inside the JSON; repeat them where a person will see them.
        for note in report::notes(&report) {
            eprintln!("{note}");
        }
    }
    Ok(())
}
