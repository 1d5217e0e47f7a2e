//! Serving guard models over HTTP, on axum and tokio.
//!
//! - [`routes`]: the endpoints: native `/v1/guard`, OpenAI's `/v1/moderations`,
//!   `/v1/chat/completions`, `/v1/completions` and `/v1/models`, LiteLLM's
//!   `/beta/litellm_basic_guardrail_api`, `/health` and `/metrics`.
//! - [`checks`]: conversations in, verdicts out, shared by the guard endpoints; validation,
//!   queueing and scheduling are the engine's ([`guardreasoner_engine::schedule`]).
//! - [`error`]: every error in OpenAI's shape; [`json`]: request bodies read with errors that
//!   name the field.
//! - [`auth`], [`metrics`], [`memory`] (LiteLLM prompts kept for their response checks),
//!   [`config`], [`state`].
//!
//! [`serve`] binds first (so `/health` answers 503 while the model loads), loads the model on a
//! blocking thread, then serves until SIGTERM or ctrl-c, and finishes in-flight requests up to a
//! grace period.

// Every public item says what it is for; keep it so.
#![deny(missing_docs)]

pub mod auth;
pub mod checks;
pub mod config;
pub mod error;
mod ids;
pub mod json;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod routes;
pub mod state;

use std::sync::atomic::Ordering;

use guardreasoner_engine::load::{self, LoadOptions};
use guardreasoner_guard::{GuardConfig, GuardHandle, InputFormat};
use tokio::net::TcpListener;

pub use config::ServeConfig;
pub use routes::router;
pub use state::AppState;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The model did not load.
    #[error("cannot load the model")]
    Load(#[source] guardreasoner_engine::EngineError),
    /// The guard renders prompts in the model's own chat template, and the model has none.
    #[error(
        "the guard's input format is model-chat, and the model's files carry no chat template"
    )]
    NoChatTemplate,
    /// The server failed while running.
    #[error("the server failed: {0}")]
    Io(#[source] std::io::Error),
}

/// A bound listener and the state it will serve.
pub struct Server {
    listener: TcpListener,
    state: AppState,
}

impl Server {
    /// Binds `config.addr` (port 0 picks a free one).
    pub async fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        let addr = config.addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self {
            listener,
            state: AppState::new(config),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().unwrap_or(self.state.config.addr)
    }

    /// The state handlers share.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Loads the model (on a blocking thread, while `/health` says `loading`), then serves until
    /// `shutdown` resolves; in-flight requests then have the configured grace period to finish.
    pub async fn run(
        self,
        load: LoadOptions,
        guard: GuardConfig,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Self { listener, state } = self;
        let app = router(state.clone());
        let grace = state.config.shutdown_grace;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        {
            let (stop_tx, stopping) = (stop_tx.clone(), state.stopping.clone());
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutting down: no new requests; in-flight ones have {grace:?}");
                stopping.store(true, Ordering::Release);
                let _ = stop_tx.send(true);
            });
        }
        let serving = {
            let stop_rx = stop_rx.clone();
            let limits = listen::Limits {
                header_timeout: state.config.header_timeout,
                max_connections: state.config.max_connections,
            };
            let metrics = state.metrics.clone();
            tokio::spawn(async move {
                listen::serve(listener, app, limits, metrics, stopped(stop_rx)).await;
            })
        };
        let loader = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                let scheduler = load::scheduler(&load).map_err(ServeError::Load)?;
                if guard.format == InputFormat::ModelChat && scheduler.chat_template().is_none() {
                    return Err(ServeError::NoChatTemplate);
                }
                let continuous = scheduler.continuous();
                let info = scheduler.info().clone();
                for note in load::ignored(&load, &info) {
                    tracing::warn!("{note}");
                }
                let _ = state.guard.set(GuardHandle::new(scheduler, guard));
                Ok::<_, ServeError>((info, continuous))
            })
        };
        let loaded = tokio::select! {
            loaded = loader => Some(loaded),
            () = stopped(stop_rx.clone()) => None,
        };
        match loaded {
            Some(Ok(Ok((info, continuous)))) => {
                tracing::info!(
                    backend = info.backend,
                    device = info.device,
                    slots = info.max_batch,
                    context = info.context_length,
                    "model loaded from {}",
                    info.source
                );
                if !continuous {
                    tracing::warn!(
                        "the {} backend runs one sequence at a time: requests queue behind each other (llama.cpp batches continuously)",
                        info.backend
                    );
                }
            }
            // Stopped while loading.
            None => {}
            Some(Ok(Err(error))) => {
                let _ = stop_tx.send(true);
                return Err(error);
            }
            Some(Err(join)) => {
                let _ = stop_tx.send(true);
                return Err(ServeError::Io(std::io::Error::other(join.to_string())));
            }
        }
        stopped(stop_rx).await;
        match tokio::time::timeout(grace, serving).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(join)) => Err(ServeError::Io(std::io::Error::other(join.to_string()))),
            Err(_) => {
                tracing::warn!("in-flight requests outlived the grace period; stopping anyway");
                Ok(())
            }
        }
    }
}

async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
