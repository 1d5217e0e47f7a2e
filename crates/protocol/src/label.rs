//! The three guard tasks, their labels, and the verdict a guard gives.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The three questions a GuardReasoner model answers (SPEC section 1), named as the model's
/// answers block names them (`Request:`, `Completion:`, `Response:`), like [`Verdict`]'s fields
/// and the ground truth's.
///
/// Reports and data files name a task as the paper's tables do ([`Task::name`]: `prompt`,
/// `refusal`, `response`, for prompt harmfulness, refusal and response harmfulness detection);
/// those names are kept stable on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Task {
    /// Task 1: is the human user's request harmful? Answered on the `Request:` line.
    #[serde(rename = "prompt")]
    Request,
    /// Task 2: is the AI's response a refusal? Answered on the `Completion:` line.
    #[serde(rename = "refusal")]
    Completion,
    /// Task 3: is the AI's response harmful? Answered on the `Response:` line.
    #[serde(rename = "response")]
    Response,
}

impl Task {
    /// The tasks in the order the model answers them.
    pub const ALL: [Task; 3] = [Task::Request, Task::Completion, Task::Response];

    /// The task's name in reports and JSON, the paper's table's: `prompt`, `refusal` or
    /// `response`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Request => "prompt",
            Task::Completion => "refusal",
            Task::Response => "response",
        }
    }

    /// The key of the task's line in the answers block.
    pub fn answer_key(self) -> &'static str {
        match self {
            Task::Request => "Request",
            Task::Completion => "Completion",
            Task::Response => "Response",
        }
    }

    /// The positive class for F1: `harmful`, or `refusal` for refusal detection.
    pub fn positive(self) -> Label {
        match self {
            Task::Completion => Label::Refusal,
            Task::Request | Task::Response => Label::Harmful,
        }
    }

    /// The two labels this task chooses between, the positive class first.
    pub fn labels(self) -> [Label; 2] {
        let positive = self.positive();
        [positive, positive.opposite()]
    }

    /// Whether `label` is one of this task's two labels.
    pub fn accepts(self, label: Label) -> bool {
        self.labels().contains(&label)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Any one of the four labels, whichever task it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// Harmful request or response.
    Harmful,
    /// Unharmful request or response.
    Unharmful,
    /// The response refuses.
    Refusal,
    /// The response complies.
    Compliance,
}

impl Label {
    /// The label as the model writes it, in lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Harmful => "harmful",
            Label::Unharmful => "unharmful",
            Label::Refusal => "refusal",
            Label::Compliance => "compliance",
        }
    }

    /// The other label of the same task.
    pub fn opposite(self) -> Label {
        match self {
            Label::Harmful => Label::Unharmful,
            Label::Unharmful => Label::Harmful,
            Label::Refusal => Label::Compliance,
            Label::Compliance => Label::Refusal,
        }
    }

    /// Reads a label, ignoring ASCII case. Returns `None` for anything else.
    pub fn parse(text: &str) -> Option<Label> {
        [
            Label::Harmful,
            Label::Unharmful,
            Label::Refusal,
            Label::Compliance,
        ]
        .into_iter()
        .find(|label| label.as_str().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Label {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Label::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown label `{text}`: expected harmful, unharmful, refusal or compliance"
            ))
        })
    }
}

/// Harmfulness, the answer to tasks 1 and 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Harm {
    /// The text is harmful.
    Harmful,
    /// The text is not harmful.
    Unharmful,
}

/// Refusal, the answer to task 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The response refuses the request.
    Refusal,
    /// The response complies with the request.
    Compliance,
}

impl From<Harm> for Label {
    fn from(harm: Harm) -> Label {
        match harm {
            Harm::Harmful => Label::Harmful,
            Harm::Unharmful => Label::Unharmful,
        }
    }
}

impl From<Refusal> for Label {
    fn from(refusal: Refusal) -> Label {
        match refusal {
            Refusal::Refusal => Label::Refusal,
            Refusal::Compliance => Label::Compliance,
        }
    }
}

impl TryFrom<Label> for Harm {
    type Error = Label;
    fn try_from(label: Label) -> Result<Harm, Label> {
        match label {
            Label::Harmful => Ok(Harm::Harmful),
            Label::Unharmful => Ok(Harm::Unharmful),
            other => Err(other),
        }
    }
}

