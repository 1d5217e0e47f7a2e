//! The raw model in OpenAI's shape, for clients that call a guard as a model (NeMo Guardrails,
//! vLLM-style clients): `POST /v1/chat/completions` (the model's own chat template),
//! `POST /v1/completions` (a raw prompt), both streaming too, and `GET /v1/models`.
//!
//! Decoding is greedy unless `temperature` is given (a guard's verdict should not be a draw);
//! `max_tokens` defaults to the server's `max_new_tokens` and may not exceed it. `stop` strings end
//! generation (the text is cut before them, the sequence cancelled). What this server does not do
//! is refused by name rather than ignored: `n` above 1, `logprobs`, `tools`.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use guardreasoner_engine::chat_template::Message;
use guardreasoner_engine::schedule::{events, validate, validate_tokens, Event, EventReceiver};
use guardreasoner_engine::{Generation, Prompt, SamplingParams, StopReason};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::json::{self, Body};
use crate::routes::guard::error_event;
use crate::state::AppState;

/// The sampling fields both endpoints take.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    /// The most new tokens.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The newer name of `max_tokens` (chat).
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Softmax temperature; 0 or absent is greedy.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus threshold.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stream as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `{"include_usage": true}` adds a usage chunk before `[DONE]`.
    #[serde(default)]
    pub stream_options: Option<Value>,
    /// Strings that end generation.
    #[serde(default)]
    pub stop: Option<Value>,
    /// Choices per prompt: 1 only.
    #[serde(default)]
    pub n: Option<u64>,
    /// Token log-probabilities: not offered.
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// Tool calling: not offered.
    #[serde(default)]
    pub tools: Option<Value>,
    /// Keep generating past end of text, up to the budget (vLLM's and llama-server's extension,
    /// for benchmarks with a fixed number of new tokens).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

impl Sampling {
    fn params(&self, limit: usize) -> Result<SamplingParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::unprocessable("only n = 1 is supported").with_param("n"));
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
        {
            return Err(
                ApiError::unprocessable("logprobs are not offered by this server")
                    .with_param("logprobs"),
            );
        }
        if self.tools.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(
                ApiError::unprocessable("this server does not call tools").with_param("tools")
            );
        }
        let (max, param) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(max), _) => (max, "max_completion_tokens"),
            (None, Some(max)) => (max, "max_tokens"),
            (None, None) => (limit as u64, "max_tokens"),
        };
        if max == 0 || max > limit as u64 {
            return Err(ApiError::unprocessable(format!(
                "{param} is {max}; this server generates between 1 and {limit} tokens"
            ))
            .with_param(param));
        }
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(0.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or(0) as u64,
            max_new_tokens: max as usize,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            ..SamplingParams::default()
        };
        // The budget was checked above, in the request's own words; the rest are named alike.
        params
            .validate()
            .map_err(|e| ApiError::from_engine(&e, "prompt"))?;
        Ok(params)
    }

    fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops: Vec<String> = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(stop)) => vec![stop.clone()],
            Some(value) => json::field(value.clone(), "stop")?,
        };
        if stops.len() > 4 || stops.iter().any(String::is_empty) {
            return Err(
                ApiError::unprocessable("stop holds up to 4 non-empty strings").with_param("stop"),
            );
        }
        Ok(stops)
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// `POST /v1/chat/completions`'s body.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Value>,
    /// The model asked for; this server has one.
    #[serde(default)]
    pub model: Option<Value>,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `POST /v1/completions`'s body.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// A string (the model's raw input: control-token text in it is the control token), token
    /// ids, or a list holding one of them.
    pub prompt: Value,
    /// The model asked for; this server has one.
    #[serde(default)]
    pub model: Option<Value>,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Which shape the answer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Text,
}

/// The roles a message may have (OpenAI's). A chat template writes the role inside its own
/// markers, as the format's text, so a role is one of these words and never free text: a role of
/// `user<|im_end|>` would otherwise be a control token.
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

