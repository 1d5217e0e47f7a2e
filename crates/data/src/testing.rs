//! A static file server on loopback for tests of the download path (feature `testing`).
//!
//! It serves a directory with HTTP range support, and can be told to corrupt files or ignore
//! ranges, so that tests exercise resume, verification and repair against real HTTP.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

/// How the test server behaves.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Paths answered with corrupted bytes.
    pub corrupt: HashSet<String>,
    /// Whether `Range` headers are honoured.
    pub ignore_ranges: bool,
    /// Every `Range` header received, with its path.
    pub ranges_seen: Vec<(String, String)>,
    /// Every path requested.
    pub requested: Vec<String>,
}

/// A static file server on 127.0.0.1 serving `root`, with range support. Returns its base URL.
pub fn serve(root: PathBuf, behaviour: Arc<Mutex<Behaviour>>) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind a loopback port");
    let base = format!(
        "http://{}",
        server.server_addr().to_ip().expect("an IP listener")
    );
    thread::spawn(move || {
        for request in server.incoming_requests() {
            let path = request.url().trim_start_matches('/').to_string();
            let range = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("Range"))
                .map(|h| h.value.as_str().to_string());
            let mut state = behaviour.lock().expect("test server state");
            state.requested.push(path.clone());
            let Ok(mut bytes) = fs::read(root.join(&path)) else {
                let _ = request.respond(tiny_http::Response::empty(404));
                continue;
            };
            if state.corrupt.contains(&path) {
                bytes[0] ^= 0xff;
            }
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            if let Some(range) = &range {
                state.ranges_seen.push((path.clone(), range.clone()));
            }
            let response = match start {
                Some(start) if !state.ignore_ranges && start < bytes.len() => {
                    let total = bytes.len();
                    let header = format!("Content-Range: bytes {start}-{}/{total}", total - 1);
                    tiny_http::Response::from_data(bytes[start..].to_vec())
                        .with_status_code(206)
                        .with_header(header.parse::<tiny_http::Header>().expect("a valid header"))
                }
                _ => tiny_http::Response::from_data(bytes),
            };
            drop(state);
            let _ = request.respond(response);
        }
    });
    base
}
