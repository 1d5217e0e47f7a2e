//! `guardreasoner score`: F1 tables from saved outputs.

use std::path::PathBuf;

use anyhow::Result;
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
    #[arg(long, default_value = "paper")]
    mode: ScoreMode,
    /// Output format: `table`, `markdown` or `json`.
    #[arg(long, default_value = "table")]
    format: ReportFormat,
    /// What the per-task averages weigh benchmarks by: sample counts of the files, or the counts
    /// the paper's published averages imply: `files` or `paper`.
    #[arg(long, default_value = "files")]
    weights: Weighting,
}

pub fn run(args: Args) -> Result<()> {
    let benchmarks = super::paths::benchmarks_dir(args.benchmarks, Some(&args.outputs))?;
    let format = args.format;
    let report = score_outputs(&args.outputs, &benchmarks, args.mode, args.weights)?;
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
