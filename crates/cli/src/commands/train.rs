//! `guardreasoner train sft|dpo`: R-SFT on GuardReasonerTrain records and HS-DPO on mined pairs,
//! each writing a Hugging Face model directory, its loss curve and a report. The work is the
//! train crate's; this file parses flags and prints.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Subcommand;
use guardreasoner_engine::DeviceSpec;
use guardreasoner_protocol::PromptFormat;
use guardreasoner_train::checkpoint::{self, TrainerState};
use guardreasoner_train::curve::LossCurve;
use guardreasoner_train::dpo;
use guardreasoner_train::encode::{self, Overlong};
use guardreasoner_train::lora::{self, LoraConfig};
use guardreasoner_train::loss::{DpoSettings, WeightOn};
use guardreasoner_train::model::{Precision, TrainModel};
use guardreasoner_train::optim::{AdamW, AdamWConfig};
use guardreasoner_train::sft;
use guardreasoner_train::trainer::{Schedule, Step};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use super::progress;

#[derive(Subcommand)]
pub enum Command {
    /// Reasoning SFT: full fine-tuning, the loss on the output (reasoning and answers) only.
    Sft(SftArgs),
    /// Hard-sample DPO on mined pairs, against the frozen starting model, weighted per pair.
    Dpo(DpoArgs),
    /// Training records from a guard's saved outputs on labelled benchmarks (GuardReasoner's
    /// released outputs are real reasoning traces), kept where the answers are right.
    Traces(TracesArgs),
}

#[derive(clap::Args)]
pub struct TracesArgs {
    /// Saved outputs: a directory of `<Benchmark>/generated_predictions.jsonl` (GuardReasoner's
    /// release) or of our `generate` output.
    #[arg(long)]
    outputs: PathBuf,
    /// Benchmarks to take, comma-separated (default: every one with outputs).
    #[arg(long, value_delimiter = ',')]
    benchmarks: Vec<String>,
    /// The benchmarks directory (holding `benchmark/`); default as for `score`.
    #[arg(long)]
    benchmarks_dir: Option<PathBuf>,
    /// Keep outputs whose answers disagree with the ground truth too.
    #[arg(long)]
    keep_wrong: bool,
    /// The records file to write (JSON list).
    #[arg(long)]
    out: PathBuf,
}

/// What both trainers take: the model, the output, the schedule and the sequence limits.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The model to start from: what `check --model` takes (GGUF file, Hugging Face directory,
    /// repo id, alias).
    #[arg(long)]
    model: String,
    /// Output directory: the trained model (Hugging Face layout), loss.csv, train_report.json,
    /// checkpoints.
    #[arg(long)]
    out: PathBuf,
    /// Prompt form the output is learned after: `llama3-chat` (LLaMA-Factory's llama3 template
    /// around instruction + "\n" + input, how the released models were trained), `eval`
    /// (instruction + "\n" + input as raw text, how the paper evaluated) or `deploy`.
    #[arg(long, default_value = "llama3-chat")]
    format: PromptFormat,
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate (the paper: 5e-5 for SFT, 5e-6 for DPO).
    #[arg(long)]
    lr: Option<f64>,
    /// Fraction of the steps spent warming the learning rate up (the paper: none).
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Items (sequences, pairs) per forward pass.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Forward passes per optimizer step (effective batch = batch size x this).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Gradient-norm clipping; 0 for none.
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Longest sequence, prompt and output (the paper: 2048).
    #[arg(long, default_value_t = 2048)]
    max_length: usize,
    /// A longer sample is truncated (its output's tail cut), skipped, or an error; counted.
    /// `truncate`, `skip` or `error`.
    #[arg(long, default_value = "truncate")]
    overlong: Overlong,
    /// Fraction of the samples held out for the held-out measurement.
    #[arg(long, default_value_t = 0.05)]
    held_out: f64,
    /// Held-out measurement every N steps (and at the end); 0 for only at the end.
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Stop after N steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Write a checkpoint every N steps (out/checkpoint-N; with LoRA, the adapter only); 0 for
    /// none.
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Resume from a checkpoint directory written by --save-every.
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Train LoRA adapters of this rank instead of every weight (the output is then the merged
    /// model, with the adapter alone in out/adapter in PEFT's layout).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Projections LoRA adapts, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    lora_targets: Vec<String>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to train: `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto", env = "GUARDREASONER_DEVICE")]
    device: DeviceSpec,
    /// What the steps compute in: `f32`, or `bf16` (mixed: the projections multiply in bf16, the
    /// weights and optimizer stay f32). Default: bf16 on a GPU, f32 on the CPU.
    #[arg(long)]
    precision: Option<Precision>,
}

