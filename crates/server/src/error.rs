//! Every error the server answers, in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}`, with the HTTP status that fits.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use guardreasoner_engine::schedule::Rejected;
use guardreasoner_engine::EngineError;
use guardreasoner_guard::{GuardError, SubmitError};
use serde::Serialize;

/// An error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, where one is.
    pub param: Option<String>,
    /// A machine-readable code.
    pub code: Option<&'static str>,
    /// For overload: when to retry.
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: a request that cannot be read (malformed JSON, a wrong field).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 422: a well-formed request the model cannot take (too long, out of range).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            message,
        )
    }

    /// 401: no valid API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "a valid API key is required (Authorization: Bearer KEY, or x-api-key: KEY)",
        )
        .with_code("invalid_api_key")
    }

    /// 404: no such route.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no route {path}"),
        )
        .with_code("not_found")
    }

    /// The queue is full: `status` is 429 for OpenAI-shaped endpoints (their clients retry) or
    /// 503 for LiteLLM's guardrail endpoint (its fallback applies to 502/503/504 only).
    pub fn overloaded(status: StatusCode, capacity: usize) -> Self {
        Self {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(
                status,
                "server_overloaded",
                format!("the server is busy ({capacity} requests waiting); retry shortly"),
            )
            .with_code("queue_full")
        }
    }

    /// 503: the model is still loading, or the server is stopping.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(Duration::from_secs(2)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_unavailable",
                message,
            )
        }
    }

    /// 503: the server holds its cap of open connections (answered by the connection loop,
    /// before any request is read).
    pub fn too_many_connections() -> Self {
        Self {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "too many open connections; retry shortly",
            )
            .with_code("too_many_connections")
        }
    }

    /// 504: the request's deadline passed; its sequences were cancelled.
    pub fn deadline(limit: Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the request took longer than the server's deadline of {} s and was cancelled",
                limit.as_secs_f64()
            ),
        )
        .with_code("deadline_exceeded")
    }

    /// 408: the client did not send its body within the server's deadline.
    pub fn body_timeout(limit: Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "the request body did not arrive within the server's deadline of {} s",
                limit.as_secs_f64()
            ),
        )
        .with_code("body_timeout")
    }

    /// 500: the backend failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// Names the field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Adds a machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// An engine error for the request's item `index` (of `field`): what the request did wrong
    /// is 422, what the backend did is 500.
    pub fn from_engine(error: &EngineError, field: &str) -> Self {
        match error {
            EngineError::PromptTooLong { index, .. } => Self::unprocessable(error.to_string())
                .with_param(format!("{field}[{index}]"))
                .with_code("context_length_exceeded"),
            EngineError::InvalidParams { param, .. } => {
                Self::unprocessable(error.to_string()).with_param(*param)
            }
            EngineError::InvalidPrompt { .. } => Self::bad_request(error.to_string())
                .with_param(field)
                .with_code("invalid_prompt"),
            // The model's chat template refused what the request holds (its own
            // `raise_exception`, or text it rewrites so that it cannot be kept apart).
            EngineError::Backend {
                backend: "chat-template",
                ..
            } => Self::unprocessable(guardreasoner_engine::error::with_causes(error))
                .with_param(field)
                .with_code("chat_template"),
            _ => Self::internal(guardreasoner_engine::error::with_causes(error)),
        }
    }

    /// A scheduler's refusal: overload with the endpoint's status, or a stopped scheduler.
    pub fn from_rejected(rejected: &Rejected, overload_status: StatusCode) -> Self {
        match rejected {
            Rejected::QueueFull { capacity } => Self::overloaded(overload_status, *capacity),
            Rejected::Stopped => Self::unavailable("the scheduler has stopped"),
        }
    }

    /// A refused submission: overload with the endpoint's status, or a request it cannot take.
    pub fn from_submit(error: &SubmitError, overload_status: StatusCode, field: &str) -> Self {
        match error {
            SubmitError::Rejected(rejected) => Self::from_rejected(rejected, overload_status),
            SubmitError::Invalid(GuardError::Engine(engine)) => Self::from_engine(engine, field),
            // The server was started with model-chat for a model without a chat template: its
            // fault, not the request's (`serve` refuses to start so; a library user may not).
            SubmitError::Invalid(GuardError::NoChatTemplate) => {
                Self::internal(GuardError::NoChatTemplate.to_string())
            }
            SubmitError::Invalid(other) => {
                Self::unprocessable(guardreasoner_engine::error::with_causes(other))
            }
        }
    }
}

impl ApiError {
    /// The error as OpenAI writes it: `{"error": {"message", "type", "param", "code"}}` (also a
    /// stream's `error` event, and a failed item of a list).
    pub fn body(&self) -> serde_json::Value {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        serde_json::to_value(body).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
