//! A server on loopback over the real-weights test model, and a small HTTP/1.1 client that can
//! also misbehave (send what it likes, hang up mid-answer).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use guardreasoner_engine::load::LoadOptions;
use guardreasoner_engine::model::{models_dir, SMOLLM2_135M};
use guardreasoner_guard::GuardConfig;
use guardreasoner_server::{ServeConfig, ServeError, Server};
use serde_json::Value;

/// SmolLM2-135M-Instruct (Q4_1 GGUF), or `None` where it is absent (and not required).
pub fn smollm2() -> Option<PathBuf> {
    guardreasoner_test_support::test_model(models_dir().join(SMOLLM2_135M.cache_path))
}

/// The key the test servers require.
pub const KEY: &str = "sk-test-key";

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<(), ServeError>>>,
}

/// Settings for a test server: `slots` sequences, `queue` waiting, short answers.
pub struct Setup {
    pub slots: usize,
    pub queue: usize,
    pub context: usize,
    pub max_new_tokens: usize,
    pub config: ServeConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            slots: 2,
            queue: 8,
            context: 1024,
            max_new_tokens: 24,
            config: ServeConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                api_keys: vec![KEY.into()],
                model_name: "smollm2-test".into(),
                max_new_tokens: 24,
                shutdown_grace: Duration::from_secs(20),
                ..ServeConfig::default()
            },
        }
    }
}

impl TestServer {
    /// Starts a server on the test model and waits until `/health` says it is ready; `None`
    /// where the model is absent.
    pub fn start(setup: Setup) -> Option<Self> {
        let model = smollm2()?;
        let load = LoadOptions {
            model: model.display().to_string(),
            context: setup.context,
            batch_size: setup.slots,
            queue_capacity: setup.queue,
            threads: Some(2),
            ..LoadOptions::default()
        };
        let mut guard = GuardConfig::default();
        guard.params.max_new_tokens = setup.max_new_tokens;
        let config = ServeConfig {
            max_new_tokens: setup.max_new_tokens,
            ..setup.config
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let server = Server::bind(config).await?;
                bound.send(server.local_addr()).unwrap();
                server
                    .run(load, guard, async move {
                        let _ = stopped.await;
                    })
                    .await
            })
        });
        let addr = addr.recv_timeout(Duration::from_secs(30)).unwrap();
        let server = Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(addr, "/health").status != 200 {
            assert!(Instant::now() < deadline, "the model did not load");
            thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// Sends the shutdown signal and waits for the server to stop.
    pub fn stop(mut self) -> Result<(), ServeError> {
        self.stop.take().map(|s| s.send(()));
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent-events body, with their `event:` names.
    pub fn events(&self) -> Vec<(String, String)> {
        let mut events = Vec::new();
        let mut name = String::from("message");
        for line in self.body.lines() {
            if let Some(value) = line.strip_prefix("event: ") {
                name = value.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                events.push((name.clone(), data.to_string()));
                name = String::from("message");
            }
        }
        events
    }
}

/// Writes a request (the body as given, its length declared) and returns the open stream.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before reading a large body.
    let _ = stream.write_all(body);
    stream
}

/// Reads a whole answer (chunked or not).
pub fn read_reply(stream: TcpStream) -> Reply {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line: {status_line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    read_reply(send(addr, method, path, headers, body))
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[("x-api-key", KEY)], b"")
}

/// POSTs JSON with the test key (as a bearer token).
pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    let bearer = format!("Bearer {KEY}");
    request(
        addr,
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("authorization", &bearer),
        ],
        body.to_string().as_bytes(),
    )
}

/// The value of a metric line `name{labels} value` in `/metrics`, summed over label sets that
/// contain every one of `labels`.
pub fn metric(addr: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let text = get(addr, "/metrics").body;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls until `check` holds, failing after `limit`.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}
