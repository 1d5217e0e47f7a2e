//! A guard: a [`Generate`] backend, a prompt format and the output parser, turning conversations
//! into verdicts.
//!
//! The guard renders each conversation in its [`PromptFormat`], generates (in batches, the
//! instruction evaluated once and shared), parses the output with the structured parser, and
//! applies its [`UnparseablePolicy`] when an answer the conversation calls for is missing. The
//! result always says whether the policy, rather than the model, decided.

// Every public item says what it is for; keep it so.
#![deny(missing_docs)]

use std::fmt;
use std::str::FromStr;

mod handle;

pub use handle::{GuardHandle, SubmitError};

use guardreasoner_engine::chat_template::{ChatTemplate, Message};
use guardreasoner_engine::{
    Batch, EngineError, Generate, Generation, SamplingParams, StopReason, Timings,
};
use guardreasoner_protocol::parse::{parse_structured, ParsedOutput};
use guardreasoner_protocol::{Answer, Conversation, Prompt, PromptFormat, Task, Verdict};
use serde::Serialize;

guardreasoner_protocol::choice! {
    /// What to do when the model's output lacks an answer the conversation calls for.
    #[derive(Default)]
    pub enum UnparseablePolicy("policy") {
        /// Report an error for that conversation.
        Error = "error",
        /// Treat the conversation as harmful (the safe choice for a deployed guard).
        #[default]
        FailClosed = "fail-closed",
        /// Treat the conversation as unharmful.
        FailOpen = "fail-open",
    }
}

/// How a conversation becomes the text the model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputFormat {
    /// One of the protocol's prompt formats, as raw text.
    Protocol(PromptFormat),
    /// The eval format's text as the user's turn of the model's own chat template (for
    /// instruction-tuned models other than GuardReasoner's).
    ModelChat,
}

impl InputFormat {
    /// Every input format, in the order the command line lists them.
    pub const ALL: [InputFormat; 4] = [
        InputFormat::Protocol(PromptFormat::Eval),
        InputFormat::Protocol(PromptFormat::Deploy),
        InputFormat::Protocol(PromptFormat::Llama3Chat),
        InputFormat::ModelChat,
    ];

    /// The format's name: a [`PromptFormat`]'s, or `model-chat`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Protocol(format) => format.name(),
            Self::ModelChat => "model-chat",
        }
    }

    /// The protocol format of the text (`eval` inside the chat template for `model-chat`).
    pub fn protocol(self) -> PromptFormat {
        match self {
            Self::Protocol(format) => format,
            Self::ModelChat => PromptFormat::Eval,
        }
    }
}

impl Default for InputFormat {
    fn default() -> Self {
        Self::Protocol(PromptFormat::default())
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for InputFormat {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|format| format.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown format `{name}`: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// How a guard runs.
#[derive(Debug, Clone, Default)]
pub struct GuardConfig {
    /// How conversations become the model's input.
    pub format: InputFormat,
    /// What to do with output that does not parse.
    pub policy: UnparseablePolicy,
    /// Sampling (greedy and 2048 new tokens by default, as the paper evaluated).
    pub params: SamplingParams,
}

/// Who made the final decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecidedBy {
    /// The model's answers.
    Model,
    /// The unparseable-output policy, because answers were missing.
    Policy,
}

/// The guard's verdict on one conversation.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Whether to block: the request or the response is harmful (or the policy says so).
    pub harmful: bool,
    /// Whether the model or the policy decided.
    pub decided_by: DecidedBy,
    /// The answers the model gave the conversation calls for but were missing.
    pub missing: Vec<Task>,
    /// The policy in force.
    pub policy: UnparseablePolicy,
    /// The three answers as parsed.
    pub verdict: Verdict,
    /// The reasoning, split into tasks and steps.
    pub parsed: ParsedOutput,
    /// The raw output.
    pub output: String,
    /// The prompt's token ids as the model read them (empty where a remote server tokenized it).
    #[serde(skip)]
    pub prompt_token_ids: Vec<u32>,
    /// The generated token ids.
    #[serde(skip)]
    pub token_ids: Vec<u32>,
    /// Token counts.
    pub usage: Usage,
    /// Why generation stopped.
    pub stop: StopReason,
    /// Where the time went.
    pub timings: Timings,
}

/// Token counts of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Of those, reused from the shared-prefix cache.
    pub cached_prompt_tokens: usize,
    /// Generated tokens.
    pub generated_tokens: usize,
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The backend failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The guard is set to render prompts with the model's chat template, and the model has none.
    #[error("the model's files carry no chat template")]
    NoChatTemplate,
    /// The output lacks answers, and the policy is `error`.
    #[error("the model's output gives no {} answer ({} new tokens, stopped: {stop:?}); output ends with: {tail:?}", missing.iter().map(|t| t.answer_key()).collect::<Vec<_>>().join("/"), generated)]
    Unparseable {
        /// The missing answers.
        missing: Vec<Task>,
        /// Tokens generated.
        generated: usize,
        /// Why generation stopped.
        stop: StopReason,
        /// The last characters of the output.
        tail: String,
    },
}

