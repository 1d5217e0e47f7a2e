//! What every handler shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use guardreasoner_guard::GuardHandle;

use crate::auth::Keys;
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::memory::PromptMemory;
use crate::metrics::Metrics;

/// The server's shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The guard, once the model has loaded.
    pub guard: Arc<OnceLock<GuardHandle>>,
    /// The settings.
    pub config: Arc<ServeConfig>,
    /// Accepted API keys.
    pub keys: Arc<Keys>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// LiteLLM prompts, kept for their response checks.
    pub memory: Arc<PromptMemory>,
    /// When the server started (Unix seconds), for `created` fields.
    pub created: u64,
    /// Set once shutdown has begun: new work is refused.
    pub stopping: Arc<AtomicBool>,
}

impl AppState {
    /// State for `config`, with the model not loaded yet.
    pub fn new(config: ServeConfig) -> Self {
        Self {
            guard: Arc::new(OnceLock::new()),
            keys: Arc::new(Keys::new(&config.api_keys)),
            memory: Arc::new(PromptMemory::new(
                config.litellm_memory,
                config.litellm_memory_entries,
            )),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The guard, or 503 while the model loads or the server stops.
    pub fn guard(&self) -> Result<&GuardHandle, ApiError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        self.guard
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }
}
