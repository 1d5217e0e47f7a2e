//! Reading request bodies as JSON, whatever the content type says (as llama-server and most
//! OpenAI-compatible servers do: `curl -d` sends a form type), with errors in OpenAI's shape that
//! name what is wrong: the field's path, the line and the column.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body of type `T`, read within the server's body deadline (a client that trickles its
/// body gets 408 once it passes).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let deadline = state.config.body_timeout;
        let bytes = tokio::time::timeout(deadline, Bytes::from_request(request, state))
            .await
            .map_err(|_| ApiError::body_timeout(deadline))?
            .map_err(|rejection| {
                let status = rejection.status();
                ApiError {
                    status,
                    ..ApiError::bad_request(rejection.body_text())
                }
                .with_code(
                    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                        "body_too_large"
                    } else {
                        "invalid_body"
                    },
                )
            })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(invalid)?;
        deserializer.end().map_err(|e| {
            ApiError::bad_request(format!("the body is not valid JSON: {e}"))
                .with_code("invalid_json")
        })?;
        Ok(Body(value))
    }
}

fn invalid(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::bad_request(format!("the body is not valid JSON: {inner}"))
            .with_code("invalid_json");
    }
    let error = ApiError::bad_request(if path == "." {
        format!("the body: {inner}")
    } else {
        format!("{path}: {inner}")
    })
    .with_code("invalid_request");
    if path == "." {
        error
    } else {
        error.with_param(path)
    }
}

/// Reads `value` as `T`, naming `field` in the error.
pub fn field<T: DeserializeOwned>(value: serde_json::Value, field: &str) -> Result<T, ApiError> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("{field}: {e}")).with_param(field))
}
