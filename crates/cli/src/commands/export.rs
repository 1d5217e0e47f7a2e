//! `guardreasoner export`: a trained model to GGUF for the fast backend, and training data to
//! LLaMA-Factory for multi-GPU runs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use guardreasoner_engine::backends::candle::{CandleEngine, CandleOptions};
use guardreasoner_engine::convert::GgufType;
use guardreasoner_engine::DeviceSpec;

#[derive(Subcommand)]
pub enum Command {
    /// A model directory written by `train` as a GGUF file (f16, or quantized by llama.cpp's own
    /// quantizer), for the llama.cpp backend.
    Gguf(GgufArgs),
    /// Training records and/or HS-DPO pairs as LLaMA-Factory datasets, with the paper's configs
    /// (DeepSpeed ZeRO-3) and the patch that keeps the pairs' weights, for multi-GPU runs.
    Llamafactory(LlamaFactoryArgs),
}

#[derive(clap::Args)]
pub struct LlamaFactoryArgs {
    /// R-SFT records (GuardReasonerTrain layout).
    #[arg(long)]
    data: Option<PathBuf>,
    /// HS-DPO pairs written by `guardreasoner mine`.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// The export directory.
    #[arg(long)]
    out: PathBuf,
    /// The model R-SFT starts from (`model_name_or_path`; the paper: base Llama 3.x).
    #[arg(long, default_value = "meta-llama/Llama-3.2-1B")]
    base_model: String,
    /// GPUs per node the batch sizes are written for (the effective batches stay the paper's).
    #[arg(long, default_value_t = 8)]
    gpus: usize,
}

#[derive(clap::Args)]
pub struct GgufArgs {
    /// The model directory (Hugging Face layout) written by `train sft` or `train dpo`.
    #[arg(long)]
    model: PathBuf,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
    /// The weights' type: `q8_0`, `q4_k_m` or `f16`; a model that began as safetensors also
    /// takes `bf16` and `f32`.
    #[arg(long = "type", default_value = "q8_0")]
    kind: GgufType,
    /// The GGUF file whose metadata (tokenizer, chat template) to use; default: the file the
    /// training started from, as the model directory records it. A model that started from
    /// Hugging Face safetensors records none and is converted as `guardreasoner convert` does.
    #[arg(long)]
    like: Option<PathBuf>,
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Gguf(args) => gguf(args),
        Command::Llamafactory(args) => llamafactory(args),
    }
}

fn gguf(args: GgufArgs) -> Result<()> {
    let Some(like) = args
        .like
        .clone()
        .or_else(|| guardreasoner_train::export::gguf::origin_of(&args.model))
    else {
        // A model that began as Hugging Face safetensors: the converter maps its tokenizer.
        let kind = args.kind;
        let report = guardreasoner_engine::convert::convert(
            &args.model,
            &args.out,
            kind,
            None,
            None,
            &mut |_, _, _| {},
        )
        .with_context(|| format!("converting {}", args.model.display()))?;
        eprintln!(
            "{} written ({} tensors, converted from the safetensors)",
            report.path.display(),
            report.tensors
        );
        return Ok(());
    };
    if matches!(args.kind, GgufType::F32 | GgufType::Bf16) {
        bail!(
            "--type {}: a model trained from a GGUF file is written as f16 (then quantized); \
             choose f16, q8_0 or q4_k_m",
            args.kind
        );
    }
    let engine = CandleEngine::load_dir(
        &args.model,
        CandleOptions {
            context_per_sequence: 64,
            device: DeviceSpec::Cpu,
            ..CandleOptions::default()
        },
    )
    .with_context(|| format!("loading {}", args.model.display()))?;
    let started = std::time::Instant::now();
    let f16 = match args.kind {
        GgufType::F16 => args.out.clone(),
        _ => args.out.with_extension("f16.gguf"),
    };
    guardreasoner_train::export::gguf::write_f16(engine.model(), &like, &f16)?;
    drop(engine);
    #[cfg(feature = "llama-cpp")]
    {
        if matches!(args.kind, GgufType::Q8_0 | GgufType::Q4KM) {
            let result = guardreasoner_engine::backends::llama_cpp::quantize(
                &f16, &args.out, args.kind, None,
            );
            std::fs::remove_file(&f16).ok();
            result?;
        }
    }
    #[cfg(not(feature = "llama-cpp"))]
    if !matches!(args.kind, GgufType::F16) {
        bail!("this build has no llama.cpp: only --type f16");
    }
    eprintln!(
        "{} written in {:.1}s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn llamafactory(args: LlamaFactoryArgs) -> Result<()> {
    if args.data.is_none() && args.pairs.is_none() {
        bail!("give --data (R-SFT records), --pairs (HS-DPO pairs) or both");
    }
    let records = args
        .data
        .as_deref()
        .map(guardreasoner_train::data::read_records)
        .transpose()?;
    let pairs = args
        .pairs
        .as_deref()
        .map(guardreasoner_train::data::read_pairs)
        .transpose()?;
    let export = guardreasoner_train::export::llamafactory::Export {
        records: records.as_deref(),
        pairs: pairs.as_deref(),
        base_model: args.base_model.clone(),
        gpus: args.gpus,
    };
    let written = guardreasoner_train::export::llamafactory::write(&args.out, &export)?;
    eprintln!(
        "{}: {} (records {}, pairs {})",
        args.out.display(),
        written.join(", "),
        records.map_or(0, |r| r.len()),
        pairs.map_or(0, |p| p.len())
    );
    Ok(())
}