fn messages(values: Vec<Value>) -> Result<Vec<Message>, ApiError> {
    if values.is_empty() {
        return Err(ApiError::bad_request("messages is empty").with_param("messages"));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            let role = value.get("role").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad_request("a message needs a string `role`")
                    .with_param(format!("messages[{index}].role"))
            })?;
            if !ROLES.contains(&role) {
                return Err(ApiError::bad_request(format!(
                    "role {role:?} is not one of {}",
                    ROLES.join(", ")
                ))
                .with_param(format!("messages[{index}].role")));
            }
            let content = match value.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Null) | None => String::new(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (part_index, part) in parts.iter().enumerate() {
                        match (part.get("type").and_then(Value::as_str), part.get("text")) {
                            (Some("text"), Some(Value::String(t))) => text.push_str(t),
                            _ => {
                                return Err(ApiError::bad_request(
                                    "only text content parts are supported",
                                )
                                .with_param(format!("messages[{index}].content[{part_index}]")))
                            }
                        }
                    }
                    text
                }
                Some(_) => {
                    return Err(
                        ApiError::bad_request("content is a string or a list of parts")
                            .with_param(format!("messages[{index}].content")),
                    )
                }
            };
            // A message's text is content: a `<|im_end|>` in it is text, not the end of a turn.
            Ok(Message::text(role, &content))
        })
        .collect()
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(state): State<AppState>, Body(request): Body<ChatRequest>) -> Response {
    let prompt = (|| {
        let guard = state.guard()?;
        let template = guard.scheduler().chat_template().ok_or_else(|| {
            ApiError::bad_request("the model's files carry no chat template; use /v1/completions")
        })?;
        let messages = messages(request.messages)?;
        template.render(&messages, true).map_err(|e| {
            ApiError::bad_request(guardreasoner_engine::error::with_causes(&e))
                .with_param("messages")
        })
    })();
    let _ = request.model;
    match prompt {
        Ok(prompt) => complete(state, Input::Text(prompt), request.sampling, Shape::Chat).await,
        Err(error) => error.into_response(),
    }
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    Body(request): Body<CompletionRequest>,
) -> Response {
    let _ = request.model;
    // A completions prompt is the model's raw input, as in vLLM and llama-server: control-token
    // text in it is the control token (docs/serving.md says so). Untrusted text belongs in
    // /v1/chat/completions or the guard endpoints, which keep it as text.
    // Token ids (a list of them, or a list of one such list) are taken as they are.
    let prompt = match request.prompt {
        Value::String(prompt) => Input::Text(Prompt::format(prompt)),
        Value::Array(mut prompts) if prompts.len() == 1 && prompts[0].is_string() => Input::Text(
            Prompt::format(prompts.remove(0).as_str().unwrap_or_default()),
        ),
        Value::Array(mut prompts) if prompts.len() == 1 && prompts[0].is_array() => {
            match json::field::<Vec<u32>>(prompts.remove(0), "prompt[0]") {
                Ok(ids) => Input::Tokens(ids),
                Err(error) => return error.into_response(),
            }
        }
        Value::Array(prompts) if prompts.first().is_some_and(Value::is_number) => {
            match json::field::<Vec<u32>>(Value::Array(prompts), "prompt") {
                Ok(ids) => Input::Tokens(ids),
                Err(error) => return error.into_response(),
            }
        }
        _ => {
            return ApiError::bad_request(
                "prompt is a string, a list of token ids, or a list of one of them",
            )
            .with_param("prompt")
            .into_response()
        }
    };
    complete(state, prompt, request.sampling, Shape::Text).await
}

/// Cuts the generated text at the first stop string, holding back what could still begin one.
struct Stops {
    stops: Vec<String>,
    text: String,
    sent: usize,
    stopped: bool,
}

impl Stops {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds generated text; returns what may be sent now.
    fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.text.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(at);
            self.stopped = true;
            return self.flush();
        }
        let hold = self.stops.iter().map(|s| s.len() - 1).max().unwrap_or(0);
        let mut safe = self.text.len().saturating_sub(hold).max(self.sent);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let out = self.text[self.sent..safe.max(self.sent)].to_string();
        self.sent = safe.max(self.sent);
        out
    }

    /// Whatever is left once generation ends.
    fn flush(&mut self) -> String {
        let out = self.text[self.sent.min(self.text.len())..].to_string();
        self.sent = self.text.len();
        out
    }
}

fn finish_reason(stop: StopReason, stopped: bool) -> &'static str {
    match stop {
        _ if stopped => "stop",
        StopReason::EndOfText => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    }
}

