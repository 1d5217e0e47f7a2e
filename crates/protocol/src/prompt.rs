//! A prompt as spans: the format's own text and the conversation's text, kept apart to the
//! tokenizer.
//!
//! A guard's input is an attacker's text. Tokenizers turn control-token strings (`<|eot_id|>`,
//! `<|im_start|>`) into control tokens wherever they parse special tokens, so a conversation that
//! contains one could end the input, forge a turn or stop the guard. A [`Prompt`] says which text
//! the format wrote ([`SpanKind::Format`]: control tokens in it are parsed, a chat template's
//! markers need it) and which came from a user ([`SpanKind::Content`]: always plain text). The
//! engine's tokenizer (`guardreasoner_engine::tokenize`) is the one place that reads the spans.
//!
//! For text without control strings, the tokens do not depend on where spans begin and end: the
//! tokenizer splits only at the control tokens the format wrote, and tokenizes the text between
//! two of them as one piece, as whole-string tokenization does.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Who wrote a span, which decides how it is tokenized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// The format's own text (the instruction, the input block's headers, a chat template's
    /// markers): control-token text in it becomes the control token.
    Format,
    /// Text a caller passed through (the user's prompt, the AI's response, a message's content):
    /// always plain text, so a control-token string in it is tokenized as the characters it is.
    Content,
}

/// A run of text of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Span {
    /// Who wrote it.
    pub kind: SpanKind,
    /// The text.
    pub text: String,
}

/// The text a model reads, in spans of the format's text and of content.
///
/// Spans are never empty, and two neighbours always differ in kind (pushing text of the kind the
/// last span has extends it), so two prompts of the same text and kinds compare equal.
///
/// It serializes as `{"spans": [...]}` and is built only through its methods (not deserialized),
/// so that the rule holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Prompt {
    spans: Vec<Span>,
}

impl Prompt {
    /// An empty prompt.
    pub fn new() -> Self {
        Self::default()
    }

    /// A prompt that is the format's text alone: a shared prefix, or a text the caller vouches for
    /// as the model's raw input (a completions prompt, whose control strings are control tokens).
    pub fn format(text: impl AsRef<str>) -> Self {
        let mut prompt = Self::new();
        prompt.push_format(text.as_ref());
        prompt
    }

    /// A prompt that is content alone: a chat message's text, any text whose control strings must
    /// stay text.
    pub fn content(text: impl AsRef<str>) -> Self {
        let mut prompt = Self::new();
        prompt.push_content(text.as_ref());
        prompt
    }

    /// Appends text of `kind`.
    pub fn push(&mut self, kind: SpanKind, text: &str) -> &mut Self {
        if text.is_empty() {
            return self;
        }
        match self.spans.last_mut() {
            Some(last) if last.kind == kind => last.text.push_str(text),
            _ => self.spans.push(Span {
                kind,
                text: text.to_string(),
            }),
        }
        self
    }

    /// Appends the format's text.
    pub fn push_format(&mut self, text: &str) -> &mut Self {
        self.push(SpanKind::Format, text)
    }

    /// Appends content.
    pub fn push_content(&mut self, text: &str) -> &mut Self {
        self.push(SpanKind::Content, text)
    }

    /// Appends every span of `other`.
    pub fn append(&mut self, other: &Prompt) -> &mut Self {
        for span in &other.spans {
            self.push(span.kind, &span.text);
        }
        self
    }

