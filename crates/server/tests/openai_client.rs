//! The official `openai` Python client (PyPI, pinned by scripts/setup-test-clients) calls
//! `/v1/moderations`, `/v1/chat/completions` (plain and streaming), `/v1/completions` and
//! `/v1/models`, and parses every answer into its own types.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Setup, TestServer, KEY};

/// The python that has the client, from `GUARDREASONER_TEST_PYTHON`; absent, the test skips, or
/// fails where the test command requires the test tools.
fn client_python() -> Option<PathBuf> {
    let path = std::env::var_os("GUARDREASONER_TEST_PYTHON").map(PathBuf::from);
    match path {
        Some(path) if path.is_file() => Some(path),
        _ if std::env::var_os(guardreasoner_test_support::REQUIRE_TEST_MODEL).is_some() => {
            panic!("GUARDREASONER_TEST_PYTHON names no python (run scripts/setup-test-clients), and the test command requires it")
        }
        _ => {
            eprintln!(
                "skipped: set GUARDREASONER_TEST_PYTHON to scripts/setup-test-clients' python"
            );
            None
        }
    }
}

#[test]
fn the_openai_python_client_reads_every_answer() {
    let Some(python) = client_python() else {
        return;
    };
    let Some(server) = TestServer::start(Setup::default()) else {
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let output = Command::new(python)
        .arg(script)
        .arg(format!("http://{}/v1", server.addr))
        .arg(KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("ok 3."), "{stdout}");
}