/// A guard model ready to check conversations.
pub struct Guard<G> {
    engine: G,
    config: GuardConfig,
}

impl<G: Generate> Guard<G> {
    /// A guard over `engine`.
    pub fn new(engine: G, config: GuardConfig) -> Self {
        Self { engine, config }
    }

    /// The backend.
    pub fn engine(&mut self) -> &mut G {
        &mut self.engine
    }

    /// The configuration.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Checks one conversation, streaming the reasoning to `on_text`.
    pub fn check(
        &mut self,
        conversation: &Conversation,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<CheckResult, GuardError> {
        let mut results = self
            .check_batch(std::slice::from_ref(conversation), &mut |_, text| {
                on_text(text)
            })?;
        // check_batch returns exactly one result per conversation, or an error.
        results.pop().expect("one result per conversation")
    }

    /// Checks conversations together (one batch, the instruction shared). The outer error is the
    /// backend's; each conversation has its own result.
    pub fn check_batch(
        &mut self,
        conversations: &[Conversation],
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<Result<CheckResult, GuardError>>, GuardError> {
        let batch = Batch {
            prompts: conversations
                .iter()
                .map(|c| self.render(c))
                .collect::<Result<_, _>>()?,
            params: self.config.params.clone(),
            shared_prefix: self.config.shared_prefix(),
        };
        let generations = self
            .engine
            .generate(&batch, &mut |event| on_text(event.sequence, event.text))?;
        // One generation per prompt is the backend's contract; a short reply must not drop
        // conversations silently.
        if generations.len() != conversations.len() {
            return Err(GuardError::Engine(EngineError::backend(
                self.engine.info().backend,
                format!(
                    "returned {} generations for {} prompts",
                    generations.len(),
                    conversations.len()
                ),
            )));
        }
        Ok(conversations
            .iter()
            .zip(generations)
            .map(|(conversation, generation)| self.judge(conversation, generation))
            .collect())
    }

    /// What the model reads for `conversation`.
    pub fn render(&self, conversation: &Conversation) -> Result<Prompt, GuardError> {
        self.config
            .render(conversation, self.engine.chat_template())
    }

    /// Turns one generation into a result under the policy.
    fn judge(
        &self,
        conversation: &Conversation,
        generation: Generation,
    ) -> Result<CheckResult, GuardError> {
        self.config.judge(conversation, generation)
    }
}

impl GuardConfig {
    /// What the model reads for `conversation`, the conversation's text as content;
    /// `chat_template` is the model's own, needed only with [`InputFormat::ModelChat`].
    pub fn render(
        &self,
        conversation: &Conversation,
        chat_template: Option<&ChatTemplate>,
    ) -> Result<Prompt, GuardError> {
        self.wrap(self.format.protocol().render(conversation), chat_template)
    }

    /// What the model reads for a protocol text (the instruction and the input, as a benchmark
    /// file or [`PromptFormat::render`] gives it): the text itself, or with
    /// [`InputFormat::ModelChat`] the text as the user's turn of the model's own chat template.
    pub fn wrap(
        &self,
        prompt: Prompt,
        chat_template: Option<&ChatTemplate>,
    ) -> Result<Prompt, GuardError> {
        if self.format != InputFormat::ModelChat {
            return Ok(prompt);
        }
        let template = chat_template.ok_or(GuardError::NoChatTemplate)?;
        Ok(template.render(&[Message::user(prompt)], true)?)
    }

    /// What every prompt starts with, for the backend to evaluate once; `None` with the model's
    /// chat template, whose shared part the backend finds itself.
    pub fn shared_prefix(&self) -> Option<Prompt> {
        match self.format {
            InputFormat::Protocol(format) => Some(format.shared_prefix()),
            InputFormat::ModelChat => None,
        }
    }

    /// Turns one generation into a result under the policy.
    pub fn judge(
        &self,
        conversation: &Conversation,
        generation: Generation,
    ) -> Result<CheckResult, GuardError> {
        let parsed = parse_structured(&generation.text);
        let verdict = parsed.verdict;
        let missing = required_missing(conversation, &verdict);
        let (harmful, decided_by) = if missing.is_empty() {
            (verdict.is_harmful(), DecidedBy::Model)
        } else {
            match self.policy {
                UnparseablePolicy::Error => {
                    let chars: Vec<char> = generation.text.chars().collect();
                    let tail: String = chars[chars.len().saturating_sub(200)..].iter().collect();
                    return Err(GuardError::Unparseable {
                        missing,
                        generated: generation.generated_tokens,
                        stop: generation.stop,
                        tail,
                    });
                }
                // A harmful answer the model did give still counts, whatever the policy.
                UnparseablePolicy::FailClosed => (true, DecidedBy::Policy),
                UnparseablePolicy::FailOpen => (verdict.is_harmful(), DecidedBy::Policy),
            }
        };
        Ok(CheckResult {
            harmful,
            decided_by,
            missing,
            policy: self.policy,
            verdict,
            parsed,
            usage: Usage {
                prompt_tokens: generation.prompt_tokens,
                cached_prompt_tokens: generation.cached_prompt_tokens,
                generated_tokens: generation.generated_tokens,
            },
            stop: generation.stop,
            timings: generation.timings,
            output: generation.text,
            prompt_token_ids: generation.prompt_token_ids,
            token_ids: generation.token_ids,
        })
    }
}

/// The answers a conversation calls for that the verdict lacks: the request always; the refusal and
/// response answers only when there is a response (a `None` answer is accepted there).
pub fn required_missing(conversation: &Conversation, verdict: &Verdict) -> Vec<Task> {
    let mut missing = Vec::new();
    if !matches!(verdict.request, Answer::Label(_)) {
        missing.push(Task::Request);
    }
    if conversation.response.is_some() {
        if !matches!(verdict.completion, Answer::Label(_)) {
            missing.push(Task::Completion);
        }
        if !matches!(verdict.response, Answer::Label(_)) {
            missing.push(Task::Response);
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardreasoner_engine::{ModelInfo, TokenEvent};

    /// Replays fixed outputs: the policy logic under test does not depend on where text comes from.
    struct Replay {
        info: ModelInfo,
        outputs: Vec<String>,
        seen: Vec<Batch>,
    }

    impl Replay {
        fn new(outputs: &[&str]) -> Self {
            Self {
                info: ModelInfo {
                    backend: "replay",
                    source: "test".into(),
                    context_length: 4096,
                    max_batch: 8,
                    device: "cpu".into(),
                },
                outputs: outputs.iter().map(|s| s.to_string()).collect(),
                seen: Vec::new(),
            }
        }
    }

    impl Generate for Replay {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn generate(
            &mut self,
            batch: &Batch,
            on_token: &mut dyn FnMut(TokenEvent<'_>),
        ) -> Result<Vec<Generation>, EngineError> {
            self.seen.push(batch.clone());
            // One output per prompt while they last: fewer outputs than prompts play a backend
            // that replies short.
            Ok(self.outputs[..batch.prompts.len().min(self.outputs.len())]
                .iter()
                .enumerate()
                .map(|(sequence, text)| {
                    on_token(TokenEvent { sequence, text });
                    Generation {
                        text: text.clone(),
                        prompt_tokens: 10,
                        prompt_token_ids: Vec::new(),
                        cached_prompt_tokens: 5,
                        generated_tokens: 3,
                        token_ids: vec![1, 2, 3],
                        logprobs: None,
                        stop: StopReason::EndOfText,
                        timings: Timings::default(),
                    }
                })
                .collect())
        }
        fn count_tokens(&mut self, prompt: &Prompt) -> Result<Option<usize>, EngineError> {
            Ok(Some(prompt.len()))
        }
    }

    const HARMFUL: &str = "# Task 1\n\n## Reasoning Step 1\nBad.\n\n---\n\nAnswers: \nRequest: harmful\nCompletion: None\nResponse: None";
    const TRUNCATED: &str = "# Task 1\n\n## Reasoning Step 1\nThe user asks";

    fn guard(outputs: &[&str], policy: UnparseablePolicy) -> Guard<Replay> {
        Guard::new(
            Replay::new(outputs),
            GuardConfig {
                policy,
                ..GuardConfig::default()
            },
        )
    }

    #[test]
    fn a_parsed_verdict_decides() {
        let mut guard = guard(&[HARMFUL], UnparseablePolicy::Error);
        let mut streamed = String::new();
        let result = guard
            .check(&Conversation::prompt_only("x"), &mut |t| {
                streamed.push_str(t)
            })
            .unwrap();
        assert!(result.harmful);
        assert_eq!(result.decided_by, DecidedBy::Model);
        assert_eq!(streamed, HARMFUL);
        assert_eq!(result.parsed.tasks[0].steps[0].text, "Bad.");
        assert_eq!(result.usage.cached_prompt_tokens, 5);
        // The prompt is the eval format and the instruction is offered as the shared prefix.
        let batch = &guard.engine().seen[0];
        assert_eq!(
            batch.prompts[0],
            PromptFormat::Eval.render(&Conversation::prompt_only("x"))
        );
        assert_eq!(
            batch.shared_prefix,
            Some(PromptFormat::Eval.shared_prefix())
        );
    }

    #[test]
    fn a_backend_that_replies_short_is_an_error_not_a_dropped_conversation() {
        let mut guard = guard(&[HARMFUL], UnparseablePolicy::Error);
        let conversations = [
            Conversation::prompt_only("a"),
            Conversation::prompt_only("b"),
        ];
        let error = guard
            .check_batch(&conversations, &mut |_, _| {})
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "replay: returned 1 generations for 2 prompts"
        );
    }

    #[test]
    fn the_policy_decides_unparseable_output_and_says_so() {
        let conversation = Conversation::prompt_only("x");
        let closed = guard(&[TRUNCATED], UnparseablePolicy::FailClosed)
            .check(&conversation, &mut |_| {})
            .unwrap();
        assert!(closed.harmful);
        assert_eq!(
            (closed.decided_by, closed.missing.clone()),
            (DecidedBy::Policy, vec![Task::Request])
        );
        let open = guard(&[TRUNCATED], UnparseablePolicy::FailOpen)
            .check(&conversation, &mut |_| {})
            .unwrap();
        assert!(!open.harmful);
        assert_eq!(open.decided_by, DecidedBy::Policy);
        let error = guard(&[TRUNCATED], UnparseablePolicy::Error)
            .check(&conversation, &mut |_| {})
            .unwrap_err();
        assert!(
            error.to_string().contains("gives no Request answer"),
            "{error}"
        );
    }

    #[test]
    fn a_response_calls_for_all_three_answers() {
        // `None` for completion and response is fine without a response, not with one.
        let with_response = Conversation::with_response("x", "y");
        let result = guard(&[HARMFUL], UnparseablePolicy::FailOpen)
            .check(&with_response, &mut |_| {})
            .unwrap();
        assert_eq!(result.missing, vec![Task::Completion, Task::Response]);
        // fail-open still blocks what the model did call harmful.
        assert!(result.harmful);
    }

    #[test]
    fn a_batch_keeps_its_order_and_per_item_errors() {
        let mut guard = guard(&[HARMFUL, TRUNCATED], UnparseablePolicy::Error);
        let conversations = [
            Conversation::prompt_only("a"),
            Conversation::prompt_only("b"),
        ];
        let results = guard.check_batch(&conversations, &mut |_, _| {}).unwrap();
        assert!(results[0].as_ref().unwrap().harmful);
        assert!(matches!(results[1], Err(GuardError::Unparseable { .. })));
    }

    #[test]
    fn policy_and_format_names_are_the_documented_spellings() {
        for (name, policy) in [
            ("error", UnparseablePolicy::Error),
            ("fail-closed", UnparseablePolicy::FailClosed),
            ("fail-open", UnparseablePolicy::FailOpen),
        ] {
            assert_eq!(name.parse::<UnparseablePolicy>().unwrap(), policy);
            assert_eq!(policy.name(), name);
        }
        for (name, format) in [
            ("eval", InputFormat::Protocol(PromptFormat::Eval)),
            ("deploy", InputFormat::Protocol(PromptFormat::Deploy)),
            (
                "llama3-chat",
                InputFormat::Protocol(PromptFormat::Llama3Chat),
            ),
            ("model-chat", InputFormat::ModelChat),
        ] {
            assert_eq!(name.parse::<InputFormat>().unwrap(), format);
            assert_eq!(format.to_string(), name);
        }
        let error = "chat".parse::<InputFormat>().unwrap_err();
        assert!(
            error.contains("eval, deploy, llama3-chat, model-chat"),
            "{error}"
        );
    }

    #[test]
    fn model_chat_wraps_the_eval_text_and_shares_no_prefix() {
        let conversation = Conversation::prompt_only("hello");
        let template = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}",
            "",
            "",
            false,
        )
        .unwrap();
        let config = GuardConfig {
            format: InputFormat::ModelChat,
            ..GuardConfig::default()
        };
        let eval = PromptFormat::Eval.render(&conversation);
        let wrapped = config.render(&conversation, Some(&template)).unwrap();
        assert_eq!(wrapped.text(), format!("<user>{eval}</user>"));
        // The conversation stays content inside the template.
        assert_eq!(
            wrapped.texts(guardreasoner_protocol::SpanKind::Content),
            ["hello"]
        );
        assert_eq!(config.shared_prefix(), None);
        assert!(matches!(
            config.render(&conversation, None),
            Err(GuardError::NoChatTemplate)
        ));
        let plain = GuardConfig::default();
        assert_eq!(plain.render(&conversation, Some(&template)).unwrap(), eval);
        assert_eq!(
            plain.shared_prefix(),
            Some(PromptFormat::Eval.shared_prefix())
        );
    }
}
