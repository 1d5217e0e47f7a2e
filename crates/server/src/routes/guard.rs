//! `POST /v1/guard`: the native endpoint. A conversation (`{prompt, response?}`) or a list of
//! them in; per conversation the three answers, the decision and who made it, the reasoning in
//! tasks and steps, usage and timings. `"stream": true` (one conversation) streams the reasoning
//! as server-sent events (`token`), then the verdict (`verdict`). One conversation may also set
//! `max_new_tokens` (at most the server's), `ignore_eos`, and `return_token_ids` (the prompt's
//! and the output's token ids in the answer).

use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use guardreasoner_engine::schedule::{Event, EventReceiver};
use guardreasoner_engine::{SamplingParams, Timings};
use guardreasoner_guard::{CheckResult, DecidedBy, GuardError, GuardHandle};
use guardreasoner_protocol::parse::structured::TaskReasoning;
use guardreasoner_protocol::{Conversation, Verdict};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::error::ApiError;
use crate::json::{self, Body};
use crate::state::AppState;

/// One conversation to check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The user's prompt.
    pub prompt: String,
    /// The AI's response, when there is one to judge.
    #[serde(default)]
    pub response: Option<String>,
}

impl Item {
    fn conversation(self) -> Conversation {
        match self.response {
            Some(response) => Conversation::with_response(self.prompt, response),
            None => Conversation::prompt_only(self.prompt),
        }
    }
}

/// The guard's answer on one conversation.
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    /// Whether to block: the request or the response is harmful, or the policy says so.
    pub harmful: bool,
    /// `model`, or `policy` when answers were missing.
    pub decided_by: DecidedBy,
    /// The three answers: a label, `none`, or `missing`.
    pub labels: Verdict,
    /// Answers the conversation called for that the output lacked.
    pub missing: Vec<&'static str>,
    /// The reasoning, per task and step.
    pub reasoning: Vec<TaskReasoning>,
    /// The model's whole output.
    pub output: String,
    /// Token counts.
    pub usage: Usage,
    /// Where the time went, in seconds.
    pub timings: Timings,
    /// Why generation stopped.
    pub stop: guardreasoner_engine::StopReason,
}

/// Token counts, named as OpenAI names them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Of those, reused from the shared-prefix cache.
    pub cached_prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
}

impl From<CheckResult> for Reply {
    fn from(result: CheckResult) -> Self {
        Self {
            harmful: result.harmful,
            decided_by: result.decided_by,
            labels: result.verdict,
            missing: result.missing.iter().map(|t| t.answer_key()).collect(),
            reasoning: result.parsed.tasks,
            output: result.output,
            usage: Usage {
                prompt_tokens: result.usage.prompt_tokens,
                cached_prompt_tokens: result.usage.cached_prompt_tokens,
                completion_tokens: result.usage.generated_tokens,
                total_tokens: result.usage.prompt_tokens + result.usage.generated_tokens,
            },
            timings: result.timings,
            stop: result.stop,
        }
    }
}

/// A verdict, or the error in OpenAI's shape (per item: one failure never fails the others).
pub fn item_json(verdict: Result<CheckResult, GuardError>) -> serde_json::Value {
    match verdict {
        Ok(result) => serde_json::to_value(Reply::from(result)).unwrap_or_default(),
        Err(error) => ApiError {
            kind: match error {
                GuardError::Unparseable { .. } => "unparseable_output",
                GuardError::Engine(_) | GuardError::NoChatTemplate => "server_error",
            },
            ..ApiError::internal(guardreasoner_engine::error::with_causes(&error))
        }
        .body(),
    }
}

/// One conversation's answer, with the response's id and the model's name, and with
/// `token_ids` the prompt's and the output's token ids (vLLM's `return_token_ids`).
fn labelled(
    verdict: Result<CheckResult, GuardError>,
    id: &str,
    model: &str,
    token_ids: bool,
) -> serde_json::Value {
    let ids = match (&verdict, token_ids) {
        (Ok(result), true) => Some((result.prompt_token_ids.clone(), result.token_ids.clone())),
        _ => None,
    };
    let mut reply = item_json(verdict);
    if let serde_json::Value::Object(map) = &mut reply {
        map.insert("id".into(), id.into());
        map.insert("model".into(), model.into());
        if let Some((prompt, output)) = ids {
            map.insert("prompt_token_ids".into(), prompt.into());
            map.insert("token_ids".into(), output.into());
        }
    }
    reply
}