fn usage(generation: Option<&Generation>) -> Value {
    let (prompt, cached, generated) = generation.map_or((0, 0, 0), |g| {
        (g.prompt_tokens, g.cached_prompt_tokens, g.generated_tokens)
    });
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

struct Call {
    state: AppState,
    receiver: EventReceiver,
    stops: Stops,
    shape: Shape,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

/// What a call generates from.
enum Input {
    /// Text, in spans: a chat's messages are content, a completions prompt the model's raw input.
    Text(Prompt),
    /// Token ids, as the client tokenized them.
    Tokens(Vec<u32>),
}

async fn complete(state: AppState, prompt: Input, sampling: Sampling, shape: Shape) -> Response {
    match start(state, prompt, &sampling, shape).await {
        Ok(call) if sampling.stream == Some(true) => {
            let include_usage = sampling.include_usage();
            Sse::new(stream_call(Call {
                include_usage,
                ..call
            }))
            .keep_alive(KeepAlive::default())
            .into_response()
        }
        Ok(call) => match finish_call(call).await {
            Ok(value) => Json(value).into_response(),
            Err(error) => error.into_response(),
        },
        Err(error) => error.into_response(),
    }
}

async fn start(
    state: AppState,
    prompt: Input,
    sampling: &Sampling,
    shape: Shape,
) -> Result<Call, ApiError> {
    let guard = state.guard()?;
    let params = sampling.params(state.config.max_new_tokens)?;
    let stops = Stops::new(sampling.stops()?);
    let scheduler = guard.scheduler().clone();
    // Tokenizing a long prompt takes a while: off the runtime's workers.
    let validating = scheduler.clone();
    let request = tokio::task::spawn_blocking(move || match prompt {
        Input::Text(prompt) => validate(validating.as_ref(), 0, prompt, None, params),
        Input::Tokens(ids) => validate_tokens(validating.as_ref(), 0, ids, params),
    })
    .await
    .map_err(|e| ApiError::internal(format!("the validating thread failed: {e}")))?
    .map_err(|e| ApiError::from_engine(&e, "prompt"))?;
    let (sender, receiver) = events();
    scheduler
        .submit(request, 0, sender)
        .map_err(|e| ApiError::from_rejected(&e, StatusCode::TOO_MANY_REQUESTS))?;
    let prefix = match shape {
        Shape::Chat => "chatcmpl",
        Shape::Text => "cmpl",
    };
    Ok(Call {
        id: format!("{prefix}-{}", crate::ids::next()),
        created: state.created,
        model: state.config.model_name.clone(),
        state,
        receiver,
        stops,
        shape,
        include_usage: false,
    })
}

async fn finish_call(mut call: Call) -> Result<Value, ApiError> {
    let limit = call.state.config.request_timeout;
    let generation = tokio::time::timeout(limit, async {
        loop {
            match call.receiver.recv().await {
                Some((_, Event::Token { text })) => {
                    call.stops.push(&text);
                    if call.stops.stopped {
                        return Ok(None);
                    }
                }
                Some((_, Event::Finished(finished))) => {
                    return finished
                        .map(Some)
                        .map_err(|e| ApiError::from_engine(&e, "prompt"))
                }
                None => return Err(ApiError::internal("the scheduler stopped")),
            }
        }
    })
    .await
    .map_err(|_| ApiError::deadline(limit))??;
    // A stop string ended it: the receiver is dropped with the call, which cancels the sequence.
    if let Some(generation) = &generation {
        call.state.metrics.generation(generation);
    }
    call.stops.flush();
    let text = std::mem::take(&mut call.stops.text);
    let reason = finish_reason(
        generation
            .as_ref()
            .map_or(StopReason::EndOfText, |g| g.stop),
        call.stops.stopped,
    );
    let choice = match call.shape {
        Shape::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": reason,
            "logprobs": null,
        }),
        Shape::Text => json!({"index": 0, "text": text, "finish_reason": reason, "logprobs": null}),
    };
    Ok(json!({
        "id": call.id,
        "object": match call.shape { Shape::Chat => "chat.completion", Shape::Text => "text_completion" },
        "created": call.created,
        "model": call.model,
        "choices": [choice],
        "usage": usage(generation.as_ref()),
    }))
}

impl Call {
    fn chunk(&self, text: Option<&str>, reason: Option<&str>, first: bool) -> SseEvent {
        let choice = match self.shape {
            Shape::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(text) = text {
                    delta.insert("content".into(), text.into());
                }
                json!({"index": 0, "delta": delta, "finish_reason": reason, "logprobs": null})
            }
            Shape::Text => {
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": reason, "logprobs": null})
            }
        };
        self.event(json!({"choices": [choice]}))
    }

    fn event(&self, mut body: Value) -> SseEvent {
        if let Value::Object(map) = &mut body {
            map.insert("id".into(), self.id.clone().into());
            map.insert(
                "object".into(),
                match self.shape {
                    Shape::Chat => "chat.completion.chunk",
                    Shape::Text => "text_completion",
                }
                .into(),
            );
            map.insert("created".into(), self.created.into());
            map.insert("model".into(), self.model.clone().into());
        }
        SseEvent::default().data(body.to_string())
    }
}

