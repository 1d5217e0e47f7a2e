//! `guardreasoner score`: F1 tables from saved outputs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::ValueEnum;
use guardreasoner_eval::report::{self, ReportFormat};
use guardreasoner_eval::{score_outputs, ScoreMode, Weighting};

/// The environment variable naming the benchmarks directory.
const BENCHMARKS_ENV: &str = "GUARDREASONER_BENCHMARKS";

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
    let benchmarks = benchmarks_dir(args.benchmarks, &args.outputs)?;
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

/// Where the benchmark files are, in the order documented on `--benchmarks`.
fn benchmarks_dir(given: Option<PathBuf>, outputs: &Path) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    if let Some(dir) = std::env::var_os(BENCHMARKS_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    // GuardReasoner's repository keeps outputs in data/test/<size> beside data/benchmark.
    if let Some(root) = outputs.parent().and_then(Path::parent) {
        if root.join("benchmark").is_dir() {
            return Ok(root.to_path_buf());
        }
    }
    let cached = guardreasoner_data::benchmarks_dir(&guardreasoner_data::data_dir());
    if cached.join("benchmark").is_dir() {
        return Ok(cached);
    }
    bail!(
        "no benchmark files found: run `guardreasoner data fetch` (downloads them into {}), or pass --benchmarks DIR",
        cached.display()
    )
}
