//! `POST /beta/litellm_basic_guardrail_api`: LiteLLM's generic guardrail contract.
//!
//! LiteLLM sends `input_type` (`request` before the call, `response` after it), the extracted
//! `texts`, and for requests the chat's `structured_messages`; every other field is optional and
//! unknown ones are ignored (LiteLLM adds fields between versions). The answer is
//! `{"action": "BLOCKED", "blocked_reason": ...}` or `{"action": "NONE"}`.
//!
//! A request is judged on its last user turn (as LiteLLM's own moderation hook does), else on its
//! texts joined. A response is judged in the context of its prompt, remembered from the request
//! with the same `litellm_call_id`; where that prompt is unknown (no id, forgotten, or checked by
//! another server), the response is judged after an empty user turn, and only the response's
//! harm decides. Overload is a 503 with `Retry-After`: LiteLLM's `unreachable_fallback` applies to
//! 502/503/504 (and to timeouts), not to 429.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use guardreasoner_guard::DecidedBy;
use guardreasoner_protocol::{Answer, Conversation, Harm};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::checks;
use crate::error::ApiError;
use crate::json::Body;
use crate::state::AppState;

/// The fields of LiteLLM's request this endpoint reads.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// `request` or `response`.
    pub input_type: InputType,
    /// LiteLLM's metadata about the caller (required by the contract; not read).
    pub request_data: Value,
    /// The texts LiteLLM extracted.
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    /// The chat messages of a request.
    #[serde(default)]
    pub structured_messages: Option<Vec<Value>>,
    /// The call's id, shared by its request and response checks.
    #[serde(default)]
    pub litellm_call_id: Option<String>,
}

/// Which side of the call is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// The user's request, before the model is called.
    Request,
    /// The model's response.
    Response,
}

/// The text of a chat message's content: a string, or the text parts of a list.
fn content_text(message: &Value) -> Option<String> {
    match message.get("content")? {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

fn prompt_of(request: &Request) -> Option<String> {
    let last_user = request.structured_messages.as_ref().and_then(|messages| {
        messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(content_text)
    });
    last_user.or_else(|| joined(&request.texts))
}

fn joined(texts: &Option<Vec<String>>) -> Option<String> {
    texts
        .as_ref()
        .filter(|t| t.iter().any(|s| !s.trim().is_empty()))
        .map(|t| t.join("\n"))
}

/// `POST /beta/litellm_basic_guardrail_api`.
pub async fn guardrail(State(state): State<AppState>, Body(request): Body<Request>) -> Response {
    match handle(state, request).await {
        Ok(value) => Json(value).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn handle(state: AppState, request: Request) -> Result<Value, ApiError> {
    let _ = &request.request_data;
    let (conversation, known_prompt) = match request.input_type {
        InputType::Request => {
            let Some(prompt) = prompt_of(&request) else {
                return Ok(json!({"action": "NONE"}));
            };
            if let Some(id) = &request.litellm_call_id {
                state.memory.remember(id, prompt.clone());
            }
            (Conversation::prompt_only(prompt), true)
        }
        InputType::Response => {
            let Some(response) = joined(&request.texts) else {
                return Ok(json!({"action": "NONE"}));
            };
            let prompt = request
                .litellm_call_id
                .as_deref()
                .and_then(|id| state.memory.recall(id));
            let known = prompt.is_some();
            (
                Conversation::with_response(prompt.unwrap_or_default(), response),
                known,
            )
        }
    };
    let verdict = checks::check_all(
        &state,
        std::slice::from_ref(&conversation),
        None,
        StatusCode::SERVICE_UNAVAILABLE,
        "texts",
    )
    .await?
    .remove(0)
    .map_err(|error| ApiError::internal(guardreasoner_engine::error::with_causes(&error)))?;
    let blocked = match request.input_type {
        InputType::Request => verdict.harmful,
        // The request was judged before the call; here the response decides (and the policy,
        // when the output gave no answer).
        InputType::Response => {
            verdict.verdict.response == Answer::Label(Harm::Harmful)
                || (verdict.decided_by == DecidedBy::Policy && verdict.harmful)
        }
    };
    if !blocked {
        return Ok(json!({"action": "NONE"}));
    }
    let what = match (request.input_type, verdict.decided_by) {
        (_, DecidedBy::Policy) => {
            "the guard's output gave no answer; blocked by its fail-closed policy"
        }
        (InputType::Request, _) => "the request is harmful",
        (InputType::Response, _) if known_prompt => "the response is harmful",
        (InputType::Response, _) => "the response is harmful (judged without its prompt)",
    };
    Ok(json!({
        "action": "BLOCKED",
        "blocked_reason": format!("GuardReasoner: {what}"),
    }))
}