#[derive(clap::Args)]
pub struct SftArgs {
    /// Training records: GuardReasonerTrain JSON (a list, or an object of splits) or JSONL.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
pub struct DpoArgs {
    /// Preference pairs written by `guardreasoner mine` (JSON list or JSONL).
    #[arg(long)]
    pairs: PathBuf,
    /// The KL strength (the paper: 0.01).
    #[arg(long, default_value_t = 0.01)]
    beta: f64,
    /// The auxiliary SFT term's factor, LLaMA-Factory's pref_ftx (the paper: 2.0).
    #[arg(long, default_value_t = 2.0)]
    ftx: f64,
    /// Where the pair weight goes (the paper's patch was never published: see docs/training.md).
    /// `dpo` (w x DPO + ftx x NLL, SPEC section 7) or `sum` (w x (DPO + ftx x NLL)).
    #[arg(long, default_value = "dpo")]
    weight_on: WeightOn,
    #[command(flatten)]
    run: RunArgs,
}

impl Command {
    /// The `--threads` flag, which `main` applies before any thread starts.
    pub fn threads(&self) -> Option<usize> {
        match self {
            Command::Sft(args) => args.run.threads,
            Command::Dpo(args) => args.run.threads,
            Command::Traces(_) => None,
        }
    }
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Sft(args) => run_sft(args),
        Command::Dpo(args) => run_dpo(args),
        Command::Traces(args) => run_traces(args),
    }
}

impl RunArgs {
    fn format(&self) -> PromptFormat {
        self.format
    }

    fn overlong(&self) -> Overlong {
        self.overlong
    }

    fn schedule(&self, epochs: usize, lr: f64) -> Schedule {
        Schedule {
            epochs: self.epochs.unwrap_or(epochs),
            adamw: AdamWConfig {
                lr: self.lr.unwrap_or(lr),
                weight_decay: self.weight_decay,
                ..AdamWConfig::default()
            },
            warmup_ratio: self.warmup_ratio,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            eval_every: self.eval_every,
            max_steps: self.max_steps,
            start_step: 0,
        }
    }

    fn lora(&self) -> Option<LoraConfig> {
        self.lora_rank.map(|rank| LoraConfig {
            rank,
            alpha: self.lora_alpha,
            targets: self.lora_targets.clone(),
            seed: self.seed,
        })
    }

    fn load(&self) -> Result<TrainModel> {
        if !(0.0..1.0).contains(&self.held_out) {
            bail!("--held-out must be in [0, 1): {}", self.held_out);
        }
        // A full fine-tuning checkpoint is the model to go on from; a LoRA checkpoint holds only
        // the adapter, which `resume` reads onto the base model. A resumed run computes in the
        // checkpoint's precision unless told otherwise.
        let (start, saved_precision) = match self.checkpoint(self.precision, 0, None)? {
            Some((dir, state)) if state.lora.is_none() => {
                (dir.display().to_string(), state.precision)
            }
            Some((_, state)) => (self.model.clone(), state.precision),
            None => (self.model.clone(), None),
        };
        eprintln!("loading {start} for training");
        let mut model =
            TrainModel::load(&start, self.max_length, self.device, self.lora().as_ref())
                .with_context(|| format!("cannot load --model {start}"))?;
        let precision = self
            .precision
            .or(saved_precision)
            .unwrap_or_else(|| Precision::auto(&model.trainable.device()));
        model.trainable.set_precision(precision).map_err(
            guardreasoner_train::TrainError::tensor("casting for the precision"),
        )?;
        Ok(model)
    }

