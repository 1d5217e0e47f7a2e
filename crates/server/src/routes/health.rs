//! `GET /health` (open, no key: 200 once the model is loaded, 503 before and while stopping) and
//! `GET /metrics` (Prometheus text).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::state::AppState;

/// `GET /health`.
pub async fn health(State(state): State<AppState>) -> Response {
    let stopping = state.stopping.load(Ordering::Acquire);
    match state.guard.get() {
        Some(guard) if !stopping => {
            let info = guard.scheduler().info();
            let load = guard.scheduler().load();
            Json(json!({
                "status": "ok",
                "model": state.config.model_name,
                "backend": info.backend,
                "device": info.device,
                "context_length": info.context_length,
                "continuous_batching": guard.scheduler().continuous(),
                "slots": load.slots,
                "running": load.running,
                "queued": load.queued,
            }))
            .into_response()
        }
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": if stopping { "stopping" } else { "loading" }})),
        )
            .into_response(),
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let load = state.guard.get().map(|g| g.scheduler().load());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(load),
    )
        .into_response()
}
