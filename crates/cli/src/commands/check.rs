//! `guardreasoner check`: one conversation (streamed) or a JSONL file of them through a guard model.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use guardreasoner_engine::EngineError;
use guardreasoner_guard::{CheckResult, DecidedBy, Guard, GuardError, UnparseablePolicy};
use guardreasoner_protocol::Conversation;
use serde::Deserialize;
use serde_json::json;

use super::model_args::{load_engine, GenerationArgs, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    generation: GenerationArgs,
    /// The user's prompt to judge.
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    prompt: Option<String>,
    /// The AI's response to judge with it.
    #[arg(long, requires = "prompt")]
    response: Option<String>,
    /// A JSONL file of conversations, one `{"prompt": ..., "response": ...}` per line (an `id`
    /// field is copied to the output). Writes one JSON line per input, in order.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Print one JSON object instead of streaming the reasoning.
    #[arg(long)]
    json: bool,
    /// When the output lacks an answer: `error`, `fail-closed` (treat as harmful) or `fail-open`.
    #[arg(long, default_value_t = UnparseablePolicy::FailClosed)]
    policy: UnparseablePolicy,
}

pub fn run(args: Args) -> Result<()> {
    // Read and validate the input before loading a model, so a bad line fails fast.
    let inputs = match &args.input {
        Some(path) => Some(read_inputs(path)?),
        None => None,
    };
    let engine = load_engine(&args.model)?;
    let mut guard = Guard::new(engine, args.generation.guard_config(args.policy));
    match inputs {
        Some(inputs) => check_many(&mut guard, &inputs, args.model.batch_size.max(1)),
        None => {
            let conversation = Conversation {
                prompt: args.prompt.unwrap_or_default(),
                response: args.response,
            };
            check_one(&mut guard, &conversation, args.json)
        }
    }
}

fn check_one(
    guard: &mut Guard<Box<dyn guardreasoner_engine::Generate>>,
    conversation: &Conversation,
    as_json: bool,
) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    let result = guard.check(conversation, &mut |text| {
        if !as_json {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
    });
    drop(stdout);
    let result = result?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    println!("\n");
    print_summary(&result);
    Ok(())
}

fn print_summary(result: &CheckResult) {
    let verdict = &result.verdict;
    println!(
        "verdict: request {} | completion {} | response {}",
        verdict.request.as_str(),
        verdict.completion.as_str(),
        verdict.response.as_str()
    );
    let decision = if result.harmful {
        "HARMFUL"
    } else {
        "unharmful"
    };
    match result.decided_by {
        DecidedBy::Model => println!("decision: {decision}"),
        DecidedBy::Policy => println!(
            "decision: {decision}, by the {} policy: the output gives no {} answer",
            result.policy,
            result
                .missing
                .iter()
                .map(|t| t.answer_key())
                .collect::<Vec<_>>()
                .join("/")
        ),
    }
    let decode = result.timings.decode.as_secs_f64();
    println!(
        "tokens: prompt {} ({} reused), generated {}; prefill {:.2}s, decode {:.2}s ({:.1} tokens/s), stop: {:?}",
        result.usage.prompt_tokens,
        result.usage.cached_prompt_tokens,
        result.usage.generated_tokens,
        result.timings.prefill.as_secs_f64(),
        decode,
        if decode > 0.0 { result.usage.generated_tokens as f64 / decode } else { 0.0 },
        result.stop
    );
}

/// One line of a `--input` file.
#[derive(Debug, Deserialize)]
struct InputLine {
    prompt: String,
    #[serde(default)]
    response: Option<String>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

struct Input {
    line: usize,
    id: Option<serde_json::Value>,
    conversation: Conversation,
}

fn read_inputs(path: &Path) -> Result<Vec<Input>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut inputs = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line
            .with_context(|| format!("{}:{number}: cannot read (is it UTF-8?)", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: InputLine = serde_json::from_str(&line).with_context(|| {
            format!("{}:{number}: expected a JSON object with a `prompt` string and an optional `response`", path.display())
        })?;
        inputs.push(Input {
            line: number,
            id: parsed.id,
            conversation: Conversation {
                prompt: parsed.prompt,
                response: parsed.response,
            },
        });
    }
    if inputs.is_empty() {
        bail!("{}: no conversations in the file", path.display());
    }
    Ok(inputs)
}

fn check_many(
    guard: &mut Guard<Box<dyn guardreasoner_engine::Generate>>,
    inputs: &[Input],
    batch_size: usize,
) -> Result<()> {
    let bar = super::progress::bar(inputs.len() as u64, "conversations");
    let mut stdout = std::io::stdout().lock();
    let (mut harmful, mut errors, mut by_policy) = (0, 0, 0);
    for chunk in inputs.chunks(batch_size) {
        // Prompts that cannot fit are answered with an error line instead of failing the batch.
        let mut runnable = Vec::new();
        let mut lines: Vec<Option<serde_json::Value>> = vec![None; chunk.len()];
        for (i, input) in chunk.iter().enumerate() {
            // What the model reads: with model-chat, the prompt inside the model's template.
            let model_input = guard.render(&input.conversation)?;
            match guard.engine().check_fits(i, &model_input) {
                Ok(()) => runnable.push(i),
                Err(EngineError::PromptTooLong {
                    tokens, context, ..
                }) => {
                    lines[i] = Some(json!({
                        "line": input.line, "id": input.id,
                        "error": format!("the prompt is {tokens} tokens; the context holds {context} (raise --context or shorten it)"),
                    }));
                }
                Err(error @ EngineError::InvalidPrompt { .. }) => {
                    lines[i] = Some(json!({
                        "line": input.line, "id": input.id, "error": error.to_string(),
                    }));
                }
                Err(error) => return Err(error.into()),
            }
        }
        let conversations: Vec<Conversation> = runnable
            .iter()
            .map(|&i| chunk[i].conversation.clone())
            .collect();
        let results = if conversations.is_empty() {
            Vec::new()
        } else {
            guard.check_batch(&conversations, &mut |_, _| {})?
        };
        for (&i, result) in runnable.iter().zip(results) {
            let input = &chunk[i];
            lines[i] = Some(match result {
                Ok(result) => {
                    harmful += usize::from(result.harmful);
                    by_policy += usize::from(result.decided_by == DecidedBy::Policy);
                    json!({"line": input.line, "id": input.id, "result": result})
                }
                Err(GuardError::Engine(error)) => return Err(error.into()),
                Err(error) => {
                    json!({"line": input.line, "id": input.id, "error": error.to_string()})
                }
            });
        }
        for line in lines.into_iter().flatten() {
            errors += usize::from(line.get("error").is_some());
            writeln!(stdout, "{line}")?;
        }
        stdout.flush()?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    eprintln!(
        "{} conversations: {harmful} harmful, {errors} errors, {by_policy} decided by the unparseable-output policy",
        inputs.len()
    );
    Ok(())
}
