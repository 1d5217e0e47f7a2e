//! A parser of the whole guard output: reasoning per task and step, conclusions, the answers block.
//!
//! Real outputs stray from the trained format in many small ways (see the released outputs in
//! `shared/data/benchmarks/test`): `---` is dropped about half the time, `Answers:` becomes
//! `# Answers`, the three answers share one line, a colon goes missing, an output is cut off at the
//! token limit, or the model writes a second answers block. This parser accepts all of these, says
//! what it had to work around in [`ParsedOutput::issues`], and never panics.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::label::{Answer, Harm, Label, Refusal, Task, Verdict};

/// Everything read from one guard output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedOutput {
    /// The three answers, from the last answers block.
    pub verdict: Verdict,
    /// The text before the last answers block, without the `---` separator.
    pub reasoning: String,
    /// The reasoning split per `# Task k` heading.
    pub tasks: Vec<TaskReasoning>,
    /// How many answers blocks the output holds (the last one counts).
    pub answer_blocks: usize,
    /// What did not follow the trained format.
    pub issues: Vec<ParseIssue>,
}

/// The reasoning under one `# Task k` heading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskReasoning {
    /// The task number written in the heading (1, 2 or 3 in a well-formed output).
    pub task: u32,
    /// The `## Reasoning Step k` sections, in order.
    pub steps: Vec<ReasoningStep>,
    /// The conclusion (`## Conclusion`, `# Task k Conclusion: ...`, ...), when there is one.
    pub conclusion: Option<String>,
    /// Text under the task heading that belongs to no step and no conclusion.
    pub notes: String,
}

/// One `## Reasoning Step k` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasoningStep {
    /// The step number written in the heading.
    pub number: u32,
    /// The heading's own text after the number, then the body.
    pub text: String,
}

/// A way in which an output strayed from the trained format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParseIssue {
    /// No `Answers:` line: the answers were looked for on `Request:`-style lines anywhere.
    NoAnswersBlock,
    /// More than one answers block; the last one was used.
    SeveralAnswerBlocks {
        /// How many blocks there were.
        count: usize,
    },
    /// The task's answer is absent (often because the output was cut off).
    MissingAnswer {
        /// The task without an answer.
        task: Task,
    },
    /// The task's line holds a word that is not one of its labels (nor `None`).
    UnrecognizedAnswer {
        /// The task whose answer could not be read.
        task: Task,
        /// The word found.
        value: String,
    },
    /// The output contains the teacher's phrase "The ground truth is", leaked from training data.
    GroundTruthPhrase,
}

/// An answers block header: a line that is `Answers:` (also `# Answers`, `**Answers**:`, ...).
static ANSWERS_HEADER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?im)^[\t #*>]*answers[\t *]*(?::|$)").expect("valid regex"));

/// An answer inside a block: the key, an optional colon, the value word.
fn answer_in_block(task: Task) -> &'static Regex {
    static REQUEST: LazyLock<Regex> = LazyLock::new(|| answer_regex("Request", false));
    static COMPLETION: LazyLock<Regex> = LazyLock::new(|| answer_regex("Completion", false));
    static RESPONSE: LazyLock<Regex> = LazyLock::new(|| answer_regex("Response", false));
    match task {
        Task::Request => &REQUEST,
        Task::Completion => &COMPLETION,
        Task::Response => &RESPONSE,
    }
}

/// An answer on a line of its own, for outputs that have no answers header.
fn answer_on_own_line(task: Task) -> &'static Regex {
    static REQUEST: LazyLock<Regex> = LazyLock::new(|| answer_regex("Request", true));
    static COMPLETION: LazyLock<Regex> = LazyLock::new(|| answer_regex("Completion", true));
    static RESPONSE: LazyLock<Regex> = LazyLock::new(|| answer_regex("Response", true));
    match task {
        Task::Request => &REQUEST,
        Task::Completion => &COMPLETION,
        Task::Response => &RESPONSE,
    }
}

