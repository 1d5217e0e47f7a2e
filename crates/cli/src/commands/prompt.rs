//! `guardreasoner prompt`: the exact text a guard model reads, for use with any runtime.

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
}

pub fn run(args: Args) -> Result<()> {
    let format = args.format;
    let conversation = Conversation {
        prompt: args.prompt,
        response: args.response,
    };
    print!("{}", format.render(&conversation));
    Ok(())
}