    /// What this run records in its checkpoints, after `step` of `total` steps at peak learning
    /// rate `lr`.
    fn state(
        &self,
        step: usize,
        total: usize,
        lr: Option<f64>,
        precision: Option<Precision>,
    ) -> TrainerState {
        TrainerState {
            step,
            total_steps: total,
            seed: self.seed,
            model: self.model.clone(),
            lora: self.lora(),
            lr,
            precision,
        }
    }

    /// The --resume checkpoint and its state, checked against this run's settings (`total` 0
    /// and `lr` `None` where not known yet).
    fn checkpoint(
        &self,
        precision: Option<Precision>,
        total: usize,
        lr: Option<f64>,
    ) -> Result<Option<(&Path, TrainerState)>> {
        let Some(dir) = &self.resume else {
            return Ok(None);
        };
        let saved = checkpoint::state(dir)?;
        let run = self.state(0, total, lr, precision);
        checkpoint::check_compatible(dir, &saved, &run)?;
        Ok(Some((dir, saved)))
    }

    /// Splits `items` into training and held-out parts (a seeded shuffle first).
    fn split<T>(&self, mut items: Vec<T>) -> (Vec<T>, Vec<T>) {
        items.shuffle(&mut rand::rngs::StdRng::seed_from_u64(self.seed ^ 0x5eed));
        let held = (items.len() as f64 * self.held_out).round() as usize;
        let held_out = items.split_off(items.len() - held);
        (items, held_out)
    }

    /// Restores the adapter (LoRA), the optimizer and the step from --resume, if given, for a
    /// run over `items` training items.
    fn resume(
        &self,
        model: &TrainModel,
        optimizer: &mut AdamW,
        schedule: &mut Schedule,
        items: usize,
    ) -> Result<()> {
        let total = schedule.total_steps(items);
        let precision = Some(model.trainable.precision());
        if let Some((dir, state)) = self.checkpoint(precision, total, Some(schedule.adamw.lr))? {
            checkpoint::restore(dir, &state, model, optimizer)?;
            schedule.start_step = state.step;
            eprintln!("resuming after step {}", state.step);
        }
        Ok(())
    }

    /// The per-step work every run does: the loss curve, the bar, checkpoints.
    fn on_step<'a>(
        &'a self,
        model: &'a TrainModel,
        total: usize,
        lr: f64,
        metric_names: &'a [&'a str],
    ) -> Result<impl FnMut(&Step, &AdamW) -> Result<bool, guardreasoner_train::TrainError> + 'a>
    {
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let mut curve = LossCurve::open(&self.out.join("loss.csv"))?;
        let bar = progress::bar(total as u64, "steps");
        Ok(move |step: &Step, optimizer: &AdamW| {
            curve.push(step)?;
            bar.set_position(step.step as u64);
            let metrics: String = metric_names
                .iter()
                .zip(&step.metrics)
                .map(|(name, value)| format!(", {name} {value:.3}"))
                .collect();
            let held = step
                .held_out
                .as_ref()
                .and_then(|m| m.first())
                .map(|l| format!(", held-out {l:.4}"))
                .unwrap_or_default();
            bar.set_message(format!(
                "loss {:.4}{metrics}{held}, {:.0} tokens/s",
                step.loss,
                step.tokens_per_second()
            ));
            if step.step == total {
                bar.finish_and_clear();
            }
            if self.save_every > 0 && step.step.is_multiple_of(self.save_every) && step.step < total
            {
                let dir = self.out.join(format!("checkpoint-{}", step.step));
                let precision = Some(model.trainable.precision());
                let state = self.state(step.step, total, Some(lr), precision);
                checkpoint::save(&dir, model, optimizer, &state)?;
            }
            Ok(true)
        })
    }

    /// Saves the model and writes `train_report.json` with `extra` fields.
    fn finish(
        &self,
        title: &str,
        model: &TrainModel,
        steps: &[Step],
        seconds: f64,
        extra: Value,
    ) -> Result<()> {
        model.save(&self.out, DType::F32)?;
        guardreasoner_train::curve::plot(
            &self.out.join("loss.csv"),
            &self.out.join("loss.png"),
            title,
        )?;
        if let Some(lora) = self.lora() {
            lora::save_adapter(
                &self.out.join("adapter"),
                &model.trainable,
                &lora,
                &self.model,
            )?;
        }
        let tokens: usize = steps.iter().map(|s| s.tokens).sum();
        let last = steps.last();
        let mut report = json!({
            "model": self.model,
            "format": self.format().name(),
            "steps": last.map(|s| s.step),
            "total_steps": last.map(|s| s.total_steps),
            "final_loss": last.map(|s| s.loss),
            "final_held_out": last.and_then(|s| s.held_out.clone()),
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_second": tokens as f64 / seconds.max(1e-9),
            "lora": self.lora().map(|l| json!({"rank": l.rank, "alpha": l.alpha, "targets": l.targets})),
            "precision": model.trainable.precision().name(),
        });
        if let (Value::Object(report), Value::Object(extra)) = (&mut report, extra) {
            report.extend(extra);
        }
        write_report(&self.out.join("train_report.json"), &report)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        eprintln!("model written to {}", self.out.display());
        Ok(())
    }
}

