//! `POST /v1/moderations` in OpenAI's shape. Each input string is checked as a user prompt; a
//! result's `flagged` is the guard's decision. GuardReasoner has no categories: every one of
//! OpenAI's 13 category keys is present, `false` with score 0 (`docs/serving.md` says why), and
//! the guard's own answers and reasoning are in the extra field `guardreasoner`. LiteLLM's
//! built-in `openai_moderation` guardrail posts here (its `api_base` ending in `/v1`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use guardreasoner_protocol::Conversation;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::checks;
use crate::error::ApiError;
use crate::json::Body;
use crate::routes::guard::item_json;
use crate::state::AppState;

/// OpenAI's moderation categories, as its API names them.
pub const CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// The request: `input` and an optional `model` (answered with the served model's name).
#[derive(Debug, Deserialize)]
pub struct Request {
    /// A string, a list of strings, or a list of content parts.
    pub input: Value,
    /// The model the client asked for; this server has one.
    #[serde(default)]
    pub model: Option<Value>,
}

/// The texts `input` holds, or a 400 naming what is wrong.
fn texts(input: Value) -> Result<Vec<String>, ApiError> {
    let bad =
        |message: String, param: String| Err(ApiError::bad_request(message).with_param(param));
    match input {
        Value::String(text) => Ok(vec![text]),
        Value::Array(items) => {
            let mut texts = Vec::with_capacity(items.len());
            for (index, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(text) => texts.push(text),
                    Value::Object(part) => match part.get("type").and_then(Value::as_str) {
                        Some("text") => match part.get("text") {
                            Some(Value::String(text)) => texts.push(text.clone()),
                            _ => {
                                return bad(
                                    "a text part needs a string `text`".into(),
                                    format!("input[{index}].text"),
                                )
                            }
                        },
                        Some(other) => {
                            return bad(
                                format!("input parts of type `{other}` are not supported: this guard reads text"),
                                format!("input[{index}].type"),
                            )
                        }
                        None => {
                            return bad(
                                "an input part needs a `type`".into(),
                                format!("input[{index}].type"),
                            )
                        }
                    },
                    _ => {
                        return bad(
                            "input items are strings or content parts".into(),
                            format!("input[{index}]"),
                        )
                    }
                }
            }
            Ok(texts)
        }
        _ => bad(
            "input is a string, a list of strings, or a list of content parts".into(),
            "input".into(),
        ),
    }
}

fn per_category<T: Clone + Into<Value>>(value: T) -> Map<String, Value> {
    CATEGORIES
        .iter()
        .map(|c| (c.to_string(), value.clone().into()))
        .collect()
}

/// `POST /v1/moderations`.
pub async fn moderations(State(state): State<AppState>, Body(request): Body<Request>) -> Response {
    match handle(state, request).await {
        Ok(value) => Json(value).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn handle(state: AppState, request: Request) -> Result<Value, ApiError> {
    let _ = request.model;
    let conversations: Vec<Conversation> = texts(request.input)?
        .into_iter()
        .map(Conversation::prompt_only)
        .collect();
    let verdicts = checks::check_all(
        &state,
        &conversations,
        None,
        StatusCode::TOO_MANY_REQUESTS,
        "input",
    )
    .await?;
    let mut results = Vec::with_capacity(verdicts.len());
    for (index, verdict) in verdicts.into_iter().enumerate() {
        let flagged = match &verdict {
            Ok(result) => result.harmful,
            Err(error) => {
                return Err(ApiError::internal(format!(
                    "input[{index}]: {}",
                    guardreasoner_engine::error::with_causes(error)
                )));
            }
        };
        results.push(json!({
            "flagged": flagged,
            "categories": per_category(false),
            "category_scores": per_category(0.0),
            "category_applied_input_types": per_category(json!(["text"])),
            "guardreasoner": item_json(verdict),
        }));
    }
    Ok(json!({
        "id": format!("modr-{}", crate::ids::next()),
        "model": state.config.model_name,
        "results": results,
    }))
}
