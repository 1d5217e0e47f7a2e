//! API keys: accepted as `Authorization: Bearer KEY` (OpenAI clients) and as `x-api-key: KEY`
//! (LiteLLM's guardrail hooks). Both sides are hashed with SHA-256 and the digests compared in
//! constant time, so neither the key's content nor its length leaks through timing.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The digests of the accepted keys.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    digests: Vec<[u8; 32]>,
}

impl Keys {
    /// Keys to accept; none means every request is let in.
    pub fn new(keys: &[String]) -> Self {
        Self {
            digests: keys.iter().map(|k| digest(k.as_bytes())).collect(),
        }
    }

    /// Whether keys are required.
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `headers` carry an accepted key.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        if !self.required() {
            return true;
        }
        let offered = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        let Some(offered) = offered else {
            return false;
        };
        let offered = digest(offered.trim().as_bytes());
        // Every key is compared, whichever matches, so the time does not say which one did.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.ct_eq(&offered)
            })
            .into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lets a request through with an accepted key; 401 otherwise.
pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.keys.admits(request.headers()) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        map
    }

    #[test]
    fn both_headers_carry_a_key_and_nothing_else_does() {
        let keys = Keys::new(&["secret".into(), "other".into()]);
        assert!(keys.admits(&headers("authorization", "Bearer secret")));
        assert!(keys.admits(&headers("x-api-key", "other")));
        assert!(!keys.admits(&headers("authorization", "Bearer secrets")));
        assert!(!keys.admits(&headers("authorization", "secret")));
        assert!(!keys.admits(&headers("x-api-key", "")));
        assert!(!keys.admits(&HeaderMap::new()));
        assert!(Keys::new(&[]).admits(&HeaderMap::new()));
    }
}