fn write_report(path: &Path, report: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

fn run_sft(args: SftArgs) -> Result<()> {
    let run = &args.run;
    let records = guardreasoner_train::data::read_records(&args.data)?;
    let model = run.load()?;
    let format = run.format();
    let encoded = encode::encode(
        model.tokenizer(),
        &records,
        format,
        model.end_token(format),
        run.max_length,
        run.overlong(),
    )
    .with_context(|| format!("encoding {}", args.data.display()))?;
    eprintln!(
        "{} records: {} sequences, {} truncated to {} tokens, {} skipped",
        records.len(),
        encoded.examples.len(),
        encoded.truncated,
        run.max_length,
        encoded.skipped
    );
    let (train, held_out) = run.split(encoded.examples.clone());
    let mut schedule = run.schedule(3, 5e-5);
    let mut optimizer = sft::optimizer(&model.trainable, &schedule)?;
    run.resume(&model, &mut optimizer, &mut schedule, train.len())?;
    let total = schedule.total_steps(train.len());
    eprintln!(
        "R-SFT on {} sequences ({} held out) for {total} steps on {:?} in {}",
        train.len(),
        held_out.len(),
        model.trainable.device().location(),
        model.trainable.precision()
    );
    let started = std::time::Instant::now();
    let on_step = run.on_step(&model, total, schedule.adamw.lr, &[])?;
    let steps = sft::train(
        &model.trainable,
        &mut optimizer,
        &train,
        &held_out,
        &schedule,
        on_step,
    )?;
    let extra = json!({
        "data": args.data,
        "records": records.len(),
        "sequences": encoded.examples.len(),
        "truncated": encoded.truncated,
        "skipped": encoded.skipped,
        "held_out": held_out.len(),
    });
    run.finish(
        "R-SFT",
        &model,
        &steps,
        started.elapsed().as_secs_f64(),
        extra,
    )
}

fn run_dpo(args: DpoArgs) -> Result<()> {
    let run = &args.run;
    let pairs = guardreasoner_train::data::read_pairs(&args.pairs)?;
    let model = run.load()?;
    let format = run.format();
    let encoded = dpo::encode_pairs(
        model.tokenizer(),
        &pairs,
        format,
        model.end_token(format),
        run.max_length,
        run.overlong(),
    )
    .with_context(|| format!("encoding {}", args.pairs.display()))?;
    eprintln!(
        "{} pairs: {} encoded, {} with an output truncated to {} tokens, {} skipped",
        pairs.len(),
        encoded.pairs.len(),
        encoded.truncated,
        run.max_length,
        encoded.skipped
    );
    let (train, held_out) = run.split(encoded.pairs.clone());
    let settings = DpoSettings {
        beta: args.beta,
        ftx: args.ftx,
        weight_on: args.weight_on,
    };
    let mut schedule = run.schedule(2, 5e-6);
    let device = model.trainable.device();
    eprintln!(
        "reference log-probabilities of {} pairs",
        encoded.pairs.len()
    );
    // The reference is the model the run started from: on resuming full fine-tuning, --model,
    // not the checkpoint (a LoRA run's frozen model is --model already: its base). It computes
    // in the policy's precision, as TRL's reference runs under the same autocast, so that the
    // implicit rewards start at zero.
    let reference_model = match (&run.resume, run.lora_rank) {
        (Some(_), None) => TrainModel::load(&run.model, run.max_length, run.device, None)?.frozen,
        _ => model.frozen.clone(),
    };
    let reference_model =
        guardreasoner_train::model::autocast(&reference_model, model.trainable.precision())
            .map_err(guardreasoner_train::TrainError::tensor(
                "casting the reference",
            ))?;
    let reference = dpo::reference_logprobs(&reference_model, &train, run.batch_size, &device)?;
    let held_reference =
        dpo::reference_logprobs(&reference_model, &held_out, run.batch_size, &device)?;
    drop(reference_model);
    let mut optimizer = sft::optimizer(&model.trainable, &schedule)?;
    run.resume(&model, &mut optimizer, &mut schedule, train.len())?;
    let total = schedule.total_steps(train.len());
    eprintln!(
        "HS-DPO on {} pairs ({} held out) for {total} steps on {:?} in {}",
        train.len(),
        held_out.len(),
        device.location(),
        model.trainable.precision()
    );
    let started = std::time::Instant::now();
    let on_step = run.on_step(&model, total, schedule.adamw.lr, &dpo::METRICS)?;
    let steps = dpo::train(
        &model.trainable,
        &mut optimizer,
        &train,
        &reference,
        (&held_out, &held_reference),
        settings,
        &schedule,
        on_step,
    )?;
    let extra = json!({
        "pairs_file": args.pairs,
        "pairs": pairs.len(),
        "encoded": encoded.pairs.len(),
        "truncated": encoded.truncated,
        "skipped": encoded.skipped,
        "held_out": held_out.len(),
        "beta": args.beta,
        "ftx": args.ftx,
        "weight_on": args.weight_on.name(),
        "held_out_columns": ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy"],
    });
    run.finish(
        "HS-DPO",
        &model,
        &steps,
        started.elapsed().as_secs_f64(),
        extra,
    )
}

fn run_traces(args: TracesArgs) -> Result<()> {
    use guardreasoner_eval::{dataset, predictions, registry};
    let root = dataset::resolve_root(&super::paths::benchmarks_dir(
        args.benchmarks_dir.clone(),
        Some(&args.outputs),
    )?)?;
    let mut records = Vec::new();
    let mut report = serde_json::Map::new();
    for found in predictions::discover(&args.outputs)? {
        let name = found.benchmark.name;
        if !args.benchmarks.is_empty()
            && !args
                .benchmarks
                .iter()
                .any(|b| registry::find(b).is_some_and(|b| b.name == name))
        {
            continue;
        }
        let data = dataset::load(&root, found.benchmark)?;
        let outputs = predictions::align(&found, &data)?;
        let traces =
            guardreasoner_train::data::traces::from_outputs(&data, &outputs, args.keep_wrong);
        eprintln!(
            "{name}: {} records, {} outputs left out as wrong",
            traces.records.len(),
            traces.wrong
        );
        report.insert(
            name.to_string(),
            json!({"records": traces.records.len(), "wrong": traces.wrong}),
        );
        records.extend(traces.records);
    }
    if records.is_empty() {
        bail!(
            "no records: no outputs of the named benchmarks under {}",
            args.outputs.display()
        );
    }
    guardreasoner_train::data::write_records(&args.out, &records)?;
    println!("{}", serde_json::to_string_pretty(&Value::Object(report))?);
    eprintln!(
        "{} records written to {}",
        records.len(),
        args.out.display()
    );
    Ok(())
}
