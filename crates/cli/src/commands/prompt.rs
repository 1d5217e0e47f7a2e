//! `guardreasoner prompt`: the exact text a guard model reads, for use with any runtime.

use anyhow::Result;
use clap::ValueEnum;
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
    #[arg(long, value_enum, default_value_t = Format::Eval)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Eval,
    Deploy,
    Llama3Chat,
}

pub fn run(args: Args) -> Result<()> {
    let format = match args.format {
        Format::Eval => PromptFormat::Eval,
        Format::Deploy => PromptFormat::Deploy,
        Format::Llama3Chat => PromptFormat::Llama3Chat,
    };
    let conversation = Conversation {
        prompt: args.prompt,
        response: args.response,
    };
    print!("{}", format.render(&conversation));
    Ok(())
}
