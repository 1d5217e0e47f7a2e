//! The endpoints, one module each; [`router`] puts them together with authentication, the body
//! limit, metrics and request tracing.

pub mod guard;
pub mod health;
pub mod litellm;
pub mod moderations;
pub mod openai;

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// Every route of the server over `state`.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/guard", post(guard::guard))
        .route("/v1/moderations", post(moderations::moderations))
        .route(
            "/beta/litellm_basic_guardrail_api",
            post(litellm::guardrail),
        )
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/metrics", get(health::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_key,
        ));
    Router::new()
        .merge(protected)
        .route("/health", get(health::health))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::record,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found(uri: Uri) -> impl IntoResponse {
    ApiError::not_found(uri.path())
}
