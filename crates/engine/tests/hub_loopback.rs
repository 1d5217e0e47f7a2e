//! Downloading a model directory through `hf-hub` from a loopback server that speaks the Hub's
//! file protocol, then loading it: on candle as it is, and on llama.cpp through a GGUF converted
//! once into the models cache.
#![cfg(feature = "candle")]

mod common;

use std::path::PathBuf;
use std::thread;

use guardreasoner_engine::backends::candle::{CandleEngine, CandleOptions};

/// Serves `root/<file>` at `/<repo>/resolve/main/<file>` with the headers hf-hub reads (commit,
/// etag, content range), and byte ranges; the files in `broken` answer 500.
fn serve_hub(root: PathBuf, repo: &'static str, broken: &'static [&'static str]) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let base = format!("http://{}", server.server_addr().to_ip().unwrap());
    thread::spawn(move || {
        for request in server.incoming_requests() {
            let prefix = format!("/{repo}/resolve/main/");
            let Some(file) = request.url().strip_prefix(&prefix).map(String::from) else {
                let _ = request.respond(tiny_http::Response::empty(404));
                continue;
            };
            if broken.contains(&file.as_str()) {
                let _ = request.respond(tiny_http::Response::empty(500));
                continue;
            }
            let Ok(bytes) = std::fs::read(root.join(&file)) else {
                let _ = request.respond(tiny_http::Response::empty(404));
                continue;
            };
            let range = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("Range"))
                .and_then(|h| h.value.as_str().strip_prefix("bytes=").map(String::from));
            let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                Some((a, b)) => (
                    a.parse().unwrap_or(0),
                    b.parse().unwrap_or(bytes.len() - 1).min(bytes.len() - 1),
                ),
                None => (0, bytes.len() - 1),
            };
            let header = |name: &str, value: String| {
                format!("{name}: {value}")
                    .parse::<tiny_http::Header>()
                    .unwrap()
            };
            let etag = format!("\"{:x}\"", bytes.len() * 31 + file.len());
            let response = tiny_http::Response::from_data(bytes[start..=end].to_vec())
                .with_status_code(if range.is_some() { 206 } else { 200 })
                .with_header(header("ETag", etag))
                .with_header(header(
                    "X-Repo-Commit",
                    "0123456789abcdef0123456789abcdef01234567".into(),
                ))
                .with_header(header(
                    "Content-Range",
                    format!("bytes {start}-{end}/{}", bytes.len()),
                ));
            let _ = request.respond(response);
        }
    });
    base
}

#[test]
fn a_repo_id_downloads_into_the_hf_cache_and_loads() {
    let repo_dir = tempfile::tempdir().unwrap();
    if common::write_convert_model(repo_dir.path(), "tiny-llama3", None).is_none() {
        return;
    }
    // The chat template on its own, as transformers 4.43 and later save it.
    let template = "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}";
    std::fs::write(repo_dir.path().join("chat_template.jinja"), template).unwrap();
    let base = serve_hub(repo_dir.path().to_path_buf(), "test-org/tiny-llama3", &[]);
    let broken = serve_hub(
        repo_dir.path().to_path_buf(),
        "test-org/tiny-llama3",
        &["chat_template.jinja"],
    );
    let hf_home = tempfile::tempdir().unwrap();
    // This test binary holds only this test, so setting the process environment is safe.
    std::env::set_var("HF_ENDPOINT", &base);
    std::env::set_var("HF_HOME", hf_home.path());
    std::env::remove_var("HF_TOKEN");

    let snapshot = guardreasoner_engine::hub::download("test-org/tiny-llama3").unwrap();
    assert!(
        snapshot.starts_with(hf_home.path().join("hub/models--test-org--tiny-llama3")),
        "{}",
        snapshot.display()
    );
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(snapshot.join(file)).unwrap(),
            std::fs::read(repo_dir.path().join(file)).unwrap(),
            "{file}"
        );
    }
    let engine = CandleEngine::load_dir(
        &snapshot,
        CandleOptions {
            context_per_sequence: 256,
            ..CandleOptions::default()
        },
    )
    .unwrap();
    assert_eq!(engine.model().config.num_kv_heads, 2);
    // tokenizer_config.json has no template; candle takes chat_template.jinja, as transformers.
    use guardreasoner_engine::Generate;
    assert!(
        engine.chat_template().is_some(),
        "chat_template.jinja is read"
    );
    drop(engine);

    // With the default backend the repo runs on llama.cpp: converted to Q8_0 once, into the
    // models cache, and reused after.
    #[cfg(feature = "llama-cpp")]
    runs_on_llama_cpp_through_a_cached_conversion(template);

    // An optional file the repository has but cannot serve is an error naming it, not a model
    // quietly without its chat template (a file it lacks, 404, is skipped, as above).
    std::env::set_var("HF_ENDPOINT", &broken);
    let other_home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", other_home.path());
    let error = guardreasoner_engine::hub::download("test-org/tiny-llama3")
        .unwrap_err()
        .to_string();
    assert!(error.contains("chat_template.jinja"), "{error}");
    std::env::set_var("HF_ENDPOINT", &base);
    std::env::set_var("HF_HOME", hf_home.path());

    // A repo the server does not have is an error naming it.
    let error = guardreasoner_engine::hub::download("test-org/absent")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("test-org/absent") && error.contains("config.json"),
        "{error}"
    );
}

#[cfg(feature = "llama-cpp")]
fn runs_on_llama_cpp_through_a_cached_conversion(template: &str) {
    let models = tempfile::tempdir().unwrap();
    std::env::set_var(guardreasoner_engine::model::MODELS_DIR_ENV, models.path());
    let options = guardreasoner_engine::load::LoadOptions {
        model: "test-org/tiny-llama3".into(),
        context: 256,
        batch_size: 1,
        device: guardreasoner_engine::DeviceSpec::Cpu,
        ..Default::default()
    };
    let engine = guardreasoner_engine::load::generator(&options).unwrap();
    assert_eq!(engine.info().backend, "llama.cpp");
    drop(engine);
    let converted: Vec<PathBuf> =
        std::fs::read_dir(models.path().join("converted/test-org-tiny-llama3"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
    assert_eq!(converted.len(), 1, "{converted:?}");
    assert!(converted[0].to_string_lossy().ends_with(".q8_0.gguf"));
    let mut file = std::fs::File::open(&converted[0]).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    assert_eq!(
        content.metadata["tokenizer.chat_template"]
            .to_string()
            .unwrap(),
        template,
        "the downloaded chat_template.jinja reaches the GGUF"
    );
    assert_eq!(
        content.metadata["general.name"].to_string().unwrap(),
        "Tiny Llama3",
        "named after the repo, not the snapshot's commit directory"
    );
    let written = std::fs::metadata(&converted[0])
        .unwrap()
        .modified()
        .unwrap();
    let engine = guardreasoner_engine::load::generator(&options).unwrap();
    assert_eq!(engine.info().backend, "llama.cpp");
    assert_eq!(
        std::fs::metadata(&converted[0])
            .unwrap()
            .modified()
            .unwrap(),
        written,
        "the second load reuses the conversion"
    );
}
