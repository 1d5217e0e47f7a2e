//! A [`Prompt`] into token ids: the one place that reads a prompt's spans, for every local
//! backend (llama.cpp's vocabulary and the candle backend's Hugging Face tokenizer alike).
//!
//! A tokenizer that parses special tokens splits the text at every control-token string, maps
//! each to its control token, and tokenizes the text between two of them as one piece (llama.cpp's
//! `tokenizer_st_partition`, Hugging Face's added-token split). [`tokenize`] does the same, except
//! that it looks for control strings only in the format's spans: content is joined to the text
//! around it and tokenized as plain text. So a conversation's `<|eot_id|>` is the characters it
//! is, and for text without control strings the ids equal whole-string tokenization exactly (the
//! pieces between control tokens are the same pieces; `tests/prompt_tokens.rs` checks it over
//! every benchmark conversation).

use guardreasoner_protocol::{Prompt, SpanKind};

use crate::error::EngineError;

/// What a tokenizer must give [`tokenize`].
pub trait Vocabulary {
    /// The ids of `text` as plain text: no control token is parsed from it (tokens the vocabulary
    /// marks as ordinary added text, such as llama.cpp's user-defined ones, still are, as in
    /// whole-string tokenization), and nothing is added around it.
    fn plain(&self, text: &str) -> Result<Vec<u32>, EngineError>;

    /// The control tokens the format's text may write, and what surrounds a whole sequence.
    fn markers(&self) -> &Markers;
}

/// A vocabulary's control tokens by text, and the ids it puts around a sequence (BOS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Markers {
    /// Control-token texts with their ids, longest first (so that a token that contains another
    /// is split out first, as llama.cpp does).
    controls: Vec<(String, u32)>,
    /// The ids a sequence starts with (BOS where the model wants it).
    pub prefix: Vec<u32>,
    /// The ids a sequence ends with (EOS for the few models that add one).
    pub suffix: Vec<u32>,
}

impl Markers {
    /// Markers of `controls` (any order; empty texts are dropped), with `prefix` and `suffix`.
    pub fn new(controls: Vec<(String, u32)>, prefix: Vec<u32>, suffix: Vec<u32>) -> Self {
        let mut controls: Vec<(String, u32)> = controls
            .into_iter()
            .filter(|(text, _)| !text.is_empty())
            .collect();
        controls.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Self {
            controls,
            prefix,
            suffix,
        }
    }

    /// What a vocabulary adds around a sequence, read off its own tokenization of one word with
    /// and without its special tokens (`with` is `prefix + without + suffix`).
    pub fn edges(with: &[u32], without: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let at = (0..=with.len().saturating_sub(without.len()))
            .find(|&at| with[at..].starts_with(without))
            .unwrap_or(with.len());
        let end = (at + without.len()).min(with.len());
        (with[..at].to_vec(), with[end..].to_vec())
    }

    /// Whether `id` is one of the control tokens.
    pub fn is_control(&self, id: u32) -> bool {
        self.controls.iter().any(|&(_, control)| control == id)
    }

    /// The control tokens, longest text first.
    pub fn controls(&self) -> &[(String, u32)] {
        &self.controls
    }
}

/// A piece of a prompt on its way to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text tokenized as one run.
    Text(String),
    /// A control token the format wrote.
    Control(u32),
}

/// The ids of `prompt`: the vocabulary's prefix, then control tokens where the format's spans
/// write them and plain text everywhere else, then its suffix.
pub fn tokenize(vocabulary: &dyn Vocabulary, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
    let markers = vocabulary.markers();
    let mut ids = markers.prefix.clone();
    for piece in pieces(markers, prompt) {
        match piece {
            Piece::Text(text) => ids.extend(vocabulary.plain(&text)?),
            Piece::Control(id) => ids.push(id),
        }
    }
    ids.extend_from_slice(&markers.suffix);
    Ok(ids)
}

/// The prompt split at the control strings of its format spans, content joined to the text
/// around it.
fn pieces(markers: &Markers, prompt: &Prompt) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    let push_text = |out: &mut Vec<Piece>, text: &str| {
        if text.is_empty() {
            return;
        }
        match out.last_mut() {
            Some(Piece::Text(run)) => run.push_str(text),
            _ => out.push(Piece::Text(text.to_string())),
        }
    };
    for span in prompt.spans() {
        match span.kind {
            SpanKind::Content => push_text(&mut out, &span.text),
            SpanKind::Format => {
                for piece in split_controls(markers, &span.text) {
                    match piece {
                        Piece::Text(text) => push_text(&mut out, &text),
                        control => out.push(control),
                    }
                }
            }
        }
    }
    out
}

/// `text` split at every control string, longest tokens first (llama.cpp's order).
fn split_controls(markers: &Markers, text: &str) -> Vec<Piece> {
    let mut pieces = vec![Piece::Text(text.to_string())];
    for (control, id) in &markers.controls {
        if !text.contains(control.as_str()) {
            continue;
        }
        pieces = pieces
            .into_iter()
            .flat_map(|piece| match piece {
                Piece::Text(text) if text.contains(control.as_str()) => {
                    let mut split = Vec::new();
                    for (i, part) in text.split(control.as_str()).enumerate() {
                        if i > 0 {
                            split.push(Piece::Control(*id));
                        }
                        if !part.is_empty() {
                            split.push(Piece::Text(part.to_string()));
                        }
                    }
                    split
                }
                other => vec![other],
            })
            .collect();
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One id per character, and two control tokens: enough to see where text is split.
    struct Chars(Markers);

    impl Vocabulary for Chars {
        fn plain(&self, text: &str) -> Result<Vec<u32>, EngineError> {
            Ok(text.chars().map(|c| c as u32).collect())
        }
        fn markers(&self) -> &Markers {
            &self.0
        }
    }

    fn vocabulary() -> Chars {
        Chars(Markers::new(
            vec![("<s>".into(), 1), ("<s>x".into(), 2), ("".into(), 9)],
            vec![1],
            vec![],
        ))
    }

    #[test]
    fn control_strings_are_parsed_in_the_format_text_only() {
        let mut prompt = Prompt::format("a<s>b");
        prompt.push_content("<s>").push_format("<s>x");
        let ids = tokenize(&vocabulary(), &prompt).unwrap();
        let text = |s: &str| s.chars().map(|c| c as u32).collect::<Vec<_>>();
        let mut expected = vec![1];
        expected.extend(text("a"));
        expected.push(1);
        expected.extend(text("b<s>"));
        // The longer control token wins where both match.
        expected.push(2);
        assert_eq!(ids, expected);
    }

    #[test]
    fn content_joins_the_text_around_it_into_one_run() {
        let markers = vocabulary().0;
        let mut prompt = Prompt::format("head ");
        prompt.push_content("user").push_format(" tail<s>");
        assert_eq!(
            pieces(&markers, &prompt),
            vec![Piece::Text("head user tail".into()), Piece::Control(1)]
        );
    }

    #[test]
    fn edges_are_what_the_special_tokens_add() {
        assert_eq!(Markers::edges(&[7, 5, 6, 8], &[5, 6]), (vec![7], vec![8]));
        assert_eq!(Markers::edges(&[5, 6], &[5, 6]), (vec![], vec![]));
        assert!(vocabulary().0.is_control(2) && !vocabulary().0.is_control(9));
    }
}
