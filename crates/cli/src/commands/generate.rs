//! `guardreasoner generate`: run a model over the benchmarks, writing GuardReasoner's output layout
//! so that `guardreasoner score` scores it. Resumable.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use guardreasoner_engine::{Batch, EngineError, Generate};
use guardreasoner_eval::dataset::{self, Sample};
use guardreasoner_eval::predictions::{
    read_run_record, PredictionLine, RunRecord, GUARDREASONER_FILE, RUN_FILE,
};
use guardreasoner_eval::registry::{self, BENCHMARKS};
use guardreasoner_guard::{InputFormat, UnparseablePolicy};
use guardreasoner_protocol::{Prompt, PromptFormat};

use super::model_args::{load_engine, GenerationArgs, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    generation: GenerationArgs,
    /// Benchmarks to run, comma-separated (default: every benchmark found).
    #[arg(long, value_delimiter = ',')]
    benchmarks: Vec<String>,
    /// Only the first N samples of each benchmark (recorded, so that `score` scores just those).
    #[arg(long)]
    limit: Option<usize>,
    /// Output directory: `<out>/<Benchmark>/generated_predictions.jsonl`.
    #[arg(long)]
    out: PathBuf,
    /// The benchmarks directory (holding `benchmark/`); default as for `score`.
    #[arg(long)]
    benchmarks_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let root = dataset::resolve_root(&super::paths::benchmarks_dir(
        args.benchmarks_dir.clone(),
        None,
    )?)?;
    let chosen: Vec<_> = if args.benchmarks.is_empty() {
        BENCHMARKS
            .iter()
            .filter(|b| dataset::find_file(&root, b).is_some())
            .collect()
    } else {
        args.benchmarks
            .iter()
            .map(|name| {
                registry::find(name).with_context(|| {
                    format!(
                        "unknown benchmark `{name}`; the benchmarks are {}",
                        BENCHMARKS
                            .iter()
                            .map(|b| b.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    let datasets = chosen
        .into_iter()
        .map(|benchmark| dataset::load(&root, benchmark).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;

    let format = args.generation.format.protocol();
    let mut plans = Vec::new();
    for data in &datasets {
        let dir = args.out.join(data.benchmark.name);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let target = args
            .limit
            .map_or(data.samples.len(), |l| l.min(data.samples.len()));
        let done = resume_point(&dir.join(GUARDREASONER_FILE), &data.samples, format)?;
        plans.push((data, dir, target, done));
    }

    let mut engine = load_engine(&args.model)?;
    // The guard's own rendering: the protocol text, inside the model's chat template with
    // `--format model-chat` (the policy plays no part in generating).
    let guard = args.generation.guard_config(UnparseablePolicy::Error);
    if guard.format == InputFormat::ModelChat && engine.chat_template().is_none() {
        bail!("--format model-chat: the model's files carry no chat template");
    }
    let record_base = RunRecord {
        model: args.model.model.clone(),
        backend: engine.info().backend.to_string(),
        format: guard.format.name().to_string(),
        temperature: args.generation.temperature,
        top_p: args.generation.top_p,
        seed: args.generation.seed,
        max_new_tokens: args.generation.max_new_tokens,
        limit: args.limit,
        too_long: Vec::new(),
    };
    let remaining: usize = plans
        .iter()
        .map(|(_, _, target, done)| target.saturating_sub(*done))
        .sum();
    let bar = super::progress::bar(remaining as u64, "samples");
    let started = Instant::now();
    let mut generated_tokens = 0usize;
    for (data, dir, target, done) in plans {
        let record_path = dir.join(RUN_FILE);
        let mut record = check_record(&record_path, &record_base)?;
        if done >= target {
            record.write(&record_path)?;
            continue;
        }
        let predictions = dir.join(GUARDREASONER_FILE);
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&predictions)
            .with_context(|| format!("cannot write {}", predictions.display()))?;
        let samples = &data.samples[done..target];
        for (chunk_index, chunk) in samples.chunks(args.model.batch_size.max(1)).enumerate() {
            let first = done + chunk_index * args.model.batch_size.max(1);
            // The prompt recorded is the protocol's text; with model-chat the model reads it
            // inside its chat template.
            let prompts: Vec<Prompt> = chunk.iter().map(|s| s.prompt(format)).collect();
            let model_inputs: Vec<Prompt> = prompts
                .iter()
                .map(|p| guard.wrap(p.clone(), engine.chat_template()))
                .collect::<Result<_, _>>()?;
            let mut outputs = vec![String::new(); chunk.len()];
            let mut runnable = Vec::new();
            for (i, input) in model_inputs.iter().enumerate() {
                match engine.check_fits(i, input) {
                    Ok(()) => runnable.push(i),
                    Err(EngineError::PromptTooLong { .. }) => record.too_long.push(first + i),
                    Err(error) => return Err(error.into()),
                }
            }
            if !runnable.is_empty() {
                let batch = Batch {
                    prompts: runnable.iter().map(|&i| model_inputs[i].clone()).collect(),
                    params: guard.params.clone(),
                    shared_prefix: guard.shared_prefix(),
                };
                let generations = engine.generate(&batch, &mut |_| {})?;
                for (&i, generation) in runnable.iter().zip(generations) {
                    generated_tokens += generation.generated_tokens;
                    outputs[i] = generation.text;
                }
            }
            let mut text = String::new();
            for ((sample, prompt), output) in chunk.iter().zip(prompts).zip(outputs) {
                let line = PredictionLine {
                    prompt: prompt.text(),
                    label: sample.output.clone(),
                    predict: output,
                };
                text.push_str(&serde_json::to_string(&line)?);
                text.push('\n');
            }
            // One write per batch, so an interruption leaves whole lines (or one partial line,
            // which the next run drops and redoes).
            out.write_all(text.as_bytes())?;
            out.flush()?;
            bar.inc(chunk.len() as u64);
            let seconds = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{} {:.1} tokens/s",
                data.benchmark.name,
                generated_tokens as f64 / seconds
            ));
        }
        record.write(&record_path)?;
        if !record.too_long.is_empty() {
            eprintln!(
                "warning: {}: {} prompts did not fit the context of {} tokens; their outputs are empty (samples {:?})",
                data.benchmark.name,
                record.too_long.len(),
                engine.info().context_length,
                record.too_long
            );
        }
    }
    bar.finish_and_clear();
    eprintln!(
        "done: {remaining} samples, {generated_tokens} tokens in {:.1}s; score with `guardreasoner score {}`",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// How many samples `path` already answers. A partial last line (an interrupted write) is cut
/// off; a line that answers the wrong sample is an error.
fn resume_point(path: &Path, samples: &[Sample], format: PromptFormat) -> Result<usize> {
    let Ok(bytes) = fs::read(path) else {
        return Ok(0);
    };
    let mut valid_end = 0;
    let mut count = 0;
    for (index, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        if !line.ends_with(b"\n") {
            break;
        }
        let Ok(written) = serde_json::from_slice::<PredictionLine>(line) else {
            bail!(
                "{}:{}: not a line of {GUARDREASONER_FILE} (prompt, label, predict); remove the file to start over",
                path.display(),
                index + 1
            );
        };
        let expected = samples.get(index).map(|s| s.prompt(format).text());
        if Some(written.prompt) != expected {
            bail!(
                "{}:{}: this line is not sample {} of this benchmark in the {} format; the directory holds another run (use another --out)",
                path.display(),
                index + 1,
                index + 1,
                format
            );
        }
        valid_end += line.len();
        count += 1;
    }
    if valid_end < bytes.len() {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(valid_end as u64)?;
    }
    Ok(count)
}

/// The record to write: the existing one if its settings match (a resumed run), else an error.
fn check_record(path: &Path, base: &RunRecord) -> Result<RunRecord> {
    let fresh = RunRecord {
        too_long: Vec::new(),
        ..base.clone()
    };
    let Some(existing) = read_run_record(path)? else {
        return Ok(fresh);
    };
    if !existing.same_settings(base) {
        bail!(
            "{} was written by a run with other settings (model {}, format {}, temperature {}, max new tokens {}); use another --out to keep them apart",
            path.display(), existing.model, existing.format, existing.temperature, existing.max_new_tokens
        );
    }
    Ok(RunRecord {
        too_long: existing.too_long,
        ..fresh
    })
}