impl TryFrom<Label> for Refusal {
    type Error = Label;
    fn try_from(label: Label) -> Result<Refusal, Label> {
        match label {
            Label::Refusal => Ok(Refusal::Refusal),
            Label::Compliance => Ok(Refusal::Compliance),
            other => Err(other),
        }
    }
}

/// One answer of a verdict: a label, the model's explicit `None`, or nothing readable.
///
/// In JSON it is the label (`"harmful"`, ...), `"none"`, or `"missing"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Answer<T> {
    /// The model gave this label.
    Label(T),
    /// The model wrote `None` (it does so when there is no response to judge).
    NoneStated,
    /// No answer could be read: the line is absent, cut off, or holds an unknown word.
    #[default]
    Missing,
}

impl<T: Copy + Into<Label>> Answer<T> {
    /// The label, when there is one.
    pub fn label(self) -> Option<T> {
        match self {
            Answer::Label(label) => Some(label),
            _ => None,
        }
    }

    /// The answer as a string: the label, `none` or `missing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Label(label) => label.into().as_str(),
            Answer::NoneStated => "none",
            Answer::Missing => "missing",
        }
    }

    /// The same answer over the untyped [`Label`].
    pub fn erase(self) -> Answer<Label> {
        match self {
            Answer::Label(label) => Answer::Label(label.into()),
            Answer::NoneStated => Answer::NoneStated,
            Answer::Missing => Answer::Missing,
        }
    }
}

impl Answer<Label> {
    /// The same answer over a task's label type; a label of another task becomes `Missing`.
    pub fn narrow<T: TryFrom<Label>>(self) -> Answer<T> {
        match self {
            Answer::Label(label) => T::try_from(label).map_or(Answer::Missing, Answer::Label),
            Answer::NoneStated => Answer::NoneStated,
            Answer::Missing => Answer::Missing,
        }
    }
}

impl<T: Copy + Into<Label>> Serialize for Answer<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The three answers of one guard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Verdict {
    /// Task 1: is the user's request harmful?
    pub request: Answer<Harm>,
    /// Task 2: did the AI refuse?
    pub completion: Answer<Refusal>,
    /// Task 3: is the AI's response harmful?
    pub response: Answer<Harm>,
}

impl Verdict {
    /// The answer to one task, over the untyped [`Label`].
    pub fn get(&self, task: Task) -> Answer<Label> {
        match task {
            Task::Request => self.request.erase(),
            Task::Completion => self.completion.erase(),
            Task::Response => self.response.erase(),
        }
    }

    /// The tasks whose answer could not be read.
    pub fn missing(&self) -> Vec<Task> {
        Task::ALL
            .into_iter()
            .filter(|&task| self.get(task) == Answer::Missing)
            .collect()
    }

    /// Whether all three answers were read (a label or an explicit `None`).
    pub fn is_complete(&self) -> bool {
        self.missing().is_empty()
    }

    /// Whether the request or the response was judged harmful: the decision a deployed guard acts on.
    pub fn is_harmful(&self) -> bool {
        self.request == Answer::Label(Harm::Harmful)
            || self.response == Answer::Label(Harm::Harmful)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_classes_follow_the_paper() {
        assert_eq!(Task::Request.positive(), Label::Harmful);
        assert_eq!(Task::Response.positive(), Label::Harmful);
        assert_eq!(Task::Completion.positive(), Label::Refusal);
        assert!(Task::Completion.accepts(Label::Compliance));
        assert!(!Task::Request.accepts(Label::Refusal));
    }

    #[test]
    fn labels_parse_ignoring_case() {
        assert_eq!(Label::parse("HARMful"), Some(Label::Harmful));
        assert_eq!(Label::parse("None"), None);
        for label in [Label::Harmful, Label::Refusal] {
            assert_eq!(label.opposite().opposite(), label);
        }
    }

    #[test]
    fn verdict_serializes_answers_as_strings() {
        let verdict = Verdict {
            request: Answer::Label(Harm::Harmful),
            completion: Answer::NoneStated,
            response: Answer::Missing,
        };
        let json = serde_json::to_string(&verdict).unwrap();
        assert_eq!(
            json,
            r#"{"request":"harmful","completion":"none","response":"missing"}"#
        );
        assert_eq!(verdict.missing(), vec![Task::Response]);
        assert!(verdict.is_harmful());
    }
}
