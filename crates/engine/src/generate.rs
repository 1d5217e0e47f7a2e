//! The generation interface every backend implements.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use guardreasoner_protocol::Prompt;

use crate::error::EngineError;

/// The paper's evaluation budget: 2048 new tokens.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 2048;

/// How tokens are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (the paper's evaluation setting); above 0, softmax temperature.
    pub temperature: f32,
    /// Nucleus sampling threshold, used when `temperature > 0`.
    pub top_p: f32,
    /// Seed of the sampler, used when `temperature > 0`.
    pub seed: u64,
    /// The most tokens to generate.
    pub max_new_tokens: usize,
    /// Whether to return the log-probability of each generated token.
    pub logprobs: bool,
    /// Keep generating past end-of-text tokens, up to `max_new_tokens` (for benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            logprobs: false,
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Checks what every backend relies on; each backend calls it before generating, so that no
    /// backend quietly does something else (one token for `max_new_tokens: 0`, say).
    pub fn validate(&self) -> Result<(), EngineError> {
        let (param, message) = if self.max_new_tokens == 0 {
            (
                "max_new_tokens",
                "max_new_tokens must be at least 1".to_string(),
            )
        } else if !self.temperature.is_finite() || self.temperature < 0.0 {
            (
                "temperature",
                format!(
                    "temperature must be 0 (greedy) or positive, not {}",
                    self.temperature
                ),
            )
        } else if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            (
                "top_p",
                format!("top_p must be in (0, 1], not {}", self.top_p),
            )
        } else {
            return Ok(());
        };
        Err(EngineError::InvalidParams { param, message })
    }

    /// Whether decoding is greedy.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// A batch of prompts to generate from together.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// The prompts, in spans of the format's text and of content (the tokenizer adds BOS where
    /// the model wants it).
    pub prompts: Vec<Prompt>,
    /// Sampling, the same for every prompt (each prompt gets its own sampler, seeded
    /// `seed + index`).
    pub params: SamplingParams,
    /// Text that every prompt starts with and that the backend may evaluate once and reuse, also
    /// across batches (GuardReasoner's instruction).
    pub shared_prefix: Option<Prompt>,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfText,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The context window is full.
    ContextFull,
}

/// Wall-clock time spent on one generation.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Timings {
    /// From submission until a slot took the sequence (waiting in the queue).
    #[serde(with = "seconds")]
    pub queue: Duration,
    /// From taking a slot to this sequence's first generated token.
    #[serde(with = "seconds")]
    pub prefill: Duration,
    /// From the first generated token to the last.
    #[serde(with = "seconds")]
    pub decode: Duration,
}

mod seconds {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }
}

/// What one prompt produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// The generated text (special tokens not rendered).
    pub text: String,
    /// Tokens in the prompt (BOS included).
    pub prompt_tokens: usize,
    /// The prompt's token ids as the model read them (empty where a remote server tokenized it).
    #[serde(skip)]
    pub prompt_token_ids: Vec<u32>,
    /// Prompt tokens whose state was reused instead of evaluated.
    pub cached_prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// The generated token ids.
    pub token_ids: Vec<u32>,
    /// The log-probability of each generated token, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f32>>,
    /// Why generation stopped.
    pub stop: StopReason,
    /// Where the time went.
    pub timings: Timings,
}

/// One piece of streamed text.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    /// The index of the prompt in the batch.
    pub sequence: usize,
    /// New text (may be empty for tokens that complete no character yet).
    pub text: &'a str,
}

/// Facts about a loaded model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    /// The backend's name (`llama.cpp`, `openai`, ...).
    pub backend: &'static str,
    /// Where the model came from (a path or a name).
    pub source: String,
    /// Tokens one sequence may hold (prompt and generation).
    pub context_length: usize,
    /// The most prompts one batch may hold.
    pub max_batch: usize,
    /// Where it runs: `cpu`, `cuda:N`, or `remote` (a server's).
    pub device: String,
}

