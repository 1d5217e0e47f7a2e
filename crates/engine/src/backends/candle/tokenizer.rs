//! Tokenizers for the candle backend: a `tokenizer.json`, or one rebuilt from a GGUF file's
//! metadata.
//!
//! candle's own GGUF tokenizer does not know the pre-tokenizers `smollm` (SmolLM2) and `llama-bpe`
//! (Llama 3 as llama.cpp writes it) and falls back to GPT-2's, which gives wrong ids. Here each
//! known pre-tokenizer name maps to the split that llama.cpp applies for it, and anything else is
//! refused rather than guessed.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use guardreasoner_protocol::Prompt;

use crate::error::EngineError;
use crate::tokenize::{Control, Markers, Vocabulary};

/// Llama 3's split (llama.cpp `llama-bpe`, Hugging Face's Llama 3 `tokenizer.json`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer with the facts generation needs.
pub struct GuardTokenizer {
    inner: Tokenizer,
    /// The same tokenizer with special-token matching off (Hugging Face's
    /// `split_special_tokens`): how content is tokenized.
    plain: Tokenizer,
    /// `plain` for text after a control token, where it differs (a Metaspace pre-tokenizer that
    /// prepends `▁` to a sequence's first piece only).
    after_control: Option<Tokenizer>,
    bos: Option<u32>,
    markers: Markers,
    /// Tokens that end generation.
    pub eos: Vec<u32>,
}

/// The text of generated tokens as they arrive, rendered by the tokenizer's own decoder
/// (`tokenizers`' `DecodeStream`: byte-level BPE, SentencePiece's `▁` and byte fallback alike),
/// holding back a token that ends inside a UTF-8 character. Special tokens and end-of-text
/// tokens render as nothing.
pub struct TextStream<'a> {
    tokenizer: &'a GuardTokenizer,
    stream: tokenizers::DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
    ids: Vec<u32>,
    /// The text given out so far.
    text: String,
}