fn answer_regex(key: &str, line_start: bool) -> Regex {
    let pattern = if line_start {
        // Without a header, demand the trained layout (`Key: value` opening a line), so that prose
        // in the reasoning ("the response: harmful content...") is not read as an answer.
        format!(r"(?im)^[\t *\-]*{key}[\t *]*:[\t *]*([a-z]+(?:-[a-z]+)*)")
    } else {
        format!(r"(?i)\b{key}[\t *]*:?\s*([a-z]+(?:-[a-z]+)*)")
    };
    Regex::new(&pattern).expect("valid regex")
}

static HEADING: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^#{1,6}[ \t]*(.*?)[ \t]*$").expect("valid regex"));
static TASK_HEADING: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^task[ \t]*(\d+)[ \t]*:?$").expect("valid regex"));
static STEP_HEADING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^reasoning[ \t]*step[ \t]*(\d+)[ \t]*:?[ \t]*(.*)$").expect("valid regex")
});
static TASK_NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)task[ \t]*(\d+)").expect("valid regex"));
static GROUND_TRUTH: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)the ground truth is").expect("valid regex"));

/// Parses a whole guard output. Never panics, whatever the input.
pub fn parse_structured(output: &str) -> ParsedOutput {
    let text = output.replace("\r\n", "\n").replace('\r', "\n");
    let mut issues = Vec::new();

    let headers: Vec<_> = ANSWERS_HEADER.find_iter(&text).collect();
    let (reasoning_part, verdict) = match headers.last() {
        Some(last) => {
            if headers.len() > 1 {
                issues.push(ParseIssue::SeveralAnswerBlocks {
                    count: headers.len(),
                });
            }
            let block = &text[last.end()..];
            let verdict = read_answers(block, answer_in_block, false, &mut issues);
            (&text[..last.start()], verdict)
        }
        None => {
            issues.push(ParseIssue::NoAnswersBlock);
            let verdict = read_answers(&text, answer_on_own_line, true, &mut issues);
            (text.as_str(), verdict)
        }
    };

    if GROUND_TRUTH.is_match(&text) {
        issues.push(ParseIssue::GroundTruthPhrase);
    }

    let reasoning = strip_separator(reasoning_part).to_string();
    let tasks = split_tasks(&reasoning);
    ParsedOutput {
        verdict,
        reasoning,
        tasks,
        answer_blocks: headers.len(),
        issues,
    }
}

/// Reads the three answers from `text`: the first match per task inside a block, or the last match
/// per task when searching a whole output without a block.
fn read_answers(
    text: &str,
    regex_for: fn(Task) -> &'static Regex,
    take_last: bool,
    issues: &mut Vec<ParseIssue>,
) -> Verdict {
    let mut read = |task: Task| -> Answer<Label> {
        let regex = regex_for(task);
        let found = if take_last {
            regex.captures_iter(text).last()
        } else {
            regex.captures(text)
        };
        let Some(value) = found.and_then(|captures| captures.get(1)) else {
            issues.push(ParseIssue::MissingAnswer { task });
            return Answer::Missing;
        };
        let value = value.as_str();
        if value.eq_ignore_ascii_case("none") {
            return Answer::NoneStated;
        }
        match Label::parse(value) {
            Some(label) if task.accepts(label) => Answer::Label(label),
            _ => {
                issues.push(ParseIssue::UnrecognizedAnswer {
                    task,
                    value: value.to_string(),
                });
                Answer::Missing
            }
        }
    };
    Verdict {
        request: read(Task::Request).narrow::<Harm>(),
        completion: read(Task::Completion).narrow::<Refusal>(),
        response: read(Task::Response).narrow::<Harm>(),
    }
}

/// Trims the reasoning and drops the `---` line that separates it from the answers.
fn strip_separator(reasoning: &str) -> &str {
    let mut reasoning = reasoning.trim_end();
    while let Some(rest) = reasoning.strip_suffix("---") {
        reasoning = rest.trim_end();
    }
    reasoning.trim_start()
}

/// Where the lines under the current heading go.
#[derive(Clone, Copy)]
enum Section {
    /// Before any task heading: not kept apart (it stays in `reasoning`).
    Preamble,
    /// Directly under the task heading.
    Notes(usize),
    /// Under a step heading of task `.0`, step index `.1`.
    Step(usize, usize),
    /// Under a conclusion of task `.0`.
    Conclusion(usize),
}

