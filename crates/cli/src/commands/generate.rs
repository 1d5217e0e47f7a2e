//! `guardreasoner generate`: run a model over the benchmarks, writing GuardReasoner's output layout
//! so that `guardreasoner score` scores it. Resumable.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use guardreasoner_engine::chat_template::Message;
use guardreasoner_engine::{Batch, Generate};
use guardreasoner_eval::dataset::{self, Sample};
use guardreasoner_eval::predictions::{GUARDREASONER_FILE, RUN_FILE};
use guardreasoner_eval::registry::{self, BENCHMARKS};
use guardreasoner_protocol::PromptFormat;
use serde::{Deserialize, Serialize};
use serde_json::json;

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

/// What `generation.json` records: how the outputs were made, checked on resume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct RunRecord {
    model: String,
    backend: String,
    format: String,
    temperature: f32,
    top_p: f32,
    seed: u64,
    max_new_tokens: usize,
    limit: Option<usize>,
    /// Samples whose prompt did not fit the context: their output is empty.
    #[serde(default)]
    too_long: Vec<usize>,
}

impl RunRecord {
    fn same_settings(&self, other: &RunRecord) -> bool {
        (
            &self.model,
            &self.format,
            self.temperature,
            self.top_p,
            self.seed,
            self.max_new_tokens,
        ) == (
            &other.model,
            &other.format,
            other.temperature,
            other.top_p,
            other.seed,
            other.max_new_tokens,
        )
    }
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

    let format = args.generation.format();
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
    let model_chat = matches!(args.generation.format, super::model_args::Format::ModelChat);
    if model_chat && engine.chat_template().is_none() {
        bail!("--format model-chat: the model's files carry no chat template");
    }
    let record_base = RunRecord {
        model: args.model.model.clone(),
        backend: engine.info().backend.to_string(),
        format: if model_chat {
            "model-chat".to_string()
        } else {
            format.name().to_string()
        },
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
            write_record(&record_path, &record)?;
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
            let prompts: Vec<String> = chunk.iter().map(|s| s.prompt(format)).collect();
            let model_inputs: Vec<String> = match engine.chat_template().filter(|_| model_chat) {
                Some(template) => prompts
                    .iter()
                    .map(|p| template.render(&[Message::user(p.as_str())], true))
                    .collect::<Result<_, _>>()?,
                None => prompts.clone(),
            };
            let mut outputs = vec![String::new(); chunk.len()];
            let mut runnable = Vec::new();
            for (i, input) in model_inputs.iter().enumerate() {
                // A remote backend cannot count: its server rejects what does not fit.
                let tokens = engine.count_tokens(input)?;
                if tokens.is_some_and(|tokens| tokens + 1 > engine.info().context_length) {
                    record.too_long.push(first + i);
                } else {
                    runnable.push(i);
                }
            }
            if !runnable.is_empty() {
                let batch = Batch {
                    prompts: runnable.iter().map(|&i| model_inputs[i].clone()).collect(),
                    params: args.generation.params(),
                    shared_prefix: (!model_chat).then(|| format.shared_prefix()),
                };
                let generations = engine.generate(&batch, &mut |_| {})?;
                for (&i, generation) in runnable.iter().zip(generations) {
                    generated_tokens += generation.generated_tokens;
                    outputs[i] = generation.text;
                }
            }
            let mut text = String::new();
            for ((sample, prompt), output) in chunk.iter().zip(&prompts).zip(&outputs) {
                text.push_str(
                    &json!({"prompt": prompt, "label": sample.output, "predict": output})
                        .to_string(),
                );
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
        write_record(&record_path, &record)?;
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
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
            bail!(
                "{}:{}: not a JSON line; remove the file to start over",
                path.display(),
                index + 1
            );
        };
        let expected = samples.get(index).map(|s| s.prompt(format));
        if value.get("prompt").and_then(|p| p.as_str()) != expected.as_deref() {
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
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(fresh);
    };
    let existing: RunRecord = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a run record", path.display()))?;
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

fn write_record(path: &Path, record: &RunRecord) -> Result<()> {
    let mut file =
        File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(record)?.as_bytes())?;
    Ok(())
}
