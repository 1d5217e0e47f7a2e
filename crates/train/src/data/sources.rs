//! The labelled sources GuardReasonerTrain was built from, each read from its usual files with the
//! paper's label mapping (SPEC section 7).
//!
//! | source | upstream file | labels kept |
//! |---|---|---|
//! | WildGuardTrain | `allenai/wildguardmix` `train/wildguard_train.parquet` | all three, as given |
//! | AegisTrain | `nvidia/Aegis-AI-Content-Safety-Dataset-1.0` train (Parquet or JSON) | request: majority vote of `labels_0..4`, `Safe` = unharmful |
//! | BeaverTailsTrain | `PKU-Alignment/BeaverTails` `round0/30k/train.jsonl.gz` | response: `is_safe` = false is harmful |
//! | ToxicChatTrain | `lmsys/toxic-chat` `toxicchat0124` train CSV (human-annotated rows), or JUDGE-BENCH's JSON copy | request: `toxicity` 1 is harmful |
//!
//! Rows that cannot be used (no annotation at all, not human-annotated) are skipped and counted
//! with their reason; a row that is malformed (a missing prompt, a label outside the allowed set)
//! is an error naming the file, the record and the field.

use std::collections::BTreeMap;
use std::path::Path;

use guardreasoner_eval::dataset::Truth;
use guardreasoner_protocol::{Conversation, Label, Task};

use crate::data::record::parse_label;
use crate::data::table::{self, Row};
use crate::error::TrainError;

/// One of the four labelled sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// WildGuardMix's train split: prompts with and without responses, all three labels.
    WildGuardTrain,
    /// Aegis 1.0: texts judged by up to five annotators; the request label only.
    AegisTrain,
    /// BeaverTails 30k train: prompt/response pairs; the response label only.
    BeaverTailsTrain,
    /// ToxicChat 0124 train, human-annotated rows: the request label only.
    ToxicChatTrain,
}

impl Source {
    /// Every source, in the paper's order.
    pub const ALL: [Source; 4] = [
        Source::WildGuardTrain,
        Source::AegisTrain,
        Source::BeaverTailsTrain,
        Source::ToxicChatTrain,
    ];

    /// The name records carry (GuardReasonerTrain's split name without its `R`).
    pub fn name(self) -> &'static str {
        match self {
            Source::WildGuardTrain => "WildGuardTrain",
            Source::AegisTrain => "AegisTrain",
            Source::BeaverTailsTrain => "BeaverTailsTrain",
            Source::ToxicChatTrain => "ToxicChatTrain",
        }
    }

    /// Reads a source's name, ignoring case, with or without the `R` suffix and with the short
    /// names `wildguard`, `aegis`, `beavertails`, `toxicchat`.
    pub fn parse(text: &str) -> Option<Source> {
        let lower = text.to_ascii_lowercase();
        let lower = lower
            .strip_suffix("r")
            .filter(|s| s.ends_with("train"))
            .unwrap_or(&lower);
        Source::ALL.into_iter().find(|source| {
            let name = source.name().to_ascii_lowercase();
            lower == name || lower == name.trim_end_matches("train")
        })
    }
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Source::parse(text).ok_or_else(|| {
            format!("unknown source `{text}`: wildguard, aegis, beavertails or toxicchat")
        })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One labelled conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    /// The user's prompt and, where there is one, the AI's response.
    pub conversation: Conversation,
    /// The labels the source gives (`None` where it gives none).
    pub truth: Truth,
    /// Where it came from.
    pub source: Source,
}

/// What a source file held: the samples, and how many rows were skipped for each reason.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The usable samples, in file order.
    pub samples: Vec<Labelled>,
    /// Reason to count of the rows left out.
    pub skipped: BTreeMap<String, usize>,
}

impl Loaded {
    /// Rows left out, all reasons together.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }
}

/// Reads `path` as `source`.
pub fn load(source: Source, path: &Path) -> Result<Loaded, TrainError> {
    let rows = table::read_rows(path)?;
    let mut loaded = Loaded::default();
    for (index, row) in rows.iter().enumerate() {
        let outcome = match source {
            Source::WildGuardTrain => wildguard(row),
            Source::AegisTrain => aegis(row),
            Source::BeaverTailsTrain => beavertails(row),
            Source::ToxicChatTrain => toxicchat(row),
        }
        .map_err(|message| TrainError::at_record(path, index + 1, message))?;
        match outcome {
            Outcome::Keep(conversation, truth) => loaded.samples.push(Labelled {
                conversation,
                truth,
                source,
            }),
            Outcome::Skip(reason) => *loaded.skipped.entry(reason.to_string()).or_default() += 1,
        }
    }
    if rows.is_empty() {
        return Err(TrainError::file(path, "the file holds no rows"));
    }
    Ok(loaded)
}