    /// The spans, in order.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// The texts of the spans of `kind`, in order (what a caller passed through, say).
    pub fn texts(&self, kind: SpanKind) -> Vec<&str> {
        self.spans
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.text.as_str())
            .collect()
    }

    /// The whole text, as the model reads it (and as `guardreasoner prompt` shows it: a control
    /// string in content stays visible as the characters it is).
    pub fn text(&self) -> String {
        self.spans.iter().map(|s| s.text.as_str()).collect()
    }

    /// The length of the text in bytes.
    pub fn len(&self) -> usize {
        self.spans.iter().map(|s| s.text.len()).sum()
    }

    /// Whether the prompt has no text.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Whether `prefix` is the start of this prompt, kinds included.
    pub fn starts_with(&self, prefix: &Prompt) -> bool {
        self.common_prefix_len(prefix) == prefix.len()
    }

    /// The longest start this prompt and `other` share, text and kinds, ending on a character.
    pub fn common_prefix(&self, other: &Prompt) -> Prompt {
        self.prefix(self.common_prefix_len(other))
    }

    /// Bytes of text, from the start, that this prompt and `other` share with the same kinds
    /// (always on a character boundary).
    fn common_prefix_len(&self, other: &Prompt) -> usize {
        let mut shared = 0;
        for (a, b) in self.spans.iter().zip(&other.spans) {
            if a.kind != b.kind {
                break;
            }
            let same = a
                .text
                .char_indices()
                .zip(b.text.chars())
                .take_while(|((_, x), y)| x == y)
                .last()
                .map_or(0, |((at, c), _)| at + c.len_utf8());
            shared += same;
            if same < a.text.len() || same < b.text.len() {
                break;
            }
        }
        shared
    }

    /// The first `bytes` bytes of text (a character boundary), with their kinds.
    fn prefix(&self, bytes: usize) -> Prompt {
        let mut out = Prompt::new();
        let mut left = bytes;
        for span in &self.spans {
            if left == 0 {
                break;
            }
            let take = left.min(span.text.len());
            out.push(span.kind, &span.text[..take]);
            left -= take;
        }
        out
    }

    /// The prompt with whitespace removed from its start and/or end, across spans (what a chat
    /// template's `.strip()` does to a message's text).
    pub fn trimmed(&self, start: bool, end: bool) -> Prompt {
        let text = self.text();
        let from = if start {
            text.len() - text.trim_start().len()
        } else {
            0
        };
        let to = if end {
            text.trim_end().len().max(from)
        } else {
            text.len()
        };
        self.slice(from, to)
    }

    /// Bytes `from..to` of the text (character boundaries), with their kinds.
    fn slice(&self, from: usize, to: usize) -> Prompt {
        let mut out = Prompt::new();
        let mut at = 0;
        for span in &self.spans {
            let (start, end) = (at, at + span.text.len());
            at = end;
            let (a, b) = (from.max(start), to.min(end));
            if a < b {
                out.push(span.kind, &span.text[a - start..b - start]);
            }
        }
        out
    }
}

impl fmt::Display for Prompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for span in &self.spans {
            f.write_str(&span.text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_of_one_kind_merge_and_empty_text_adds_nothing() {
        let mut prompt = Prompt::new();
        prompt
            .push_format("a")
            .push_format("b")
            .push_content("")
            .push_content("c")
            .push_format("d");
        assert_eq!(prompt.spans().len(), 3);
        assert_eq!(prompt.text(), "abcd");
        assert_eq!(prompt.to_string(), "abcd");
        assert_eq!(prompt.len(), 4);
        assert_eq!(prompt.texts(SpanKind::Content), ["c"]);
        assert!(Prompt::format("x").texts(SpanKind::Content).is_empty());
    }

    #[test]
    fn the_common_prefix_keeps_kinds_and_ends_on_a_character() {
        let mut a = Prompt::format("Instruction: ");
        a.push_content("é a");
        let mut b = Prompt::format("Instruction: ");
        b.push_content("é b");
        let mut expected = Prompt::format("Instruction: ");
        expected.push_content("é ");
        assert_eq!(a.common_prefix(&b), expected);
        assert!(a.starts_with(&expected));
        // The same text of another kind is not shared.
        let c = Prompt::content("Instruction: é a");
        assert!(a.common_prefix(&c).is_empty());
        assert!(!a.starts_with(&c));
        let split = Prompt::content("xé").common_prefix(&Prompt::content("xè"));
        assert_eq!(split, Prompt::content("x"));
    }

    #[test]
    fn trimming_cuts_across_spans() {
        let mut prompt = Prompt::format("  \n");
        prompt.push_content(" hi ").push_format("\n\n");
        let mut expected = Prompt::content("hi");
        assert_eq!(prompt.trimmed(true, true), expected);
        expected = Prompt::content("hi ");
        expected.push_format("\n\n");
        assert_eq!(prompt.trimmed(true, false), expected);
        assert_eq!(prompt.trimmed(false, false), prompt);
        assert!(Prompt::format("   ").trimmed(true, true).is_empty());
    }
}
