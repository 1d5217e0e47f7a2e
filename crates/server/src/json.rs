//! Reading request bodies: JSON errors become 400s in OpenAI's shape naming what is wrong (the
//! field, line and column serde reports), never axum's plain-text rejections.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body of type `T`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(rejected(rejection)),
        }
    }
}

fn rejected(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let message = rejection.body_text();
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError {
            status,
            ..ApiError::bad_request(message)
        }
        .with_code("body_too_large");
    }
    // A body that is not JSON at all, or JSON of the wrong shape (serde names the field).
    ApiError::bad_request(message).with_code(match rejection {
        JsonRejection::MissingJsonContentType(_) => "missing_content_type",
        JsonRejection::JsonSyntaxError(_) => "invalid_json",
        _ => "invalid_request",
    })
}

/// Reads `value` as `T`, naming `field` in the error.
pub fn field<T: DeserializeOwned>(value: serde_json::Value, field: &str) -> Result<T, ApiError> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("{field}: {e}")).with_param(field))
}
