//! Records to token sequences: the prompt in a prompt format, then the output and the format's
//! end token, with the index where the output starts (everything before it is masked out of the
//! loss).
//!
//! As LLaMA-Factory does, the prompt is encoded with BOS and the output on its own, then joined,
//! so that no merge spans the boundary. A sequence longer than the maximum is truncated (the
//! output's tail is cut; the prompt is kept), skipped, or an error, by option, and counted.

use guardreasoner_engine::backends::candle::tokenizer::GuardTokenizer;
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

/// What to do with a sequence longer than the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlong {
    /// Cut the output's tail to fit (LLaMA-Factory's `cutoff_len` cuts too); counted.
    #[default]
    Truncate,
    /// Leave the sample out; counted.
    Skip,
    /// Stop with an error naming the record.
    Error,
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
        let prompt = tokenizer.encode(&format.render_parts(&record.instruction, &record.input))?;
        let mut output = tokenizer.encode_continuation(&record.output)?;
        output.extend(end_token);
        let total = prompt.len() + output.len();
        if total > max_length {
            match overlong {
                Overlong::Error => {
                    return Err(TrainError::Invalid(format!(
                        "record {}: {total} tokens, over the maximum of {max_length} \
                         (raise the maximum, or truncate or skip overlong samples)",
                        index + 1
                    )))
                }
                Overlong::Skip => {
                    encoded.skipped += 1;
                    continue;
                }
                Overlong::Truncate if prompt.len() + 1 > max_length => {
                    encoded.skipped += 1;
                    continue;
                }
                Overlong::Truncate => {
                    output.truncate(max_length - prompt.len());
                    encoded.truncated += 1;
                }
            }
        }
        let output_start = prompt.len();
        let mut ids = prompt;
        ids.extend(output);
        encoded.examples.push(Example { ids, output_start });
        encoded.record_index.push(index);
    }
    Ok(encoded)
}
