//! `guardreasoner mine`: hard-sample mining for HS-DPO. Each model samples k outputs per training
//! record (any backend: llama.cpp for speed, openai for a vLLM cluster); hard samples become
//! weighted preference pairs, unioned over the models. Resumable: each model's samples are
//! appended to `<out>.samples-<i>.jsonl` as they come and read back on a rerun.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use guardreasoner_engine::SamplingParams;
use guardreasoner_protocol::PromptFormat;
use guardreasoner_train::data::{self, PreferencePair};
use guardreasoner_train::mine::{self, MiningReport, SampleSettings, Sampled};
use serde_json::json;

use super::model_args::{load_engine, ModelArgs};
use super::{progress, resume_log};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The R-SFT models to mine with, comma-separated, the main one first (its pairs win on
    /// inputs several models find hard); default: --model.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Training records (GuardReasonerTrain layout, with labels).
    #[arg(long)]
    data: PathBuf,
    /// The pairs file to write (JSON list); a report is written beside it.
    #[arg(long)]
    out: PathBuf,
    /// Outputs sampled per record.
    #[arg(long, default_value_t = 4)]
    k: usize,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The prompt form the R-SFT models were trained on: `llama3-chat`, `eval` or `deploy`.
    #[arg(long, default_value = "llama3-chat")]
    format: PromptFormat,
    /// Only the first N records.
    #[arg(long)]
    limit: Option<usize>,
}

impl Args {
    /// The `--threads` flag, which `main` applies before any thread starts.
    pub fn threads(&self) -> Option<usize> {
        self.model.threads
    }
}

pub fn run(args: Args) -> Result<()> {
    let mut records = data::read_records(&args.data)?;
    if let Some(limit) = args.limit {
        records.truncate(limit);
    }
    let unlabelled = records
        .iter()
        .filter(|r| {
            r.truth.request.is_none() && r.truth.response.is_none() && r.truth.completion.is_none()
        })
        .count();
    if unlabelled == records.len() {
        bail!(
            "{}: no record has a label (fields prompt_harm_label, ... or an answers block in the output)",
            args.data.display()
        );
    }
    if args.k < 2 {
        bail!("--k must be at least 2: a hard sample needs outputs that disagree");
    }
    let models = if args.models.is_empty() {
        vec![args.model.model.clone()]
    } else {
        args.models.clone()
    };
    let format = args.format;
    let settings = SampleSettings {
        k: args.k,
        params: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
            max_new_tokens: args.max_new_tokens,
            ..SamplingParams::default()
        },
        format,
        records_per_batch: (args.model.batch_size / args.k).max(1),
    };
    settings.params.validate()?;
    let mut sets: Vec<Vec<PreferencePair>> = Vec::new();
    let mut reports: BTreeMap<String, MiningReport> = BTreeMap::new();
    for (index, name) in models.iter().enumerate() {
        let samples_path = samples_path(&args.out, index);
        let mut samples = read_samples(&samples_path, records.len())?;
        let done: HashSet<usize> = samples.iter().map(|s| s.record).collect();
        if done.len() < records.len() {
            let mut model_args = args.model.clone();
            model_args.model = name.clone();
            let mut engine = load_engine(&model_args)?;
            eprintln!(
                "mining with {name}: {} records x {} samples ({} already sampled)",
                records.len(),
                args.k,
                done.len()
            );
            let bar = progress::bar(records.len() as u64, "records");
            bar.set_position(done.len() as u64);
            let mut log = resume_log::Appender::open(&samples_path)?;
            mine::sample(engine.as_mut(), &records, &settings, &done, |sampled| {
                log.push(sampled)?;
                samples.push(sampled.clone());
                bar.inc(1);
                Ok(())
            })?;
            bar.finish_and_clear();
        }
        samples.sort_by_key(|s| s.record);
        let (pairs, report) = mine::pairs_of(&records, &samples);
        eprintln!(
            "{name}: {} hard samples of {} ({} outputs without all three labels)",
            pairs.len(),
            samples.len(),
            report.outputs_without_labels
        );
        reports.insert(name.clone(), report);
        sets.push(pairs);
    }
    let pairs = mine::union_and_weigh(sets);
    data::write_pairs(&args.out, &pairs)?;
    let report = json!({
        "data": args.data,
        "records": records.len(),
        "k": args.k,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "pairs": pairs.len(),
        "models": reports,
    });
    let path = args.out.with_extension("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("{} pairs written to {}", pairs.len(), args.out.display());
    Ok(())
}

fn samples_path(out: &Path, index: usize) -> PathBuf {
    let mut name = out.file_stem().unwrap_or_default().to_os_string();
    name.push(format!(".samples-{index}.jsonl"));
    out.with_file_name(name)
}

/// The samples a previous run wrote.
fn read_samples(path: &Path, records: usize) -> Result<Vec<Sampled>> {
    resume_log::read(
        path,
        records,
        |s: &Sampled| s.record,
        |record| {
            format!(
                "record {record} is beyond the {records} records of --data: a samples file of \
             another data file?"
            )
        },
    )
}
