//! `guardreasoner synth`: reasoning traces for labelled samples from a teacher LLM behind an
//! OpenAI-compatible chat endpoint, checked against the ground truth. Resumable: every outcome is
//! appended to `<out>.synth.jsonl` as it comes; a rerun skips what is there (samples dropped for an
//! API error are asked again).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use guardreasoner_train::data::{self, sources, Source, TrainRecord};
use guardreasoner_train::synth::{self, Dropped, Outcome, Teacher};
use serde_json::json;

use super::{progress, resume_log};

#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the teacher's OpenAI-compatible server, e.g. https://api.openai.com/v1.
    #[arg(long)]
    teacher: String,
    /// The teacher model (the paper: gpt-4o).
    #[arg(long)]
    teacher_model: String,
    /// API key for the teacher.
    #[arg(long, env = "GUARDREASONER_TEACHER_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The labelled file (WildGuardMix, Aegis, BeaverTails or ToxicChat, in its usual format).
    #[arg(long = "in")]
    input: PathBuf,
    /// Which source the file is: wildguard, aegis, beavertails, toxicchat.
    #[arg(long)]
    source: Source,
    /// The records file to write (GuardReasonerTrain layout, JSON list).
    #[arg(long)]
    out: PathBuf,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Tries per sample whose answers contradict the ground truth (later ones sampled at 0.7).
    #[arg(long, default_value_t = 2)]
    answer_attempts: usize,
    #[arg(long, default_value_t = 2048)]
    max_tokens: usize,
    /// Only the first N samples.
    #[arg(long)]
    limit: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = sources::load(args.source, &args.input)?;
    let mut samples = loaded.samples;
    if let Some(limit) = args.limit {
        samples.truncate(limit);
    }
    if samples.is_empty() {
        bail!("{}: no usable samples", args.input.display());
    }
    for (reason, count) in &loaded.skipped {
        eprintln!("skipped {count} rows: {reason}");
    }
    let log = args.out.with_extension("synth.jsonl");
    let mut outcomes = read_outcomes(&log, samples.len())?;
    // Samples the endpoint failed on are asked again; kept and wrong ones are settled.
    outcomes.retain(|_, o| !matches!(o.dropped, Some(Dropped::ApiError(_))));
    let done: HashSet<usize> = outcomes.keys().copied().collect();
    let teacher = Teacher {
        url: args.teacher.clone(),
        model: args.teacher_model.clone(),
        api_key: args.api_key.clone(),
        max_tokens: args.max_tokens,
        concurrency: args.concurrency,
        answer_attempts: args.answer_attempts,
        timeout: Duration::from_secs(600),
        ..Teacher::default()
    };
    eprintln!(
        "{} samples from {} ({} done before), teacher {} at {}",
        samples.len(),
        args.input.display(),
        done.len(),
        args.teacher_model,
        args.teacher
    );
    let bar = progress::bar(samples.len() as u64, "samples");
    bar.set_position(done.len() as u64);
    let mut appender = resume_log::Appender::open(&log)?;
    synth::synthesize(&samples, &teacher, &done, |outcome| {
        appender.push(&outcome)?;
        bar.inc(1);
        outcomes.insert(outcome.index, outcome);
        Ok(())
    })?;
    bar.finish_and_clear();

    let mut records: Vec<TrainRecord> = Vec::new();
    let mut dropped: BTreeMap<&str, usize> = BTreeMap::new();
    let mut retries = 0;
    for outcome in outcomes.values() {
        retries += outcome.retries;
        match (&outcome.record, &outcome.dropped) {
            (Some(record), _) => {
                let row = record.as_object().cloned().unwrap_or_default();
                records.push(TrainRecord::from_row(&row, None).map_err(|m| {
                    anyhow::anyhow!("{}: record {}: {m}", log.display(), outcome.index)
                })?);
            }
            (None, Some(Dropped::WrongAnswer)) => *dropped.entry("wrong_answer").or_default() += 1,
            (None, _) => *dropped.entry("api_error").or_default() += 1,
        }
    }
    data::write_records(&args.out, &records)?;
    let report = json!({
        "input": args.input,
        "source": args.source.name(),
        "samples": samples.len(),
        "kept": records.len(),
        "dropped": dropped,
        "retries": retries,
        "skipped_rows": loaded.skipped,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "{} records written to {}",
        records.len(),
        args.out.display()
    );
    Ok(())
}

/// Outcomes a previous run appended, by sample.
fn read_outcomes(path: &Path, samples: usize) -> Result<BTreeMap<usize, Outcome>> {
    let outcomes = resume_log::read(
        path,
        samples,
        |o: &Outcome| o.index,
        |index| {
            format!(
                "sample {index} is beyond the {samples} samples of --in: a log of another file?"
            )
        },
    )?;
    Ok(outcomes.into_iter().map(|o| (o.index, o)).collect())
}
