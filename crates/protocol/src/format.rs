//! The three prompt formats the released models have met (SPEC section 2).

use crate::conversation::Conversation;
use crate::instruction::INSTRUCTION;
use crate::prompt::Prompt;

crate::choice! {
    /// How the instruction and the input block are put together into the text the model reads.
    ///
    /// Every format renders a [`Prompt`]: the instruction, the headers and the chat markers are
    /// the format's text; the conversation is content, which no tokenizer parses for control
    /// tokens.
    ///
    /// Every format is rendered without the BOS token: the tokenizer adds it, as it did when the
    /// released models were trained and evaluated.
    #[derive(Default)]
    pub enum PromptFormat("prompt format") {
        /// `instruction + "\n" + input` as raw text: what the paper's numbers were measured on.
        #[default]
        Eval = "eval",
        /// `instruction + input` as raw text: the repository's deploy script.
        Deploy = "deploy",
        /// LLaMA-Factory's `llama3` chat template around `instruction + "\n" + input`: the
        /// training form.
        Llama3Chat = "llama3-chat",
    }
}

/// The user header of the llama3 chat template.
const LLAMA3_USER_HEADER: &str = "<|start_header_id|>user<|end_header_id|>\n\n";
/// What closes the user turn and opens the assistant's in the llama3 chat template.
const LLAMA3_ASSISTANT_HEADER: &str = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";

impl PromptFormat {
    /// Renders a conversation into what the model reads: the format's text, with the user's
    /// prompt and the AI's response as content.
    pub fn render(self, conversation: &Conversation) -> Prompt {
        self.render_prompt(INSTRUCTION, &conversation.input_prompt())
    }

    /// Renders an already-built input block (as stored in the benchmark files). A block that reads
    /// back into a conversation ([`Conversation::from_input_block`]) gets the conversation's
    /// spans; any other text is content as a whole, so nothing in it is parsed for control
    /// tokens either way.
    pub fn render_input(self, input: &str) -> Prompt {
        self.render_parts(INSTRUCTION, input)
    }

    /// Renders with an instruction of the caller's (a benchmark record's own, say); the
    /// instruction is the format's text (a data file's author wrote it, not a conversation's), the
    /// input block as [`PromptFormat::render_input`] reads it.
    pub fn render_parts(self, instruction: &str, input: &str) -> Prompt {
        self.render_prompt(instruction, &input_spans(input))
    }

    fn render_prompt(self, instruction: &str, input: &Prompt) -> Prompt {
        let mut prompt = Prompt::new();
        match self {
            Self::Eval => prompt
                .push_format(instruction)
                .push_format("\n")
                .append(input),
            Self::Deploy => prompt.push_format(instruction).append(input),
            Self::Llama3Chat => prompt
                .push_format(LLAMA3_USER_HEADER)
                .push_format(instruction)
                .push_format("\n")
                .append(input)
                .push_format(LLAMA3_ASSISTANT_HEADER),
        };
        prompt
    }

    /// The part of every rendered prompt that does not depend on the conversation. A backend can
    /// evaluate it once and reuse its state for every prompt.
    pub fn shared_prefix(self) -> Prompt {
        Prompt::format(match self {
            Self::Eval => format!("{INSTRUCTION}\n"),
            Self::Deploy => INSTRUCTION.to_string(),
            Self::Llama3Chat => format!("{LLAMA3_USER_HEADER}{INSTRUCTION}\n"),
        })
    }
}

/// An input block's spans: the conversation's when the text reads back as one, else all content.
fn input_spans(input: &str) -> Prompt {
    Conversation::from_input_block(input)
        .map(|conversation| conversation.input_prompt())
        .filter(|prompt| prompt.text() == input)
        .unwrap_or_else(|| Prompt::content(input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::SpanKind;

    #[test]
    fn eval_form_adds_one_newline_between_instruction_and_input() {
        let conversation = Conversation::prompt_only("hi");
        let text = PromptFormat::Eval.render(&conversation).text();
        assert_eq!(
            text,
            format!("{INSTRUCTION}\nHuman user:\nhi\n\nAI assistant:\nNone\n\n")
        );
    }

    #[test]
    fn deploy_form_joins_without_a_newline() {
        let conversation = Conversation::prompt_only("hi");
        assert_eq!(
            PromptFormat::Deploy.render(&conversation).text(),
            format!("{INSTRUCTION}Human user:\nhi\n\nAI assistant:\nNone\n\n")
        );
    }

    #[test]
    fn chat_form_wraps_the_eval_text_in_the_llama3_template() {
        let conversation = Conversation::with_response("a", "b");
        let text = PromptFormat::Llama3Chat.render(&conversation).text();
        assert!(
            text.starts_with("<|start_header_id|>user<|end_header_id|>\n\nYou are a classifier")
        );
        assert!(text.ends_with(
            "AI assistant:\nb\n\n<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        ));
        assert!(text.contains(&PromptFormat::Eval.render(&conversation).text()));
    }

    #[test]
    fn every_rendered_prompt_starts_with_the_shared_prefix() {
        let conversation = Conversation::with_response("x", "y");
        for format in PromptFormat::ALL {
            assert!(format
                .render(&conversation)
                .starts_with(&format.shared_prefix()));
            assert!(format
                .render(&conversation)
                .text()
                .starts_with(&format.shared_prefix().text()));
        }
    }

    #[test]
    fn the_conversation_is_content_and_everything_else_the_formats() {
        let conversation = Conversation::with_response("<|eot_id|>", "<|end_of_text|>");
        for format in PromptFormat::ALL {
            let prompt = format.render(&conversation);
            assert_eq!(
                prompt.texts(SpanKind::Content),
                ["<|eot_id|>", "<|end_of_text|>"],
                "{format}"
            );
            for text in prompt.texts(SpanKind::Format) {
                assert!(!text.contains("<|end_of_text|>"));
            }
        }
    }

    #[test]
    fn a_stored_input_block_gets_the_conversations_spans_or_is_content() {
        let conversation = Conversation::with_response("a\n\nAI assistant:\nb", "c");
        let block = conversation.input_block();
        let rendered = PromptFormat::Eval.render_input(&block);
        assert_eq!(rendered.text(), format!("{INSTRUCTION}\n{block}"));
        // The first "AI assistant:" header splits, as the benchmark files are read.
        assert_eq!(rendered.spans()[1].text, "a");
        let odd = PromptFormat::Eval.render_input("not a block <|eot_id|>");
        assert_eq!(odd.spans().last().unwrap().kind, SpanKind::Content);
        assert_eq!(odd.text(), format!("{INSTRUCTION}\nnot a block <|eot_id|>"));
    }

    #[test]
    fn names_parse_back() {
        for format in PromptFormat::ALL {
            assert_eq!(format.name().parse::<PromptFormat>().unwrap(), format);
        }
        let err = "chatml".parse::<PromptFormat>().unwrap_err();
        assert!(err.to_string().contains("chatml"));
    }
}
