//! `guardreasoner prompt`: the exact text a guard model reads, for use with any runtime.
//!
//! The text is printed as it is: a control-token string in the conversation stays visible as the
//! characters it is. `--json` also prints the spans, which say what a tokenizer may parse as
//! control tokens (the format's text) and what it must not (the conversation's).

use anyhow::Result;
use guardreasoner_protocol::{Conversation, PromptFormat};

#[derive(clap::Args)]
pub struct Args {
    /// The user's prompt.
    #[arg(long)]
    prompt: String,
    /// The AI's response, if there is one.
    #[arg(long)]
    response: Option<String>,
    /// `eval` (what the paper measured), `deploy` (the repository's deploy script), or
    /// `llama3-chat` (the training template).
    #[arg(long, default_value_t = PromptFormat::Eval)]
    format: PromptFormat,
    /// Print `{"text": ..., "spans": [{"kind": "format"|"content", "text": ...}]}` instead of
    /// the text alone.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let format = args.format;
    let conversation = Conversation {
        prompt: args.prompt,
        response: args.response,
    };
    let prompt = format.render(&conversation);
    if args.json {
        let json = serde_json::json!({ "text": prompt.text(), "spans": prompt.spans() });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{prompt}");
    }
    Ok(())
}