impl TextStream<'_> {
    /// Adds a token; returns the text it completes (often empty).
    pub fn push(&mut self, id: u32) -> Result<String, EngineError> {
        if self.tokenizer.eos.contains(&id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        let piece = self
            .stream
            .step(id)
            .map_err(|e| {
                EngineError::backend_caused("candle", format!("cannot decode token {id}"), e)
            })?
            .unwrap_or_default();
        self.text.push_str(&piece);
        Ok(piece)
    }

    /// The text held back at the end (an incomplete character, as the full decode renders it),
    /// which also joins the text given out.
    pub fn finish(&mut self) -> String {
        let full = self.tokenizer.decode(&self.ids);
        let rest = full
            .strip_prefix(self.text.as_str())
            .unwrap_or_default()
            .to_string();
        self.text.push_str(&rest);
        rest
    }

    /// All the text given out.
    pub fn into_text(self) -> String {
        self.text
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::InvalidModel {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl GuardTokenizer {
    /// Loads `tokenizer.json`; its post-processor adds BOS where the model wants it.
    pub fn from_file(path: &Path, eos: Vec<u32>) -> Result<Self, EngineError> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| invalid(path, format!("not a readable tokenizer.json: {e}")))?;
        Self::assemble(path, inner, None, eos)
    }

    /// The tokenizer at `path`: a GGUF file's vocabulary, a `tokenizer.json`, or the
    /// `tokenizer.json` of a model directory (for tokenizing alone: no end-of-text ids).
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        if path.is_dir() {
            return Self::from_file(&path.join("tokenizer.json"), Vec::new());
        }
        if !path.is_file() {
            return Err(EngineError::NotFound {
                path: path.to_path_buf(),
            });
        }
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            let mut file = std::fs::File::open(path)
                .map_err(|e| invalid(path, format!("cannot open: {e}")))?;
            let content = candle_core::quantized::gguf_file::Content::read(&mut file)
                .map_err(|e| invalid(path, format!("not a readable GGUF file: {e}")))?;
            return Self::from_gguf(path, &content.metadata);
        }
        Self::from_file(path, Vec::new())
    }

    /// Rebuilds the tokenizer a GGUF file describes (BPE vocabularies, as Llama 3 and SmolLM2 use).
    pub fn from_gguf(path: &Path, metadata: &HashMap<String, Value>) -> Result<Self, EngineError> {
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_string().ok()).cloned();
        let model = text("tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            return Err(invalid(path, format!("tokenizer model `{model}` is not supported by the candle backend (only BPE, `gpt2`); use the llama.cpp backend")));
        }
        let strings = |key: &str| -> Result<Vec<String>, EngineError> {
            metadata
                .get(key)
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| invalid(path, format!("metadata `{key}` is missing")))?
                .iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|e| invalid(path, format!("`{key}`: {e}")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .filter_map(|merge| {
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        let types: Vec<i32> = metadata
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
            .unwrap_or_default();
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (i, token) in tokens.iter().enumerate() {
            vocab.insert(token.clone(), i as u32);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| invalid(path, format!("cannot build the BPE vocabulary: {e}")))?;

        let pre = text("tokenizer.ggml.pre").unwrap_or_else(|| "default".into());
        let split = |pattern: &str| -> Result<PreTokenizerWrapper, EngineError> {
            Split::new(
                SplitPattern::Regex(pattern.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::from)
            .map_err(|e| invalid(path, e.to_string()))
        };
        let byte_level =
            |use_regex: bool| PreTokenizerWrapper::from(ByteLevel::new(false, false, use_regex));
        let pre_tokenizer = match pre.as_str() {
            "llama-bpe" | "llama3" | "llama-v3" => Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false)]),
            // SmolLM2: every digit alone, then GPT-2's split.
            "smollm" => Sequence::new(vec![PreTokenizerWrapper::from(Digits::new(true)), byte_level(true)]),
            "gpt-2" | "gpt2" | "default" => Sequence::new(vec![byte_level(true)]),
            other => {
                return Err(invalid(path, format!("pre-tokenizer `{other}` is not supported by the candle backend; use the llama.cpp backend")))
            }
        };
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control (3) and user-defined (4) tokens are matched whole in text, as llama.cpp does;
        // only control tokens are special, so that plain text still matches user-defined ones,
        // as llama.cpp does with special-token parsing off.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(token, &t)| AddedToken::from(token.clone(), t == 3))
            .collect();
        inner
            .add_special_tokens(special)
            .map_err(|e| invalid(path, format!("cannot add the special tokens: {e}")))?;

        let id = |key: &str| metadata.get(key).and_then(|v| v.to_u32().ok());
        let add_bos = metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let mut eos: Vec<u32> = [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ]
        .iter()
        .filter_map(|key| id(key))
        .collect();
        // llama.cpp also ends generation at these well-known end-of-turn tokens.
        for name in [
            "<|eot_id|>",
            "<|end_of_text|>",
            "<|im_end|>",
            "<|endoftext|>",
            "<|eom_id|>",
        ] {
            if let Some(position) = tokens.iter().position(|t| t == name) {
                eos.push(position as u32);
            }
        }
        eos.sort_unstable();
        eos.dedup();
        let bos = if add_bos {
            id("tokenizer.ggml.bos_token_id")
        } else {
            None
        };
        Self::assemble(path, inner, bos, eos)
    }

    fn assemble(
        path: &Path,
        inner: Tokenizer,
        bos: Option<u32>,
        eos: Vec<u32>,
    ) -> Result<Self, EngineError> {
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        // Text after a control token: Metaspace's `prepend_scheme: first` puts its `▁` before a
        // sequence's first piece only (whole-string tokenization sees the later pieces at an
        // offset past 0), so those pieces are tokenized with it off.
        let after_control = prepend_first_off(&plain);
        let controls = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, token)| Control {
                text: token.content,
                id,
                lstrip: token.lstrip,
                rstrip: token.rstrip,
            })
            .collect();
        // What the post-processor puts around a sequence (Llama 3's tokenizer.json adds
        // `<|begin_of_text|>`), after the BOS a GGUF vocabulary asks for.
        let ids = |add_special| {
            inner
                .encode("a", add_special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| invalid(path, format!("cannot tokenize with it: {e}")))
        };
        let (prefix, suffix) = Markers::edges(&ids(true)?, &ids(false)?).ok_or_else(|| {
            invalid(
                path,
                "its post-processor does more than put tokens around a sequence",
            )
        })?;
        let markers = Markers::new(controls, bos.into_iter().chain(prefix).collect(), suffix);
        Ok(Self {
            inner,
            plain,
            after_control,
            bos,
            markers,
            eos,
        })
    }

    /// The ids of `prompt`, with BOS where the model wants it: control tokens where its format
    /// spans write them, its content as plain text ([`crate::tokenize`]).
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        crate::tokenize::tokenize(self, prompt)
    }

    /// The ids of `text` as one string, with BOS where the model wants it; special-token text
    /// becomes the special token, as Hugging Face tokenizers and llama.cpp do with a raw string.
    /// For text the caller wrote itself (a fixture, a reference), never a conversation's.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        ids.extend(encode_ids(&self.inner, text, true)?);
        Ok(ids)
    }

    /// The ids of `text` as a continuation: no BOS, and plain text (what a trainer appends after
    /// a prompt, as LLaMA-Factory encodes the response on its own; the end-of-turn token is the
    /// trainer's to add). A reasoning trace quotes the conversation it judges: a control string
    /// quoted there stays text, as it is in the prompt, so the model never learns to write a
    /// control token where the conversation had its characters. For text without control
    /// strings these are the ids of tokenizing it as one string.
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.plain(text)
    }

    /// The id of a token's text (`<|eot_id|>`, `<|im_end|>`), when the vocabulary has it.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// The text of a token id.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The BOS id the encoder puts first, if the model wants one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json` (a trained model's directory needs
    /// one, whatever file the tokenizer was read from).
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        self.inner.save(path, false).map_err(|e| {
            EngineError::backend_caused("candle", format!("writing {}", path.display()), e)
        })
    }

    /// A stream that renders generated tokens as text, one token at a time.
    pub fn text_stream(&self) -> TextStream<'_> {
        TextStream {
            tokenizer: self,
            stream: self.inner.decode_stream(true),
            ids: Vec::new(),
            text: String::new(),
        }
    }

    /// Whether encoding any text starts with the special token `text` (a BOS the tokenizer adds).
    pub fn adds_leading(&self, text: &str) -> bool {
        let Some(id) = self.inner.token_to_id(text) else {
            return false;
        };
        self.encode_text("x")
            .is_ok_and(|ids| ids.first() == Some(&id))
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }
}