/// A text generator: a batch of prompts in, one generation per prompt out, streamed as it goes.
pub trait Generate: Send {
    /// Facts about the model.
    fn info(&self) -> &ModelInfo;

    /// Generates for every prompt of `batch`, calling `on_token` with each new piece of text.
    ///
    /// A batch larger than [`ModelInfo::max_batch`] is split by the backend.
    fn generate(
        &mut self,
        batch: &Batch,
        on_token: &mut dyn FnMut(TokenEvent<'_>),
    ) -> Result<Vec<Generation>, EngineError>;

    /// The number of tokens `prompt` becomes (BOS included), to check prompts before running
    /// them; `None` where the backend cannot know without asking the model's server (a remote
    /// backend), which then says itself what does not fit.
    fn count_tokens(&mut self, prompt: &Prompt) -> Result<Option<usize>, EngineError>;

    /// Checks that prompt `index` of a batch fits the context with room for one new token
    /// ([`crate::schedule::fits`], the scheduler's own test): [`EngineError::PromptTooLong`] where
    /// it does not. A backend that cannot count passes every prompt on; its server answers for
    /// what does not fit.
    fn check_fits(&mut self, index: usize, prompt: &Prompt) -> Result<(), EngineError> {
        match self.count_tokens(prompt)? {
            Some(tokens) => crate::schedule::fits(index, tokens, self.info().context_length),
            None => Ok(()),
        }
    }

    /// The model's own chat template, when its files carry one.
    fn chat_template(&self) -> Option<&crate::chat_template::ChatTemplate> {
        None
    }
}

/// Turns bytes into text as tokens arrive, holding back an incomplete UTF-8 character.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds a token's bytes; returns the text they complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(text) => text.len(),
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            // Invalid bytes (not merely incomplete): replace them rather than stall forever.
            Err(_) => {
                let text = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return text;
            }
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        text
    }

    /// Whatever is left at the end, replaced where incomplete.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

impl<G: Generate + ?Sized> Generate for Box<G> {
    fn info(&self) -> &ModelInfo {
        (**self).info()
    }

    fn generate(
        &mut self,
        batch: &Batch,
        on_token: &mut dyn FnMut(TokenEvent<'_>),
    ) -> Result<Vec<Generation>, EngineError> {
        (**self).generate(batch, on_token)
    }

    fn count_tokens(&mut self, prompt: &Prompt) -> Result<Option<usize>, EngineError> {
        (**self).count_tokens(prompt)
    }

    fn chat_template(&self) -> Option<&crate::chat_template::ChatTemplate> {
        (**self).chat_template()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_parameters_are_validated_in_one_place() {
        assert!(SamplingParams::default().validate().is_ok());
        let bad = [
            SamplingParams {
                max_new_tokens: 0,
                ..Default::default()
            },
            SamplingParams {
                temperature: -0.5,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
        ];
        for (params, named) in bad.into_iter().zip([
            "max_new_tokens",
            "temperature",
            "temperature",
            "top_p",
            "top_p",
        ]) {
            let error = params.validate().unwrap_err();
            assert!(
                matches!(&error, EngineError::InvalidParams { param, .. } if *param == named),
                "{error:?}"
            );
            let error = error.to_string();
            assert!(
                error.starts_with("invalid sampling parameters: "),
                "{error}"
            );
        }
    }

    #[test]
    fn utf8_stream_holds_back_a_split_character() {
        let mut stream = Utf8Stream::default();
        let euro = "€".as_bytes();
        assert_eq!(stream.push(b"a"), "a");
        assert_eq!(stream.push(&euro[..1]), "");
        assert_eq!(stream.push(&euro[1..]), "€");
        assert_eq!(stream.push(&[0xff, b'b']), "\u{fffd}b");
        assert_eq!(stream.push(&euro[..2]), "");
        assert_eq!(stream.finish(), "\u{fffd}");
    }

    #[test]
    fn default_sampling_is_greedy_with_the_papers_budget() {
        let params = SamplingParams::default();
        assert!(params.is_greedy());
        assert_eq!(params.max_new_tokens, 2048);
    }
}
