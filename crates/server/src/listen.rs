//! Connections: the accept loop in front of the router, where slow and idle clients are dealt
//! with before they can hold anything.
//!
//! - Headers have a deadline ([`Limits::header_timeout`], hyper's header read timeout): a client
//!   that trickles its request line and headers, or leaves a connection idle before its first or
//!   its next request, is closed once the deadline passes. Bodies have their own
//!   (`ServeConfig::body_timeout`, in [`crate::json`]).
//! - Open connections are capped ([`Limits::max_connections`]): past the cap a new connection is
//!   answered `503` with `Retry-After` and closed at once, so that file descriptors last and the
//!   clients already connected (`/health` among them) keep being served.
//! - Shutdown is graceful: no new connections; in-flight requests finish, idle connections close.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

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

/// The body a connection past the cap is told, in OpenAI's error shape.
const OVER_CAPACITY_BODY: &str = r#"{"error":{"message":"too many open connections; retry shortly","type":"server_error","param":null,"code":"too_many_connections"}}"#;

/// What a connection past the cap is told before it is closed.
fn over_capacity() -> &'static [u8] {
    static REPLY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    REPLY.get_or_init(|| {
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{OVER_CAPACITY_BODY}",
            OVER_CAPACITY_BODY.len()
        )
        .into_bytes()
    })
}

/// Serves `app` on `listener` until `stop` resolves, then waits for open connections to finish
/// (the caller bounds that wait by its grace period).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: std::sync::Arc<Metrics>,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
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
        metrics.connections_open(graceful.count());
        if graceful.count() >= limits.max_connections {
            refuse(stream);
            metrics.connection_refused();
            continue;
        }
        let _ = stream.set_nodelay(true);
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("connection closed: {error}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Tells a connection past the cap to come back, without waiting on it: the reply fits an empty
/// socket buffer, and whatever does not go out is dropped with the connection.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(over_capacity());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_capacity_reply_is_well_formed() {
        let text = std::str::from_utf8(over_capacity()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");
    }
}
