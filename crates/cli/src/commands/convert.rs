//! `guardreasoner convert`: a Hugging Face Llama model (directory, repo id or alias) to one GGUF
//! file for the llama.cpp backend, in Rust.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use guardreasoner_engine::convert::{self, GgufType};
use guardreasoner_engine::model::{self, ModelLocation};

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json), a Hugging
    /// Face repo id, or an alias (guardreasoner-1b, -3b, -8b).
    #[arg(long)]
    model: String,
    /// The GGUF file to write (written beside itself first, renamed when whole).
    #[arg(long)]
    out: PathBuf,
    /// The weights' type: `f32`, `f16`, `bf16`, `q8_0` (written here, byte for byte as
    /// llama.cpp's convert_hf_to_gguf.py writes them) or `q4_k_m` (llama.cpp's quantizer, run on
    /// a bf16 or f16 conversion).
    #[arg(long = "type", default_value = "q8_0")]
    kind: GgufType,
    /// CPU threads for the Q4_K_M quantizer (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let (dir, name) = match model::resolve(&args.model)
        .with_context(|| format!("cannot resolve --model {}", args.model))?
    {
        ModelLocation::HuggingFaceDir(dir) => (dir, None),
        ModelLocation::HuggingFaceRepo(repo) => (
            guardreasoner_engine::hub::download(&repo)
                .with_context(|| format!("cannot download {repo}"))?,
            Some(repo),
        ),
        ModelLocation::Gguf(path) => bail!(
            "{} is a GGUF file already; `convert` takes a Hugging Face model (directory or repo id)",
            path.display()
        ),
    };
    if args.out.is_dir() {
        bail!(
            "--out {} is a directory; name the .gguf file to write",
            args.out.display()
        );
    }
    let bar = super::progress::bar(0, "tensors");
    let started = std::time::Instant::now();
    let report = convert::convert(
        &dir,
        &args.out,
        args.kind,
        name.as_deref(),
        args.threads,
        &mut |index, count, tensor| {
            bar.set_length(count as u64);
            bar.set_position(index as u64);
            bar.set_message(tensor.to_string());
        },
    )
    .with_context(|| format!("cannot convert {}", dir.display()))?;
    bar.finish_and_clear();
    println!(
        "{}: {} tensors, {} parameters, {:.1} MiB, {} (pre-tokenizer {}), in {:.1} s",
        report.path.display(),
        report.tensors,
        report.parameters,
        report.bytes as f64 / (1 << 20) as f64,
        args.kind,
        report.pre_tokenizer,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