/// `POST /v1/guard`.
pub async fn guard(State(state): State<AppState>, Body(body): Body<serde_json::Value>) -> Response {
    match handle(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle(state: AppState, body: serde_json::Value) -> Result<Response, ApiError> {
    let id = format!("guard-{}", crate::ids::next());
    let model = state.config.model_name.clone();
    match body {
        serde_json::Value::Array(items) => {
            let conversations = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    json::field::<Item>(item, &format!("[{i}]")).map(Item::conversation)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let verdicts = checks::check_all(
                &state,
                &conversations,
                None,
                StatusCode::TOO_MANY_REQUESTS,
                "",
            )
            .await?;
            let results: Vec<_> = verdicts.into_iter().map(item_json).collect();
            Ok(
                Json(serde_json::json!({"id": id, "model": model, "results": results}))
                    .into_response(),
            )
        }
        serde_json::Value::Object(mut fields) => {
            let options = Options::take(&mut fields)?;
            let params = options.params(&state)?;
            let item: Item = json::field(serde_json::Value::Object(fields), "body")?;
            let conversation = item.conversation();
            if options.stream {
                let (guard, receiver) = checks::submit(
                    &state,
                    std::slice::from_ref(&conversation),
                    params.as_ref(),
                    StatusCode::TOO_MANY_REQUESTS,
                    "prompt",
                )
                .await?;
                let events = stream_events(
                    state,
                    guard,
                    receiver,
                    conversation,
                    (id, model),
                    options.return_token_ids,
                );
                return Ok(Sse::new(events)
                    .keep_alive(KeepAlive::default())
                    .into_response());
            }
            let mut verdicts = checks::check_all(
                &state,
                std::slice::from_ref(&conversation),
                params.as_ref(),
                StatusCode::TOO_MANY_REQUESTS,
                "prompt",
            )
            .await?;
            Ok(Json(labelled(
                verdicts.remove(0),
                &id,
                &model,
                options.return_token_ids,
            ))
            .into_response())
        }
        _ => Err(ApiError::bad_request(
            "the body is a conversation ({\"prompt\": ..., \"response\": ...}) or a list of them",
        )),
    }
}

/// What a single-conversation request may set besides the conversation. The guard samples as it
/// was configured (greedy by default); a client may only shorten the budget, or keep generating
/// past end of text (`ignore_eos`, llama-server's and vLLM's extension, for load tests with a fixed
/// number of new tokens: the verdict is then read from wherever the answers block ended up).
#[derive(Debug, Default)]
struct Options {
    stream: bool,
    /// Whether the answer carries the prompt's and the output's token ids (what the model read:
    /// the way to check that a conversation's control strings stayed text).
    return_token_ids: bool,
    max_new_tokens: Option<u64>,
    ignore_eos: Option<bool>,
}

impl Options {
    /// Removes the option fields from the body, so that what is left is the conversation.
    fn take(fields: &mut serde_json::Map<String, serde_json::Value>) -> Result<Self, ApiError> {
        fn take<T: serde::de::DeserializeOwned>(
            fields: &mut serde_json::Map<String, serde_json::Value>,
            name: &str,
        ) -> Result<Option<T>, ApiError> {
            match fields.remove(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(value) => json::field(value, name).map(Some),
            }
        }
        Ok(Self {
            stream: take(fields, "stream")?.unwrap_or(false),
            return_token_ids: take(fields, "return_token_ids")?.unwrap_or(false),
            max_new_tokens: take(fields, "max_new_tokens")?,
            ignore_eos: take(fields, "ignore_eos")?,
        })
    }

    /// The guard's sampling with these overrides, or `None` when nothing is overridden.
    fn params(&self, state: &AppState) -> Result<Option<SamplingParams>, ApiError> {
        if self.max_new_tokens.is_none() && self.ignore_eos.is_none() {
            return Ok(None);
        }
        let limit = state.config.max_new_tokens;
        let mut params = state.guard()?.config().params.clone();
        if let Some(max) = self.max_new_tokens {
            if max == 0 || max > limit as u64 {
                return Err(ApiError::unprocessable(format!(
                    "max_new_tokens is {max}; this server generates between 1 and {limit} tokens"
                ))
                .with_param("max_new_tokens"));
            }
            params.max_new_tokens = max as usize;
        }
        if let Some(ignore_eos) = self.ignore_eos {
            params.ignore_eos = ignore_eos;
        }
        Ok(Some(params))
    }
}

struct Streaming {
    state: AppState,
    guard: GuardHandle,
    receiver: EventReceiver,
    conversation: Conversation,
    id: String,
    model: String,
    token_ids: bool,
    deadline: tokio::time::Instant,
    done: bool,
}

/// `token` events with the reasoning as it is generated, then one `verdict` event (or `error`).
fn stream_events(
    state: AppState,
    guard: GuardHandle,
    receiver: EventReceiver,
    conversation: Conversation,
    (id, model): (String, String),
    token_ids: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let deadline = tokio::time::Instant::now() + state.config.request_timeout;
    let start = Streaming {
        state,
        guard,
        receiver,
        conversation,
        id,
        model,
        token_ids,
        deadline,
        done: false,
    };
    stream::unfold(start, |mut s| async move {
        if s.done {
            return None;
        }
        let event = match tokio::time::timeout_at(s.deadline, s.receiver.recv()).await {
            Ok(Some((_, Event::Token { text }))) => SseEvent::default()
                .event("token")
                .data(serde_json::json!({ "text": text }).to_string()),
            Ok(Some((_, Event::Finished(finished)))) => {
                s.done = true;
                let verdict = checks::judge(&s.state, &s.guard, &s.conversation, finished);
                let reply = labelled(verdict, &s.id, &s.model, s.token_ids);
                SseEvent::default().event("verdict").data(reply.to_string())
            }
            Ok(None) => {
                s.done = true;
                error_event(&ApiError::internal("the scheduler stopped"))
            }
            Err(_) => {
                s.done = true;
                error_event(&ApiError::deadline(s.state.config.request_timeout))
            }
        };
        Some((Ok(event), s))
    })
}

/// An `error` event in OpenAI's error shape.
pub fn error_event(error: &ApiError) -> SseEvent {
    SseEvent::default()
        .event("error")
        .data(error.body().to_string())
}
