//! A conversation turn to be judged: the user's prompt and, optionally, the AI's response.

use serde::{Deserialize, Serialize};

use crate::instruction::{input_block, input_prompt, ASSISTANT_HEADER, HUMAN_HEADER, NO_RESPONSE};
use crate::prompt::Prompt;

/// One user prompt and, when there is one, the AI assistant's response to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// What the human user asked.
    pub prompt: String,
    /// What the AI assistant answered; `None` when only the prompt is to be judged.
    #[serde(default)]
    pub response: Option<String>,
}

impl Conversation {
    /// A prompt with no response (only the request's harmfulness can be judged).
    pub fn prompt_only(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            response: None,
        }
    }

    /// A prompt and the response to it.
    pub fn with_response(prompt: impl Into<String>, response: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            response: Some(response.into()),
        }
    }

    /// The input block the guard reads (SPEC section 2), with `None` for a missing response.
    pub fn input_block(&self) -> String {
        input_block(&self.prompt, self.response.as_deref())
    }

    /// The input block as a [`Prompt`], the prompt and the response marked as content.
    pub fn input_prompt(&self) -> Prompt {
        input_prompt(&self.prompt, self.response.as_deref())
    }

    /// Reads an input block back into a conversation.
    ///
    /// The block is `"Human user:\n{prompt}\n\nAI assistant:\n{response}\n\n"`. The split is made at
    /// the first `"\n\nAI assistant:\n"`, which round-trips every record of the benchmark files. A
    /// response that is the literal `None` becomes `None`, as the benchmark files use it for
    /// prompt-only samples. Returns `None` when the text is not an input block.
    pub fn from_input_block(block: &str) -> Option<Self> {
        let rest = block.strip_prefix(HUMAN_HEADER)?;
        let body = rest.strip_suffix("\n\n")?;
        let split = body.find(ASSISTANT_HEADER)?;
        let prompt = &body[..split];
        let response = &body[split + ASSISTANT_HEADER.len()..];
        Some(Self {
            prompt: prompt.to_string(),
            response: (response != NO_RESPONSE).then(|| response.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_block_round_trips() {
        for conversation in [
            Conversation::prompt_only("How do I bake bread?"),
            Conversation::with_response("Tell me a joke", "Why did the chicken...\n\nBecause."),
            Conversation::with_response("", ""),
        ] {
            let block = conversation.input_block();
            assert_eq!(Conversation::from_input_block(&block), Some(conversation));
        }
    }

    #[test]
    fn a_literal_none_response_means_no_response() {
        let parsed =
            Conversation::from_input_block("Human user:\nhi\n\nAI assistant:\nNone\n\n").unwrap();
        assert_eq!(parsed.response, None);
    }

    #[test]
    fn text_that_is_not_an_input_block_is_rejected() {
        assert_eq!(Conversation::from_input_block("hello"), None);
        assert_eq!(
            Conversation::from_input_block("Human user:\nhi\n\nAI assistant:\nyo"),
            None
        );
    }
}
