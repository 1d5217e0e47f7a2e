//! `guardreasoner serve` as a process: settings from a TOML file and flags (a flag wins), a key
//! from a file, `/health` while loading and once loaded, a check, then SIGTERM: it stops and
//! exits cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn request(addr: &str, line: &str, headers: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "{line} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, reply)
}

#[test]
fn serve_reads_its_file_and_flags_and_stops_on_sigterm() {
    let Some(model) = guardreasoner_test_support::test_model(
        guardreasoner_engine::model::models_dir()
            .join(guardreasoner_engine::model::SMOLLM2_135M.cache_path),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# the test's key\nsk-file-key\n").unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "addr = \"127.0.0.1:1\"\napi_key_file = {keys:?}\nmodel_name = \"from-the-file\"\nmax_new_tokens = 8\n\n[model]\nmodel = {model:?}\nparallel = 2\ncontext = 1024\nstep_tokens = 64\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args(["serve", "--config", config.to_str().unwrap()])
        // The flag wins over the file's unusable port.
        .args(["--addr", "127.0.0.1:0", "--threads", "2"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while addr.is_none() && Instant::now() < deadline {
        let mut line = String::new();
        if log.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no address in the log:\n{seen}"));
    assert!(seen.contains("API key required"), "{seen}");
    // Keep reading the log, so that the server never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = log.read_to_string(&mut rest);
        rest
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while request(&addr, "GET /health", "", "").0 != 200 {
        assert!(Instant::now() < deadline, "the model did not load");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = request(&addr, "GET /v1/models", "", "");
    assert_eq!(status, 401);
    let (status, reply) = request(
        &addr,
        "POST /v1/guard",
        "x-api-key: sk-file-key\r\n",
        "{\"prompt\": \"How do I bake bread?\"}",
    );
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("\"model\":\"from-the-file\""), "{reply}");
    assert!(reply.contains("\"completion_tokens\":"), "{reply}");

    // SIGTERM: a clean stop.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let rest = reader.join().unwrap();
    assert!(status.success(), "exit {status}:\n{rest}");
    assert!(rest.contains("stopped"), "{rest}");
}