/// `tokenizer` with Metaspace's `prepend_scheme: first` turned off, where it has one (alone or in
/// a sequence of pre-tokenizers); `None` where nothing changes.
fn prepend_first_off(tokenizer: &Tokenizer) -> Option<Tokenizer> {
    use tokenizers::pre_tokenizers::metaspace::PrependScheme;
    fn off(pre: &mut PreTokenizerWrapper) -> bool {
        match pre {
            PreTokenizerWrapper::Metaspace(m) if m.get_prepend_scheme() == PrependScheme::First => {
                m.set_prepend_scheme(PrependScheme::Never);
                true
            }
            PreTokenizerWrapper::Sequence(sequence) => sequence
                .as_mut()
                .iter_mut()
                .fold(false, |changed, p| off(p) | changed),
            _ => false,
        }
    }
    let mut pre = tokenizer.get_pre_tokenizer()?.clone();
    if !off(&mut pre) {
        return None;
    }
    let mut changed = tokenizer.clone();
    changed.with_pre_tokenizer(Some(pre));
    Some(changed)
}

/// `tokenizer`'s ids of `text`, with its post-processor's special tokens where `add_special`.
fn encode_ids(
    tokenizer: &Tokenizer,
    text: &str,
    add_special: bool,
) -> Result<Vec<u32>, EngineError> {
    let encoding = tokenizer
        .encode(text, add_special)
        .map_err(|e| EngineError::backend_caused("candle", "cannot tokenize", e))?;
    Ok(encoding.get_ids().to_vec())
}

