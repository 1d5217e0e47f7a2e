//! llama.cpp's vocabulary as [`Vocabulary`]: plain text through llama.cpp's own tokenizer with
//! special-token parsing off, and the control tokens the model's vocabulary marks.

use std::sync::Arc;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;

use crate::error::EngineError;
use crate::tokenize::{Control, Markers, Vocabulary};

/// A loaded model's tokenizer.
pub(super) struct LlamaVocabulary {
    model: Arc<LlamaModel>,
    markers: Markers,
}

impl LlamaVocabulary {
    /// The vocabulary of `model`: its control (and unknown) tokens, as llama.cpp's own
    /// special-token split knows them, and what its tokenizer adds around a sequence.
    pub(super) fn new(model: Arc<LlamaModel>) -> Self {
        let (controls, prefix, suffix) = {
            let vocab = model.vocab();
            let controls = vocab
                .tokens()
                .filter_map(|token| {
                    let attr = vocab.attr(token);
                    if !attr.contains(LlamaTokenAttr::Control)
                        && !attr.contains(LlamaTokenAttr::Unknown)
                    {
                        return None;
                    }
                    let text = vocab.text(token)?.to_str().ok()?.to_string();
                    Some(Control {
                        text,
                        id: token.0 as u32,
                        lstrip: attr.contains(LlamaTokenAttr::LStrip),
                        rstrip: attr.contains(LlamaTokenAttr::RStrip),
                    })
                })
                .collect();
            let ids = |add_special| ids(vocab.tokenize(b"a", add_special, false));
            // llama.cpp adds BOS (and EOS, for the few models that ask) around the text; where
            // the two tokenizations do not show that shape, the vocabulary's own flags say it.
            let (prefix, suffix) = Markers::edges(&ids(true), &ids(false)).unwrap_or_else(|| {
                (
                    vocab
                        .should_add_bos()
                        .then(|| vocab.bos().0 as u32)
                        .into_iter()
                        .collect(),
                    vocab
                        .should_add_eos()
                        .then(|| vocab.eos().0 as u32)
                        .into_iter()
                        .collect(),
                )
            });
            (controls, prefix, suffix)
        };
        Self {
            model,
            markers: Markers::new(controls, prefix, suffix),
        }
    }

    /// How many token ids the vocabulary has.
    pub(super) fn size(&self) -> usize {
        self.model.vocab().n_tokens().max(0) as usize
    }

    /// llama.cpp's ids of `text` as one string, BOS included where the model wants it.
    pub(super) fn whole(&self, text: &str, parse_special: bool) -> Vec<u32> {
        ids(self
            .model
            .vocab()
            .tokenize(text.as_bytes(), true, parse_special))
    }

    /// The prompt's ids as llama.cpp tokens.
    pub(super) fn tokens(
        &self,
        prompt: &guardreasoner_protocol::Prompt,
    ) -> Result<Vec<LlamaToken>, EngineError> {
        Ok(crate::tokenize::tokenize(self, prompt)?
            .into_iter()
            .map(|id| LlamaToken(id as i32))
            .collect())
    }
}

/// llama.cpp's tokens as the ids the engine passes around.
fn ids(tokens: Vec<LlamaToken>) -> Vec<u32> {
    tokens.into_iter().map(|t| t.0 as u32).collect()
}

impl Vocabulary for LlamaVocabulary {
    fn plain(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(ids(self.model.vocab().tokenize(
            text.as_bytes(),
            false,
            false,
        )))
    }

    fn markers(&self) -> &Markers {
        &self.markers
    }
}