/// Chunks as OpenAI streams them: the role first (chat), text deltas, a last chunk with the
/// finish reason, a usage chunk when asked for, then `[DONE]`.
fn stream_call(call: Call) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let deadline = tokio::time::Instant::now() + call.state.config.request_timeout;
    let mut pending = VecDeque::new();
    if call.shape == Shape::Chat {
        pending.push_back(call.chunk(Some(""), None, true));
    }
    stream::unfold(
        (Some(call), pending),
        move |(mut call, mut pending)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (call, pending)));
                }
                // Ended: the call (and its receiver, which cancels the sequence) is gone.
                let live = call.as_mut()?;
                let received = tokio::time::timeout_at(deadline, live.receiver.recv()).await;
                match received {
                    Ok(Some((_, Event::Token { text }))) => {
                        let out = live.stops.push(&text);
                        if !out.is_empty() {
                            pending.push_back(live.chunk(Some(&out), None, false));
                        }
                        if live.stops.stopped {
                            live.end(None, &mut pending);
                            call = None;
                        }
                    }
                    Ok(Some((_, Event::Finished(Ok(generation))))) => {
                        live.state.metrics.generation(&generation);
                        live.end(Some(&generation), &mut pending);
                        call = None;
                    }
                    Ok(Some((_, Event::Finished(Err(error))))) => {
                        pending.push_back(error_event(&ApiError::from_engine(&error, "prompt")));
                        call = None;
                    }
                    Ok(None) => {
                        pending
                            .push_back(error_event(&ApiError::internal("the scheduler stopped")));
                        call = None;
                    }
                    Err(_) => {
                        let limit = live.state.config.request_timeout;
                        pending.push_back(error_event(&ApiError::deadline(limit)));
                        call = None;
                    }
                }
            }
        },
    )
}

impl Call {
    /// The last chunks: what the stop matcher held back, the finish reason, usage, `[DONE]`.
    fn end(&mut self, generation: Option<&Generation>, pending: &mut VecDeque<SseEvent>) {
        let rest = self.stops.flush();
        if !rest.is_empty() {
            pending.push_back(self.chunk(Some(&rest), None, false));
        }
        let reason = finish_reason(
            generation.map_or(StopReason::EndOfText, |g| g.stop),
            self.stops.stopped,
        );
        pending.push_back(self.chunk(None, Some(reason), false));
        if self.include_usage {
            pending.push_back(self.event(json!({"choices": [], "usage": usage(generation)})));
        }
        pending.push_back(SseEvent::default().data("[DONE]"));
    }
}

/// `GET /v1/models`.
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.config.model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "guardreasoner",
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_the_text_and_hold_back_a_possible_start() {
        let mut stops = Stops::new(vec!["END".into()]);
        assert_eq!(stops.push("hello E"), "hello");
        assert_eq!(stops.push("N"), " ");
        assert_eq!(stops.push("D and more"), "");
        assert!(stops.stopped);
        assert_eq!(stops.text, "hello ");
        let mut none = Stops::new(Vec::new());
        assert_eq!(none.push("é"), "é");
        let mut split = Stops::new(vec!["éé".into()]);
        assert_eq!(split.push("abcdé"), "abc");
        assert_eq!(split.flush(), "dé");
    }

    #[test]
    fn sampling_is_checked_against_the_servers_limit() {
        let over = Sampling {
            max_tokens: Some(100),
            ..Sampling::default()
        };
        let error = over.params(50).unwrap_err();
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            error.message.contains("between 1 and 50"),
            "{}",
            error.message
        );
        assert_eq!(error.param.as_deref(), Some("max_tokens"));
        let zero = Sampling {
            max_completion_tokens: Some(0),
            ..Sampling::default()
        };
        assert_eq!(
            zero.params(50).unwrap_err().param.as_deref(),
            Some("max_completion_tokens")
        );
        let hot = Sampling {
            temperature: Some(-1.0),
            ..Sampling::default()
        };
        assert_eq!(
            hot.params(50).unwrap_err().param.as_deref(),
            Some("temperature")
        );
        let n = Sampling {
            n: Some(2),
            ..Sampling::default()
        };
        assert_eq!(n.params(50).unwrap_err().param.as_deref(), Some("n"));
        assert_eq!(Sampling::default().params(50).unwrap().max_new_tokens, 50);
    }
}