impl Vocabulary for GuardTokenizer {
    fn plain(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        encode_ids(&self.plain, text, false)
    }

    fn plain_after_control(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        encode_ids(
            self.after_control.as_ref().unwrap_or(&self.plain),
            text,
            false,
        )
    }

    fn markers(&self) -> &Markers {
        &self.markers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SentencePiece-style vocabulary (Llama 2, Mistral): `▁` for spaces and byte-fallback
    /// tokens like `<0x0A>`, rendered by the tokenizer's own decoder, not copied literally.
    #[test]
    fn a_sentencepiece_byte_fallback_vocabulary_streams_as_text() {
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "<0xC3>": 4, "<0xA9>": 5,
                          "▁hello": 6, "▁world": 7},
                "merges": []
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let tokenizer = GuardTokenizer::from_file(&path, vec![2]).unwrap();
        // "hello world\né" then end of text: the two bytes of é arrive as two tokens.
        let mut stream = tokenizer.text_stream();
        let pieces: Vec<String> = [6, 7, 3, 4, 5, 2]
            .iter()
            .map(|&id| stream.push(id).unwrap())
            .collect();
        assert_eq!(pieces.concat() + &stream.finish(), "hello world\né");
        assert_eq!(pieces[3], "", "half a character is held back");
        assert!(!pieces.concat().contains('▁') && !pieces.concat().contains("<0x"));
    }

    /// A Metaspace tokenizer with `prepend_scheme: first` (Mistral's and Llama 2's current
    /// `tokenizer.json`s) and a control token between text: span tokenization gives the ids
    /// Hugging Face gives the whole string, `▁` before the first piece only.
    #[test]
    fn text_after_a_control_token_is_tokenized_as_whole_string_tokenization_does() {
        use guardreasoner_protocol::Prompt;
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "[INST]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": null,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": false, "ignore_merges": false,
                "vocab": {"<unk>": 0, "<s>": 1, "[INST]": 2, "▁": 3, "h": 4, "i": 5, "▁h": 6, "hi": 7, "▁hi": 8},
                "merges": [["▁", "h"], ["h", "i"], ["▁h", "i"]]
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let tokenizer = GuardTokenizer::from_file(&path, vec![]).unwrap();
        let mut prompt = Prompt::content("hi");
        prompt
            .push_format("[INST]")
            .push_content("hi")
            .push_format("[INST]")
            .push_content(" hi [INST]");
        let whole = tokenizer.encode_text(&prompt.text()).unwrap();
        // Hugging Face: BOS, then `▁hi` (the first piece), `[INST]`, `hi` (no `▁` past the
        // start), `[INST]`, ..., and the content's `[INST]` as the control token.
        assert_eq!(whole[..5], [1, 8, 2, 7, 2], "{whole:?}");
        assert_eq!(whole.iter().filter(|&&id| id == 2).count(), 3, "{whole:?}");
        // The content's `[INST]` is text: its characters, where whole-string tokenization made
        // the control token; everything before it is the same.
        let ours = tokenizer.encode(&prompt).unwrap();
        assert_eq!(ours[..7], whole[..7]);
        assert!(!ours[7..].contains(&2), "{ours:?}");
        let mut benign = Prompt::content("hi");
        benign
            .push_format("[INST]")
            .push_content("hi")
            .push_format("[INST]")
            .push_content(" hi");
        assert_eq!(
            tokenizer.encode(&benign).unwrap(),
            tokenizer.encode_text(&benign.text()).unwrap()
        );
    }
}