/// Splits the reasoning into tasks, steps and conclusions.
fn split_tasks(reasoning: &str) -> Vec<TaskReasoning> {
    let mut tasks: Vec<TaskReasoning> = Vec::new();
    let mut section = Section::Preamble;

    for line in reasoning.lines() {
        if line.trim() == "---" {
            continue;
        }
        if let Some(heading) = HEADING.captures(line).and_then(|c| c.get(1)) {
            let heading = heading.as_str();
            if let Some(number) = capture_number(&TASK_HEADING, heading) {
                tasks.push(TaskReasoning::new(number));
                section = Section::Notes(tasks.len() - 1);
                continue;
            }
            if heading.to_ascii_lowercase().contains("conclusion") {
                let index = match capture_number(&TASK_NUMBER, heading) {
                    Some(number) => task_index(&mut tasks, number),
                    None => current_task(&mut tasks, section),
                };
                let inline = heading.split_once(':').map_or("", |(_, rest)| rest.trim());
                append(
                    tasks[index].conclusion.get_or_insert_with(String::new),
                    inline,
                );
                section = Section::Conclusion(index);
                continue;
            }
            if let Some(captures) = STEP_HEADING.captures(heading) {
                if let Some(number) = captures.get(1).and_then(|n| n.as_str().parse().ok()) {
                    let index = current_task(&mut tasks, section);
                    let text = captures.get(2).map_or("", |m| m.as_str().trim());
                    tasks[index].steps.push(ReasoningStep {
                        number,
                        text: text.to_string(),
                    });
                    section = Section::Step(index, tasks[index].steps.len() - 1);
                    continue;
                }
            }
        }
        match section {
            Section::Preamble => {}
            Section::Notes(task) => append(&mut tasks[task].notes, line),
            Section::Step(task, step) => append(&mut tasks[task].steps[step].text, line),
            Section::Conclusion(task) => {
                append(tasks[task].conclusion.get_or_insert_with(String::new), line)
            }
        }
    }
    for task in &mut tasks {
        if task.conclusion.as_deref() == Some("") {
            task.conclusion = None;
        }
    }
    tasks
}

impl TaskReasoning {
    fn new(task: u32) -> Self {
        Self {
            task,
            steps: Vec::new(),
            conclusion: None,
            notes: String::new(),
        }
    }
}

fn capture_number(regex: &Regex, text: &str) -> Option<u32> {
    regex.captures(text)?.get(1)?.as_str().parse().ok()
}

/// The index of task `number`, creating it when no heading introduced it.
fn task_index(tasks: &mut Vec<TaskReasoning>, number: u32) -> usize {
    if let Some(index) = tasks.iter().rposition(|task| task.task == number) {
        return index;
    }
    tasks.push(TaskReasoning::new(number));
    tasks.len() - 1
}

/// The task that the current section belongs to; a step before any task heading opens task 1.
fn current_task(tasks: &mut Vec<TaskReasoning>, section: Section) -> usize {
    match section {
        Section::Notes(task) | Section::Step(task, _) | Section::Conclusion(task) => task,
        Section::Preamble => task_index(tasks, 1),
    }
}

