//! Prometheus metrics at `GET /metrics`: requests by endpoint and status, latency, time to first
//! token, queue time, tokens, queue depth, running sequences (the decode batch), parse failures.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use guardreasoner_engine::schedule::Load;
use guardreasoner_engine::Generation;

use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

/// The server's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
    time_to_first_token: Histogram,
    queue_time: Histogram,
    prompt_tokens: Counter,
    cached_prompt_tokens: Counter,
    generated_tokens: Counter,
    parse_failures: Counter,
    queue_depth: Gauge,
    running: Gauge,
    slots: Gauge,
    connections: Gauge,
    connections_refused: Counter,
}

fn seconds() -> Histogram {
    // 5 ms to about 10 minutes.
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("guardreasoner");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency =
            Family::<EndpointLabels, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        let metrics = Self {
            requests: requests.clone(),
            latency: latency.clone(),
            time_to_first_token: seconds(),
            queue_time: seconds(),
            prompt_tokens: Counter::default(),
            cached_prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            parse_failures: Counter::default(),
            queue_depth: Gauge::default(),
            running: Gauge::default(),
            slots: Gauge::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "HTTP requests by endpoint and status", requests);
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers (streams: to the first byte)",
            latency,
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from queueing a sequence to its first generated token",
            metrics.time_to_first_token.clone(),
        );
        registry.register(
            "queue_time_seconds",
            "Time a sequence waited for a slot",
            metrics.queue_time.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of finished sequences",
            metrics.prompt_tokens.clone(),
        );
        registry.register(
            "cached_prompt_tokens",
            "Prompt tokens reused from the shared-prefix cache",
            metrics.cached_prompt_tokens.clone(),
        );
        registry.register(
            "generated_tokens",
            "Tokens generated",
            metrics.generated_tokens.clone(),
        );
        registry.register(
            "parse_failures",
            "Guard outputs lacking an answer (decided by the policy, or an error)",
            metrics.parse_failures.clone(),
        );
        registry.register(
            "queue_depth",
            "Sequences waiting for a slot",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "running_sequences",
            "Sequences generating now: the decode batch",
            metrics.running.clone(),
        );
        registry.register(
            "slots",
            "The most sequences that run together",
            metrics.slots.clone(),
        );
        registry.register(
            "open_connections",
            "HTTP connections open when the last one was accepted",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections answered 503 and closed because the cap of open connections was reached",
            metrics.connections_refused.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Records how many connections are open.
    pub fn connections_open(&self, open: usize) {
        self.connections.set(open as i64);
    }

    /// Counts a connection refused at the cap.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Records one answered request.
    pub fn request(&self, endpoint: &str, status: u16, elapsed: Duration) {
        let endpoint = endpoint.to_string();
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// Records a finished sequence.
    pub fn generation(&self, generation: &Generation) {
        let timings = &generation.timings;
        self.queue_time.observe(timings.queue.as_secs_f64());
        self.time_to_first_token
            .observe((timings.queue + timings.prefill).as_secs_f64());
        self.prompt_tokens.inc_by(generation.prompt_tokens as u64);
        self.cached_prompt_tokens
            .inc_by(generation.cached_prompt_tokens as u64);
        self.generated_tokens
            .inc_by(generation.generated_tokens as u64);
    }

    /// Records a guard output that lacked an answer.
    pub fn parse_failure(&self) {
        self.parse_failures.inc();
    }

    /// The text exposition, with the scheduler's load as of now.
    pub fn render(&self, load: Option<Load>) -> String {
        if let Some(load) = load {
            self.queue_depth.set(load.queued as i64);
            self.running.set(load.running as i64);
            self.slots.set(load.slots as i64);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Times every request and counts it by its route and status.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .request(&endpoint, response.status().as_u16(), started.elapsed());
    response
}
