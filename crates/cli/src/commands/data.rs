//! `guardreasoner data`: download, verify and locate the benchmark data.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Subcommand, ValueEnum};
use guardreasoner_data::fetch::is_valid;
use guardreasoner_data::manifest::{files, Group};
use guardreasoner_data::{data_dir, fetch, FetchEvent, FetchOptions, FetchOutcome, Source};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Subcommand)]
pub enum Command {
    /// Download the benchmark files (and GuardReasoner's released outputs) from their public
    /// origin, verify each against its recorded SHA-256, resume partial downloads and replace bad
    /// files.
    Fetch(FetchArgs),
    /// Check every file in the cache against its recorded SHA-256.
    Verify(DirArgs),
    /// Print where the data cache is.
    Path(DirArgs),
}

#[derive(clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Which files: the benchmarks, GuardReasoner's released outputs, or both.
    #[arg(long, value_enum, default_value_t = Which::All)]
    only: Which,
    /// Download from a mirror of the cache layout (`<URL>/benchmarks/...`) instead of the origin.
    #[arg(long, env = "GUARDREASONER_DATA_MIRROR")]
    mirror: Option<String>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct DirArgs {
    /// The cache directory. Default: $GUARDREASONER_DATA_DIR, else the user cache directory.
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl DirArgs {
    fn resolve(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(data_dir)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    All,
    Benchmarks,
    Outputs,
}

impl Which {
    fn groups(self) -> Vec<Group> {
        match self {
            Which::All => vec![Group::Benchmarks, Group::Outputs],
            Which::Benchmarks => vec![Group::Benchmarks],
            Which::Outputs => vec![Group::Outputs],
        }
    }
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Fetch(args) => run_fetch(args),
        Command::Verify(args) => run_verify(args),
        Command::Path(args) => {
            println!("{}", args.resolve().display());
            Ok(())
        }
    }
}

fn run_fetch(args: FetchArgs) -> Result<()> {
    let dir = args.dir.resolve();
    let wanted = files(&args.only.groups());
    let options = FetchOptions {
        source: args.mirror.map_or(Source::Origin, Source::Mirror),
        ..FetchOptions::default()
    };
    let total: u64 = wanted.iter().map(|f| f.bytes).sum();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut finished_bytes = 0;
    let outcomes = fetch(&wanted, &dir, &options, &mut |event| match event {
        FetchEvent::Started { file, .. } => bar.set_message(file.path.clone()),
        FetchEvent::Progress { done, .. } => bar.set_position(finished_bytes + done),
        FetchEvent::Finished { file, .. } => {
            finished_bytes += file.bytes;
            bar.set_position(finished_bytes);
        }
    })?;
    bar.finish_and_clear();
    if !args.quiet {
        let count = |wanted: fn(&FetchOutcome) -> bool| {
            outcomes
                .iter()
                .filter(|(_, outcome)| wanted(outcome))
                .count()
        };
        println!(
            "{} files in {}: {} downloaded, {} resumed, {} replaced (failed verification), {} already valid",
            outcomes.len(),
            dir.display(),
            count(|o| *o == FetchOutcome::Downloaded),
            count(|o| matches!(o, FetchOutcome::Resumed { .. })),
            count(|o| *o == FetchOutcome::Replaced),
            count(|o| *o == FetchOutcome::AlreadyValid),
        );
    }
    Ok(())
}

fn run_verify(args: DirArgs) -> Result<()> {
    let dir = args.resolve();
    let mut bad = 0;
    for file in files(&[Group::Benchmarks, Group::Outputs]) {
        let path = dir.join(&file.path);
        let status = if !path.exists() {
            "missing"
        } else if is_valid(&path, file) {
            "ok"
        } else {
            bad += 1;
            "BAD (run `guardreasoner data fetch` to replace it)"
        };
        println!("{status:>7}  {}", path.display());
    }
    if bad > 0 {
        bail!("{bad} files failed verification");
    }
    Ok(())
}