/// What one row becomes.
enum Outcome {
    Keep(Conversation, Truth),
    Skip(&'static str),
}

fn wildguard(row: &Row) -> Result<Outcome, String> {
    let prompt = table::required(row, "prompt")?.to_string();
    let response = table::text(row, "response")?.map(str::to_string);
    let mut truth = Truth::default();
    for (task, field) in crate::data::record::LABEL_FIELDS {
        let label = parse_label(task, field, table::text(row, field)?)?;
        crate::data::record::truth_set(&mut truth, task, label);
    }
    Ok(Outcome::Keep(Conversation { prompt, response }, truth))
}

/// Aegis 1.0: the request is harmful when more annotators gave a category than `Safe`; a tie is
/// harmful too (two of four annotators seeing harm is reason enough for a guard). `labels_k` of
/// `None` or null means annotator `k` did not label the row; a row nobody labelled is skipped.
fn aegis(row: &Row) -> Result<Outcome, String> {
    let text = table::required(row, "text")?.to_string();
    let (mut safe, mut unsafe_) = (0, 0);
    for k in 0..5 {
        match table::text(row, &format!("labels_{k}"))?.map(str::trim) {
            None | Some("") | Some("None") => {}
            Some(label) if label.eq_ignore_ascii_case("safe") => safe += 1,
            Some(_) => unsafe_ += 1,
        }
    }
    if safe + unsafe_ == 0 {
        return Ok(Outcome::Skip("Aegis row with no annotator label"));
    }
    let label = if unsafe_ >= safe {
        Label::Harmful
    } else {
        Label::Unharmful
    };
    Ok(Outcome::Keep(
        Conversation::prompt_only(text),
        Truth {
            request: Some(label),
            ..Truth::default()
        },
    ))
}

fn beavertails(row: &Row) -> Result<Outcome, String> {
    let prompt = table::required(row, "prompt")?.to_string();
    let response = table::required(row, "response")?.to_string();
    let safe = table::boolean(row, "is_safe")?.ok_or("field `is_safe` is missing or null")?;
    Ok(Outcome::Keep(
        Conversation::with_response(prompt, response),
        Truth {
            response: Some(if safe {
                Label::Unharmful
            } else {
                Label::Harmful
            }),
            ..Truth::default()
        },
    ))
}

/// ToxicChat: the upstream CSV (`user_input`, `toxicity`, `human_annotation`) or JUDGE-BENCH's
/// JSON (`instance`, `annotations.toxicity.majority_human`). The paper trained on the 2,801
/// human-annotated rows; others are skipped and counted.
fn toxicchat(row: &Row) -> Result<Outcome, String> {
    let (prompt, toxic) = if row.contains_key("instance") {
        let prompt = table::required(row, "instance")?;
        let toxicity = row
            .get("annotations")
            .and_then(|a| a.get("toxicity"))
            .and_then(|t| t.get("majority_human"))
            .ok_or("field `annotations.toxicity.majority_human` is missing")?;
        let mut holder = Row::new();
        holder.insert(
            "annotations.toxicity.majority_human".into(),
            toxicity.clone(),
        );
        let toxic = table::boolean(&holder, "annotations.toxicity.majority_human")?;
        (prompt, toxic)
    } else {
        if table::boolean(row, "human_annotation")? == Some(false) {
            return Ok(Outcome::Skip("ToxicChat row not annotated by humans"));
        }
        (
            table::required(row, "user_input")?,
            table::boolean(row, "toxicity")?,
        )
    };
    let toxic = toxic.ok_or("the toxicity label is missing or null")?;
    Ok(Outcome::Keep(
        Conversation::prompt_only(prompt),
        Truth {
            request: Some(if toxic {
                Label::Harmful
            } else {
                Label::Unharmful
            }),
            ..Truth::default()
        },
    ))
}

/// The tasks a source labels.
pub fn labelled_tasks(source: Source) -> &'static [Task] {
    match source {
        Source::WildGuardTrain => &Task::ALL,
        Source::AegisTrain | Source::ToxicChatTrain => &[Task::Request],
        Source::BeaverTailsTrain => &[Task::Response],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_parse_in_every_spelling() {
        for source in Source::ALL {
            assert_eq!(Source::parse(source.name()), Some(source));
            assert_eq!(Source::parse(&format!("{}R", source.name())), Some(source));
        }
        assert_eq!(Source::parse("aegis"), Some(Source::AegisTrain));
        assert_eq!(Source::parse("toxicchat"), Some(Source::ToxicChatTrain));
        assert_eq!(Source::parse("nope"), None);
    }
}