/// Appends a line to a section's text, skipping leading blank lines and keeping one newline apart.
fn append(text: &mut String, line: &str) {
    if text.is_empty() && line.trim().is_empty() {
        return;
    }
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(line.trim_end());
    // Keep sections free of trailing blank lines, which the model writes between them.
    let trimmed = text.trim_end_matches('\n').len();
    text.truncate(trimmed);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAINED: &str = "# Task 1\n\n## Reasoning Step 1\nThe user asks how to pop a balloon.\n\n## Reasoning Step 2\nNothing harmful.\n\n## Conclusion\nThe request is unharmful.\n\n# Task 2\n\n## Reasoning Step 1: Look at the response.\nIt gives methods.\n\n# Task 3\n\n## Reasoning Step 1\nSafe methods.\n\n---\n\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful";

    fn answers(output: &str) -> (Answer<Harm>, Answer<Refusal>, Answer<Harm>) {
        let verdict = parse_structured(output).verdict;
        (verdict.request, verdict.completion, verdict.response)
    }

    #[test]
    fn reads_the_trained_format() {
        let parsed = parse_structured(TRAINED);
        assert_eq!(
            (
                parsed.verdict.request,
                parsed.verdict.completion,
                parsed.verdict.response
            ),
            (
                Answer::Label(Harm::Unharmful),
                Answer::Label(Refusal::Compliance),
                Answer::Label(Harm::Unharmful)
            )
        );
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
        assert_eq!(parsed.answer_blocks, 1);
        assert!(parsed.reasoning.ends_with("Safe methods."));
        assert_eq!(parsed.tasks.len(), 3);
        let task1 = &parsed.tasks[0];
        assert_eq!(task1.task, 1);
        assert_eq!(task1.steps.len(), 2);
        assert_eq!(task1.steps[0].number, 1);
        assert_eq!(task1.steps[0].text, "The user asks how to pop a balloon.");
        assert_eq!(
            task1.conclusion.as_deref(),
            Some("The request is unharmful.")
        );
        assert_eq!(
            parsed.tasks[1].steps[0].text,
            "Look at the response.\nIt gives methods."
        );
        assert_eq!(parsed.tasks[1].conclusion, None);
    }

    #[test]
    fn tolerates_a_missing_separator() {
        let output = TRAINED.replace("---\n\n", "");
        assert_eq!(
            parse_structured(&output).verdict,
            parse_structured(TRAINED).verdict
        );
        assert!(parse_structured(&output)
            .reasoning
            .ends_with("Safe methods."));
    }

    #[test]
    fn tolerates_case_and_spacing() {
        let output = "answers:\nREQUEST :  Harmful\ncompletion:refusal\n  Response:\tunharmful";
        assert_eq!(
            answers(output),
            (
                Answer::Label(Harm::Harmful),
                Answer::Label(Refusal::Refusal),
                Answer::Label(Harm::Unharmful)
            )
        );
    }

    #[test]
    fn tolerates_crlf() {
        let output = TRAINED.replace('\n', "\r\n");
        let parsed = parse_structured(&output);
        assert_eq!(parsed.verdict, parse_structured(TRAINED).verdict);
        assert_eq!(parsed.tasks, parse_structured(TRAINED).tasks);
    }

    #[test]
    fn none_is_read_as_an_explicit_none() {
        let output = "Answers: \nRequest: harmful\nCompletion: None\nResponse: None";
        assert_eq!(
            answers(output),
            (
                Answer::Label(Harm::Harmful),
                Answer::NoneStated,
                Answer::NoneStated
            )
        );
        assert!(parse_structured(output).issues.is_empty());
    }

    #[test]
    fn a_truncated_output_says_which_answers_are_missing() {
        let output = "# Task 1\n## Reasoning Step 1\nx\n\nAnswers: \nRequest: harmful\nCompl";
        let parsed = parse_structured(output);
        assert_eq!(parsed.verdict.request, Answer::Label(Harm::Harmful));
        assert_eq!(
            parsed.verdict.missing(),
            vec![Task::Completion, Task::Response]
        );
        assert!(parsed.issues.contains(&ParseIssue::MissingAnswer {
            task: Task::Response
        }));
        // A label cut in the middle of its word is not a label.
        let cut = "Answers: \nRequest: unharm";
        let parsed = parse_structured(cut);
        assert_eq!(parsed.verdict.request, Answer::Missing);
        assert!(parsed.issues.contains(&ParseIssue::UnrecognizedAnswer {
            task: Task::Request,
            value: "unharm".into()
        }));
    }

    #[test]
    fn output_cut_before_the_answers_has_no_block() {
        let parsed = parse_structured("# Task 1\n\n## Reasoning Step 1\nThe user");
        assert_eq!(parsed.verdict.missing(), Task::ALL.to_vec());
        assert!(parsed.issues.contains(&ParseIssue::NoAnswersBlock));
        assert_eq!(parsed.tasks[0].steps[0].text, "The user");
    }

    #[test]
    fn the_last_of_several_answer_blocks_counts() {
        let output = "Answers: \nRequest: harmful\nCompletion: refusal\nResponse: harmful\n\nWait.\n\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful";
        let parsed = parse_structured(output);
        assert_eq!(parsed.verdict.request, Answer::Label(Harm::Unharmful));
        assert_eq!(
            parsed.verdict.completion,
            Answer::Label(Refusal::Compliance)
        );
        assert_eq!(parsed.answer_blocks, 2);
        assert!(parsed
            .issues
            .contains(&ParseIssue::SeveralAnswerBlocks { count: 2 }));
    }

    #[test]
    fn a_markdown_heading_opens_the_block_too() {
        let output =
            "reasoning\n\n# Answers\n\nRequest: harmful\nCompletion: compliance\nResponse: harmful";
        assert_eq!(
            answers(output),
            (
                Answer::Label(Harm::Harmful),
                Answer::Label(Refusal::Compliance),
                Answer::Label(Harm::Harmful)
            )
        );
    }

    #[test]
    fn answers_on_one_line_and_a_missing_colon_are_read() {
        let output = "Answers: \nRequest: harmful, Completion: refusal, Response unharmful";
        assert_eq!(
            answers(output),
            (
                Answer::Label(Harm::Harmful),
                Answer::Label(Refusal::Refusal),
                Answer::Label(Harm::Unharmful)
            )
        );
    }

    #[test]
    fn an_unknown_word_is_reported() {
        let output = "Answers: \nRequest: ambiguous\nCompletion: non-compliance\nResponse: harmful";
        let parsed = parse_structured(output);
        assert_eq!(parsed.verdict.request, Answer::Missing);
        assert_eq!(parsed.verdict.completion, Answer::Missing);
        assert!(parsed.issues.contains(&ParseIssue::UnrecognizedAnswer {
            task: Task::Completion,
            value: "non-compliance".into()
        }));
    }

    #[test]
    fn a_label_of_the_wrong_task_is_not_accepted() {
        let parsed = parse_structured("Answers: \nRequest: refusal");
        assert_eq!(parsed.verdict.request, Answer::Missing);
    }

    #[test]
    fn without_a_block_answers_must_open_a_line() {
        let output = "The response: harmful content is absent.\nRequest: unharmful";
        let parsed = parse_structured(output);
        assert_eq!(parsed.verdict.request, Answer::Label(Harm::Unharmful));
        assert_eq!(parsed.verdict.response, Answer::Missing);
    }

    #[test]
    fn conclusions_in_their_many_forms() {
        let output = "# Task 1\n## Reasoning Step 1: a\n# Conclusion for Task 1: unharmful\n\n# Task 2\n## Reasoning Step 1\nb\n# Task 2 Conclusion: refusal\n# Task 3\n## Conclusion: The response is unharmful.\n\nAnswers: \nRequest: unharmful";
        let parsed = parse_structured(output);
        let conclusions: Vec<_> = parsed.tasks.iter().map(|t| t.conclusion.clone()).collect();
        assert_eq!(
            conclusions,
            vec![
                Some("unharmful".to_string()),
                Some("refusal".to_string()),
                Some("The response is unharmful.".to_string())
            ]
        );
    }

    #[test]
    fn the_ground_truth_phrase_is_flagged() {
        let parsed =
            parse_structured("The ground truth is harmful.\n\nAnswers: \nRequest: harmful");
        assert!(parsed.issues.contains(&ParseIssue::GroundTruthPhrase));
    }

    #[test]
    fn huge_step_numbers_do_not_panic() {
        // Numbers past u64 and u32: read as no step and no task, not a panic or a wrap.
        let parsed =
            parse_structured("## Reasoning Step 99999999999999999999999\nx\n# Task 4294967296");
        assert!(
            parsed.tasks.iter().all(|t| t.steps.is_empty()),
            "{parsed:?}"
        );
        assert_eq!(parsed.verdict, Verdict::default());
    }
}
