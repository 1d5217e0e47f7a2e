//! Connections: the accept loop in front of the router, where slow and idle clients are dealt
//! with before they can hold anything.
//!
//! - Headers have a deadline ([`Limits::header_timeout`], hyper's header read timeout): a client
//!   that trickles its request line and headers, or leaves a connection idle before its first or
//!   its next request, is closed once the deadline passes. Bodies have their own
//!   (`ServeConfig::body_timeout`, in [`crate::json`]).
//! - Open connections are capped ([`Limits::max_connections`]): past the cap a new connection is
//!   answered `503` with `Retry-After` and closed, so that file descriptors last and the clients
//!   already connected (`/health` among them) keep being served. The cap stays below what the
//!   process's limit on open files allows (its soft limit is raised to the hard one at start).
//! - Shutdown is graceful: no new connections; in-flight requests finish, idle connections close.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// What one client may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest a connection may take to send a request's line and headers, counted from
    /// when the server starts waiting for them (so an idle keep-alive connection is closed after
    /// it too).
    pub header_timeout: Duration,
    /// The most connections open at once.
    pub max_connections: usize,
}

/// What a connection past the cap is told before it is closed: [`ApiError::too_many_connections`]
/// written out by hand, since no HTTP connection is served for it.
fn over_capacity() -> &'static [u8] {
    static REPLY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    REPLY.get_or_init(|| {
        let error = ApiError::too_many_connections();
        let body = error.body().to_string();
        let retry = error
            .retry_after
            .map(|after| format!("Retry-After: {}\r\n", after.as_secs()))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 {}\r\nContent-Type: application/json\r\n{retry}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            error.status,
            body.len()
        )
        .into_bytes()
    })
}

/// File descriptors kept back from the connection cap: the model's files, logs, the listener,
/// and connections being told to come back.
const RESERVED_FDS: usize = 128;

/// Connections past the cap that may be waited on at once while they read their 503 (the rest
/// are closed at once).
const MAX_DRAINING: usize = 64;

/// Serves `app` on `listener` until `stop` resolves, then waits for open connections to finish
/// (the caller bounds that wait by its grace period).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) {
    let cap = connection_cap(limits.max_connections);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    let draining = Arc::new(Semaphore::new(MAX_DRAINING));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was taken: wait
                    // a moment rather than spin, and go on.
                    tracing::warn!("cannot accept a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        if open.load(Ordering::Acquire) >= cap {
            refuse(stream, &draining);
            metrics.connection_refused();
            continue;
        }
        metrics.connections_open(open.fetch_add(1, Ordering::AcqRel) + 1);
        let _ = stream.set_nodelay(true);
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        let (open, metrics) = (open.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("connection closed: {error}");
            }
            metrics.connections_open(open.fetch_sub(1, Ordering::AcqRel) - 1);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The cap on open connections: `wanted`, or less where the process may not open that many files.
/// The soft limit on open files is raised to the hard one first (it is often 1024, below what a
/// server needs; the hard limit is the system's decision).
fn connection_cap(wanted: usize) -> usize {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let room = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(RESERVED_FDS)
                .max(1);
            if wanted > room {
                tracing::warn!(
                    "max_connections {wanted} is more than {limit} open files allow; capping connections at {room}"
                );
                return room;
            }
        }
        Err(error) => tracing::warn!("cannot read the limit on open files: {error}"),
    }
    wanted.max(1)
}

/// Tells a connection past the cap to come back: the reply fits an empty socket buffer. What the
/// client already sent is read and dropped for up to a second before the connection closes
/// (closing with unread data would reset it, and the client could lose the reply), for at most
/// [`MAX_DRAINING`] connections at once; past that they are closed at once.
fn refuse(stream: TcpStream, draining: &Arc<Semaphore>) {
    let _ = stream.try_write(over_capacity());
    let Ok(permit) = draining.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut buffer = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(read) = stream.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
            }
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_capacity_reply_is_well_formed() {
        let text = std::str::from_utf8(over_capacity()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");
    }
}
