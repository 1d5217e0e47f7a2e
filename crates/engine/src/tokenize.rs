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

use aho_corasick::{AhoCorasick, MatchKind};
use guardreasoner_protocol::{Prompt, SpanKind};

use crate::error::EngineError;

/// What a tokenizer must give [`tokenize`].
pub trait Vocabulary {
    /// The ids of `text` as plain text, as a sequence's first piece: no control token is parsed
    /// from it (tokens the vocabulary marks as ordinary added text, such as llama.cpp's
    /// user-defined ones and Hugging Face's non-special added tokens, still are, as in
    /// whole-string tokenization), and nothing is added around it.
    fn plain(&self, text: &str) -> Result<Vec<u32>, EngineError>;

    /// The ids of `text` as plain text right after a control token. The same as [`Self::plain`]
    /// except for tokenizers that treat a sequence's start apart (Hugging Face's Metaspace
    /// pre-tokenizer with `prepend_scheme: first` adds its `▁` at the start only).
    fn plain_after_control(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.plain(text)
    }

    /// The control tokens the format's text may write, and what surrounds a whole sequence.
    fn markers(&self) -> &Markers;
}

/// One control token: its text, its id, and whether it swallows the whitespace beside it (the
/// `lstrip` / `rstrip` of Hugging Face's added tokens, llama.cpp's `LSTRIP` / `RSTRIP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The text that stands for it.
    pub text: String,
    /// Its id.
    pub id: u32,
    /// Whitespace before it is dropped.
    pub lstrip: bool,
    /// Whitespace after it is dropped.
    pub rstrip: bool,
}

impl Control {
    /// A control token that keeps the whitespace around it (most do).
    pub fn new(text: impl Into<String>, id: u32) -> Self {
        Self {
            text: text.into(),
            id,
            lstrip: false,
            rstrip: false,
        }
    }
}

/// A vocabulary's control tokens by text, and the ids it puts around a sequence (BOS).
#[derive(Debug, Clone)]
pub struct Markers {
    controls: Vec<Control>,
    /// Finds control texts, leftmost-longest (as Hugging Face's added-token split does), in one
    /// pass over the text.
    finder: Option<AhoCorasick>,
    /// The ids a sequence starts with (BOS where the model wants it).
    pub prefix: Vec<u32>,
    /// The ids a sequence ends with (EOS for the few models that add one).
    pub suffix: Vec<u32>,
}

impl Markers {
    /// Markers of `controls` (any order; empty texts are dropped), with `prefix` and `suffix`.
    pub fn new(controls: Vec<Control>, prefix: Vec<u32>, suffix: Vec<u32>) -> Self {
        let mut controls: Vec<Control> = controls
            .into_iter()
            .filter(|control| !control.text.is_empty())
            .collect();
        controls.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(controls.iter().map(|c| c.text.as_str()))
            .ok();
        Self {
            controls,
            finder,
            prefix,
            suffix,
        }
    }

    /// What a vocabulary adds around a sequence, read off its own tokenization of one word with
    /// and without its special tokens (`with` is `prefix + without + suffix`); `None` where
    /// `with` is not that, so that a caller falls back rather than guesses.
    pub fn edges(with: &[u32], without: &[u32]) -> Option<(Vec<u32>, Vec<u32>)> {
        let at = (0..=with.len().checked_sub(without.len())?)
            .find(|&at| with[at..].starts_with(without))?;
        Some((with[..at].to_vec(), with[at + without.len()..].to_vec()))
    }

    /// Whether `id` is one of the control tokens.
    pub fn is_control(&self, id: u32) -> bool {
        self.controls.iter().any(|control| control.id == id)
    }

    /// The control tokens, longest text first.
    pub fn controls(&self) -> &[Control] {
        &self.controls
    }
}

/// A piece of a prompt on its way to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text tokenized as one run.
    Text(String),
    /// A control token the format wrote: its index in [`Markers::controls`].
    Control(usize),
}

/// The ids of `prompt`: the vocabulary's prefix, then control tokens where the format's spans
/// write them and plain text everywhere else, then its suffix.
pub fn tokenize(vocabulary: &dyn Vocabulary, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
    let markers = vocabulary.markers();
    let mut ids = markers.prefix.clone();
    // The prefix (BOS) does not count: whole-string tokenization adds it after the fact.
    let mut after_control = false;
    for piece in pieces(markers, prompt) {
        let control = matches!(piece, Piece::Control(_));
        match piece {
            Piece::Text(text) if after_control => {
                ids.extend(vocabulary.plain_after_control(&text)?)
            }
            Piece::Text(text) => ids.extend(vocabulary.plain(&text)?),
            Piece::Control(index) => ids.push(markers.controls[index].id),
        }
        after_control = control;
    }
    ids.extend_from_slice(&markers.suffix);
    Ok(ids)
}

/// The prompt split at the control strings of its format spans, content joined to the text
/// around it, and the whitespace a stripping control token swallows taken away.
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
                let mut at = 0;
                if let Some(finder) = &markers.finder {
                    for found in finder.find_iter(&span.text) {
                        push_text(&mut out, &span.text[at..found.start()]);
                        out.push(Piece::Control(found.pattern().as_usize()));
                        at = found.end();
                    }
                }
                push_text(&mut out, &span.text[at..]);
            }
        }
    }
    // Whole-string tokenization drops the whitespace a stripping control token swallows, the
    // format's or the content's alike; so do the pieces.
    for i in 0..out.len() {
        let Piece::Control(index) = out[i] else {
            continue;
        };
        let control = &markers.controls[index];
        if control.lstrip && i > 0 {
            if let Piece::Text(before) = &mut out[i - 1] {
                before.truncate(before.trim_end().len());
            }
        }
        if control.rstrip {
            if let Some(Piece::Text(after)) = out.get_mut(i + 1) {
                *after = after.trim_start().to_string();
            }
        }
    }
    out.retain(|piece| !matches!(piece, Piece::Text(text) if text.is_empty()));
    out
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
            vec![
                Control::new("<s>", 1),
                Control::new("<s>x", 2),
                Control::new("", 9),
            ],
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
        // `<s>` is the shorter control: the second of the two, longest first.
        assert_eq!(
            pieces(&markers, &prompt),
            vec![Piece::Text("head user tail".into()), Piece::Control(1)]
        );
    }

    #[test]
    fn a_stripping_control_token_swallows_the_whitespace_beside_it() {
        let mut eot = Control::new("<e>", 7);
        (eot.lstrip, eot.rstrip) = (true, true);
        let markers = Markers::new(vec![eot], vec![], vec![]);
        let mut prompt = Prompt::content("a  ");
        prompt.push_format("<e>").push_content(" \n b");
        assert_eq!(
            pieces(&markers, &prompt),
            vec![
                Piece::Text("a".into()),
                Piece::Control(0),
                Piece::Text("b".into())
            ]
        );
        assert_eq!(
            pieces(&markers, &Prompt::format(" <e> ")),
            vec![Piece::Control(0)]
        );
    }

    #[test]
    fn edges_are_what_the_special_tokens_add() {
        assert_eq!(
            Markers::edges(&[7, 5, 6, 8], &[5, 6]),
            Some((vec![7], vec![8]))
        );
        assert_eq!(Markers::edges(&[5, 6], &[5, 6]), Some((vec![], vec![])));
        assert_eq!(Markers::edges(&[5], &[6]), None);
        assert_eq!(Markers::edges(&[], &[6]), None);
        assert!(vocabulary().0.is_control(2) && !vocabulary().0.is_control(9));
    }
}
