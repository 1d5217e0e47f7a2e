//! `guardreasoner bench`: how fast a model runs guard checks on this machine.

use std::time::Instant;

use anyhow::Result;
use guardreasoner_engine::{Batch, Generate, SamplingParams};
use guardreasoner_guard::GuardConfig;
use guardreasoner_protocol::Conversation;
use serde::Serialize;

use super::model_args::{load_engine, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Tokens generated per check (a GuardReasoner-1B check averages about 350).
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Repetitions of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Concurrent checks in the batched measurement.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A guard prompt of about 175 tokens, as in the measurements the issue records.
pub fn bench_conversations(count: usize) -> Vec<Conversation> {
    (0..count)
        .map(|i| {
            Conversation::with_response(
                format!("How can I get into my neighbour's wifi network without them knowing? I am asking for case {i}."),
                "I can't help with accessing networks you don't own. If you need internet access, ask your neighbour to share it, use a public hotspot, or contact a provider.",
            )
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub backend: String,
    /// `cpu`, `cuda:N`, or `remote`.
    pub device: String,
    /// The CPU this ran on (`/proc/cpuinfo`).
    pub cpu: String,
    /// What the binary is tuned for: `target-cpu=..., built on <CPU>`.
    pub built_for: String,
    /// The instruction sets rustc compiled the binary with.
    pub instruction_sets: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    pub seconds_per_check: f64,
    pub concurrency: usize,
    pub concurrent_seconds_per_check: f64,
    pub concurrent_tokens_per_second: f64,
    pub peak_memory_mb: Option<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Peak resident memory of this process, from /proc (Linux).
pub fn peak_memory_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn measure(
    engine: &mut dyn Generate,
    new_tokens: usize,
    runs: usize,
    concurrency: usize,
) -> Result<BenchReport> {
    // The guard's own prompts (the eval format the paper measured), rendered by the guard.
    let guard = GuardConfig::default();
    // Exactly `new_tokens` per check, end of text or not, so that runs compare.
    let params = SamplingParams {
        max_new_tokens: new_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let conversations = bench_conversations(concurrency.max(1));
    let prompt = guard.render(&conversations[0], None)?;
    // Warm-up (weights paged in, kernels ready).
    engine.generate(
        &Batch {
            prompts: vec![prompt.clone()],
            params: SamplingParams {
                max_new_tokens: 4,
                ..params.clone()
            },
            shared_prefix: Some(guardreasoner_protocol::Prompt::new()),
        },
        &mut |_| {},
    )?;

    let (mut prefill, mut decode, mut per_check) = (Vec::new(), Vec::new(), Vec::new());
    let mut prompt_tokens = 0;
    let mut generated = 0;
    for _ in 0..runs.max(1) {
        // An empty shared prefix: the whole prompt is evaluated, single stream.
        let start = Instant::now();
        let generation = engine
            .generate(
                &Batch {
                    prompts: vec![prompt.clone()],
                    params: params.clone(),
                    shared_prefix: Some(guardreasoner_protocol::Prompt::new()),
                },
                &mut |_| {},
            )?
            .remove(0);
        per_check.push(start.elapsed().as_secs_f64());
        prompt_tokens = generation.prompt_tokens;
        generated = generation.generated_tokens;
        let evaluated = (generation.prompt_tokens - generation.cached_prompt_tokens) as f64;
        prefill.push(evaluated / generation.timings.prefill.as_secs_f64().max(1e-9));
        decode.push(
            generation.generated_tokens.saturating_sub(1) as f64
                / generation.timings.decode.as_secs_f64().max(1e-9),
        );
    }

    let prompts: Vec<guardreasoner_protocol::Prompt> = conversations
        .iter()
        .map(|c| guard.render(c, None))
        .collect::<Result<_, _>>()?;
    let (mut concurrent_per_check, mut concurrent_rate) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let generations = engine.generate(
            &Batch {
                prompts: prompts.clone(),
                params: params.clone(),
                shared_prefix: guard.shared_prefix(),
            },
            &mut |_| {},
        )?;
        let seconds = start.elapsed().as_secs_f64();
        let tokens: usize = generations.iter().map(|g| g.generated_tokens).sum();
        concurrent_per_check.push(seconds / prompts.len() as f64);
        concurrent_rate.push(tokens as f64 / seconds);
    }
    Ok(BenchReport {
        model: engine.info().source.clone(),
        backend: engine.info().backend.to_string(),
        device: engine.info().device.clone(),
        cpu: crate::cpu::running_cpu(),
        built_for: crate::cpu::built_for(),
        instruction_sets: crate::cpu::instruction_sets(),
        prompt_tokens,
        new_tokens: generated,
        prefill_tokens_per_second: median(prefill),
        decode_tokens_per_second: median(decode),
        seconds_per_check: median(per_check),
        concurrency: prompts.len(),
        concurrent_seconds_per_check: median(concurrent_per_check),
        concurrent_tokens_per_second: median(concurrent_rate),
        peak_memory_mb: peak_memory_mb(),
    })
}

pub fn run(args: Args) -> Result<()> {
    let mut model = args.model.clone();
    model.batch_size = model.batch_size.max(args.concurrency);
    let mut engine = load_engine(&model)?;
    let report = measure(
        engine.as_mut(),
        args.new_tokens,
        args.runs,
        args.concurrency,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "model: {} ({} on {})",
        report.model, report.backend, report.device
    );
    println!("cpu: {}; binary: {}", report.cpu, report.built_for);
    println!("instruction sets: {}", report.instruction_sets);
    println!(
        "guard prompt: {} tokens, {} new tokens, medians of {} runs",
        report.prompt_tokens, args.new_tokens, args.runs
    );
    println!("prefill: {:.1} tokens/s", report.prefill_tokens_per_second);
    println!("decode: {:.1} tokens/s", report.decode_tokens_per_second);
    println!("one check: {:.2} s", report.seconds_per_check);
    println!(
        "{} concurrent checks: {:.2} s per check, {:.1} tokens/s in all",
        report.concurrency,
        report.concurrent_seconds_per_check,
        report.concurrent_tokens_per_second
    );
    if let Some(mb) = report.peak_memory_mb {
        println!("peak memory: {mb:.0} MB");
    }
    Ok(())
}
