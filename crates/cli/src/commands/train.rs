//! `guardreasoner train sft`: R-SFT on GuardReasonerTrain records, writing a Hugging Face model
//! directory, its loss curve and a report. The work is the train crate's; this file parses flags
//! and prints.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Subcommand, ValueEnum};
use guardreasoner_engine::DeviceSpec;
use guardreasoner_protocol::PromptFormat;
use guardreasoner_train::checkpoint::{self, TrainerState};
use guardreasoner_train::curve::LossCurve;
use guardreasoner_train::examples::{self, Overlong};
use guardreasoner_train::model::TrainModel;
use guardreasoner_train::optim::AdamWConfig;
use guardreasoner_train::sft::{self, SftConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use super::progress;

#[derive(Subcommand)]
pub enum Command {
    /// Reasoning SFT: full fine-tuning, the loss on the output (reasoning and answers) only.
    Sft(SftArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// LLaMA-Factory's llama3 chat template around instruction + "\n" + input (how the released
    /// models were trained).
    Llama3Chat,
    /// instruction + "\n" + input as raw text (how the paper evaluated).
    Eval,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OverlongArg {
    Truncate,
    Skip,
    Error,
}

#[derive(clap::Args)]
pub struct SftArgs {
    /// The model to start from: what `check --model` takes (GGUF file, Hugging Face directory,
    /// repo id, alias).
    #[arg(long)]
    model: String,
    /// Training records: GuardReasonerTrain JSON (a list, or an object of splits) or JSONL.
    #[arg(long)]
    data: PathBuf,
    /// Output directory: the trained model (Hugging Face layout), loss.csv, train_report.json,
    /// checkpoints.
    #[arg(long)]
    out: PathBuf,
    /// Prompt form the output is learned after.
    #[arg(long, value_enum, default_value_t = Format::Llama3Chat)]
    format: Format,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate (the paper: 5e-5).
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// Fraction of the steps spent warming the learning rate up (the paper: none).
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Sequences per forward pass.
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
    #[arg(long, value_enum, default_value_t = OverlongArg::Truncate)]
    overlong: OverlongArg,
    /// Fraction of the samples held out for the held-out loss.
    #[arg(long, default_value_t = 0.05)]
    held_out: f64,
    /// Held-out loss every N steps (and at the end); 0 for only at the end.
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Stop after N steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Write a checkpoint every N steps (out/checkpoint-N); 0 for none.
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Resume from a checkpoint directory written by --save-every.
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to train: `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto", env = "GUARDREASONER_DEVICE")]
    device: DeviceSpec,
}

impl Command {
    /// The `--threads` flag, which `main` applies before any thread starts.
    pub fn threads(&self) -> Option<usize> {
        match self {
            Command::Sft(args) => args.threads,
        }
    }
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Sft(args) => sft(args),
    }
}

fn sft(args: SftArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.held_out) {
        bail!("--held-out must be in [0, 1): {}", args.held_out);
    }
    let records = guardreasoner_train::data::read_records(&args.data)?;
    let start = args
        .resume
        .as_ref()
        .map_or(args.model.clone(), |dir| dir.display().to_string());
    eprintln!("loading {start} for training");
    let model = TrainModel::load(&start, args.max_length, args.device)
        .with_context(|| format!("cannot load --model {start}"))?;
    let format = match args.format {
        Format::Llama3Chat => PromptFormat::Llama3Chat,
        Format::Eval => PromptFormat::Eval,
    };
    let overlong = match args.overlong {
        OverlongArg::Truncate => Overlong::Truncate,
        OverlongArg::Skip => Overlong::Skip,
        OverlongArg::Error => Overlong::Error,
    };
    let encoded = examples::encode(
        model.tokenizer(),
        &records,
        format,
        model.end_token(format),
        args.max_length,
        overlong,
    )
    .with_context(|| format!("encoding {}", args.data.display()))?;
    eprintln!(
        "{} records: {} sequences, {} truncated to {} tokens, {} skipped",
        records.len(),
        encoded.examples.len(),
        encoded.truncated,
        args.max_length,
        encoded.skipped
    );
    let mut examples = encoded.examples.clone();
    examples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x5eed));
    let held = (examples.len() as f64 * args.held_out).round() as usize;
    let held_out = examples.split_off(examples.len() - held);
    let config = SftConfig {
        epochs: args.epochs,
        adamw: AdamWConfig {
            lr: args.lr,
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        warmup_ratio: args.warmup_ratio,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        eval_every: args.eval_every,
        max_steps: args.max_steps,
        start_step: 0,
    };
    let mut optimizer = sft::optimizer(&model.trainable, &config)?;
    let mut config = config;
    if let Some(dir) = &args.resume {
        let state = checkpoint::restore(dir, &model, &mut optimizer)?;
        if state.seed != args.seed {
            bail!(
                "{}: the checkpoint was made with --seed {}, not {}: the data order would differ",
                dir.display(),
                state.seed,
                args.seed
            );
        }
        config.start_step = state.step;
        eprintln!("resuming after step {}", state.step);
    }
    let total = sft::total_steps(examples.len(), &config);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut curve = LossCurve::open(&args.out.join("loss.csv"))?;
    eprintln!(
        "training on {} sequences ({} held out) for {total} steps on {}",
        examples.len(),
        held_out.len(),
        format!("{:?}", model.trainable.device().location())
    );
    let bar = progress::bar(total as u64, "steps");
    bar.set_position(config.start_step as u64);
    let started = std::time::Instant::now();
    let logs = sft::train(
        &model.trainable,
        &mut optimizer,
        &examples,
        &held_out,
        &config,
        |log, optimizer| {
            curve.push(log)?;
            bar.set_position(log.step as u64);
            let eval = log
                .eval_loss
                .map(|l| format!(", held-out {l:.4}"))
                .unwrap_or_default();
            bar.set_message(format!(
                "loss {:.4}{eval}, {:.0} tokens/s",
                log.loss,
                log.tokens_per_second()
            ));
            if args.save_every > 0 && log.step % args.save_every == 0 && log.step < total {
                let dir = args.out.join(format!("checkpoint-{}", log.step));
                let state = TrainerState {
                    step: log.step,
                    total_steps: total,
                    seed: args.seed,
                };
                checkpoint::save(&dir, &model, optimizer, &state)?;
            }
            Ok(true)
        },
    )?;
    bar.finish_and_clear();
    model.save(&args.out, DType::F32)?;
    let seconds = started.elapsed().as_secs_f64();
    let tokens: usize = logs.iter().map(|l| l.tokens).sum();
    let last = logs.last();
    let report = json!({
        "model": args.model,
        "data": args.data,
        "format": format.name(),
        "records": records.len(),
        "sequences": encoded.examples.len(),
        "truncated": encoded.truncated,
        "skipped": encoded.skipped,
        "held_out": held_out.len(),
        "steps": last.map(|l| l.step),
        "total_steps": total,
        "final_loss": last.map(|l| l.loss),
        "final_held_out_loss": last.and_then(|l| l.eval_loss),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens as f64 / seconds.max(1e-9),
    });
    let path = args.out.join("train_report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("model written to {}", args.out.display());
    Ok(())
}
