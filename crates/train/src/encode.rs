//! Records to token sequences: the prompt in a prompt format, then the output and the format's
//! end token, with the index where the output starts (everything before it is masked out of the
//! loss).
//!
//! As LLaMA-Factory does, the prompt is encoded with BOS and the output on its own, then joined,
//! so that no merge spans the boundary. A sequence longer than the maximum is truncated (the
//! output's tail is cut; the prompt is kept), skipped, or an error, by option, and counted.

use guardreasoner_engine::backends::candle::tokenizer::GuardTokenizer;
use guardreasoner_engine::error::with_causes;
use guardreasoner_protocol::PromptFormat;

use crate::data::TrainRecord;
use crate::error::TrainError;

/// One training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Prompt, output and end token.
    pub ids: Vec<u32>,
    /// Where the output starts.
    pub output_start: usize,
}

impl Example {
    /// The tokens scored (output and end token).
    pub fn output_tokens(&self) -> usize {
        self.ids.len() - self.output_start
    }
}

guardreasoner_protocol::choice! {
    /// What to do with a sequence longer than the maximum.
    #[derive(Default)]
    pub enum Overlong("overlong policy") {
        /// Cut the output's tail to fit (LLaMA-Factory's `cutoff_len` cuts too); counted.
        #[default]
        Truncate = "truncate",
        /// Leave the sample out; counted.
        Skip = "skip",
        /// Stop with an error naming the record.
        Error = "error",
    }
}

/// The encoded set and what happened to the samples that did not fit.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    /// The sequences, in record order.
    pub examples: Vec<Example>,
    /// Index in the records of each example.
    pub record_index: Vec<usize>,
    /// Sequences cut to the maximum.
    pub truncated: usize,
    /// Samples left out: over the maximum under [`Overlong::Skip`], or a prompt that leaves no
    /// room for any output token.
    pub skipped: usize,
}

/// Encodes every record.
pub fn encode(
    tokenizer: &GuardTokenizer,
    records: &[TrainRecord],
    format: PromptFormat,
    end_token: Option<u32>,
    max_length: usize,
    overlong: Overlong,
) -> Result<Encoded, TrainError> {
    let mut encoded = Encoded::default();
    for (index, record) in records.iter().enumerate() {
        let text = Text {
            instruction: &record.instruction,
            input: &record.input,
            output: &record.output,
        };
        match encode_one(tokenizer, text, format, end_token, max_length, overlong)
            .map_err(|message| TrainError::Invalid(format!("record {}: {message}", index + 1)))?
        {
            Fitted::Whole(example) => {
                encoded.examples.push(example);
                encoded.record_index.push(index);
            }
            Fitted::Truncated(example) => {
                encoded.truncated += 1;
                encoded.examples.push(example);
                encoded.record_index.push(index);
            }
            Fitted::Skipped => encoded.skipped += 1,
        }
    }
    Ok(encoded)
}

/// The texts of one sequence.
#[derive(Debug, Clone, Copy)]
pub struct Text<'a> {
    /// The instruction.
    pub instruction: &'a str,
    /// The input block.
    pub input: &'a str,
    /// The output to learn.
    pub output: &'a str,
}

/// What became of one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fitted {
    /// It fits.
    Whole(Example),
    /// Its output was cut to fit.
    Truncated(Example),
    /// It was left out.
    Skipped,
}

/// Encodes one sequence; an error (a message) where it is too long under [`Overlong::Error`] or
/// the tokenizer fails.
pub fn encode_one(
    tokenizer: &GuardTokenizer,
    text: Text<'_>,
    format: PromptFormat,
    end_token: Option<u32>,
    max_length: usize,
    overlong: Overlong,
) -> Result<Fitted, String> {
    let prompt = tokenizer
        .encode(&format.render_parts(text.instruction, text.input))
        .map_err(|e| with_causes(&e))?;
    let mut output = tokenizer
        .encode_continuation(text.output)
        .map_err(|e| with_causes(&e))?;
    output.extend(end_token);
    let total = prompt.len() + output.len();
    let mut truncated = false;
    if total > max_length {
        match overlong {
            Overlong::Error => {
                return Err(format!(
                    "{total} tokens, over the maximum of {max_length} (raise the maximum, or \
                     truncate or skip overlong samples)"
                ))
            }
            Overlong::Skip => return Ok(Fitted::Skipped),
            Overlong::Truncate if prompt.len() + 1 > max_length => return Ok(Fitted::Skipped),
            Overlong::Truncate => {
                output.truncate(max_length - prompt.len());
                truncated = true;
            }
        }
    }
    let output_start = prompt.len();
    let mut ids = prompt;
    ids.extend(output);
    let example = Example { ids, output_start };
    Ok(if truncated {
        Fitted::Truncated(example)
    } else {
        Fitted::Whole(example)
    })
}
