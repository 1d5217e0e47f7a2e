//! How the server runs: flags, environment and a TOML file, merged in that order of precedence
//! (a flag wins over the file; clap reads the environment into the flags). Request bodies are
//! never logged: they are users' conversations.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The server's settings (the model's loading options live beside them, in the engine's
/// `LoadOptions`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Where to listen; loopback unless told otherwise.
    pub addr: SocketAddr,
    /// Accepted API keys; none means no authentication.
    pub api_keys: Vec<String>,
    /// The model's name in answers and `/v1/models`.
    pub model_name: String,
    /// The default and the largest `max_new_tokens` one sequence may ask for.
    pub max_new_tokens: usize,
    /// The largest request body, in bytes (larger: 413).
    pub body_limit: usize,
    /// The longest one request may take before it is cancelled (504).
    pub request_timeout: Duration,
    /// The longest a client may take to send a request's headers, and the longest a connection
    /// may sit idle before its next request; then it is closed.
    pub header_timeout: Duration,
    /// The longest a client may take to send a request's body (408 after it).
    pub body_timeout: Duration,
    /// The most connections open at once; past it a new one gets 503 and is closed.
    pub max_connections: usize,
    /// On SIGTERM or ctrl-c: how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// The most conversations one request may carry.
    pub max_items: usize,
    /// How long a LiteLLM request's prompt is remembered for its response check.
    pub litellm_memory: Duration,
    /// The most prompts remembered at once (the oldest go first).
    pub litellm_memory_entries: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_keys: Vec::new(),
            model_name: "guardreasoner".into(),
            max_new_tokens: guardreasoner_engine::generate::DEFAULT_MAX_NEW_TOKENS,
            body_limit: 1 << 20,
            request_timeout: Duration::from_secs(600),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(30),
            max_items: 64,
            litellm_memory: Duration::from_secs(600),
            litellm_memory_entries: 10_000,
        }
    }
}

/// The `[server]` table of a `serve.toml`; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `addr = "127.0.0.1:8080"`.
    pub addr: Option<SocketAddr>,
    /// `api_keys = ["..."]`.
    pub api_keys: Option<Vec<String>>,
    /// `api_key_file = "/run/secrets/guard-key"`: one key per line.
    pub api_key_file: Option<std::path::PathBuf>,
    /// `model_name = "guardreasoner-1b"`.
    pub model_name: Option<String>,
    /// `max_new_tokens = 2048`.
    pub max_new_tokens: Option<usize>,
    /// `body_limit_bytes = 1048576`.
    pub body_limit_bytes: Option<usize>,
    /// `request_timeout_s = 600`.
    pub request_timeout_s: Option<f64>,
    /// `header_timeout_s = 30`.
    pub header_timeout_s: Option<f64>,
    /// `body_timeout_s = 60`.
    pub body_timeout_s: Option<f64>,
    /// `max_connections = 1024`.
    pub max_connections: Option<usize>,
    /// `shutdown_grace_s = 30`.
    pub shutdown_grace_s: Option<f64>,
    /// `max_items = 64`.
    pub max_items: Option<usize>,
    /// `litellm_memory_s = 600`.
    pub litellm_memory_s: Option<f64>,
    /// The model's loading options: `model`, `backend`, `context`, `parallel`, `queue`, ...
    #[serde(default)]
    pub model: ModelFileConfig,
}

/// The `[model]` table of a `serve.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFileConfig {
    /// What `--model` takes.
    pub model: Option<String>,
    /// `auto`, `llama-cpp`, `candle` or `openai`.
    pub backend: Option<guardreasoner_engine::load::Backend>,
    /// Tokens per sequence.
    pub context: Option<usize>,
    /// Sequences decoded together.
    pub parallel: Option<usize>,
    /// Requests that may wait.
    pub queue: Option<usize>,
    /// CPU threads.
    pub threads: Option<usize>,
    /// `auto`, `cpu`, `cuda:N`.
    pub device: Option<guardreasoner_engine::DeviceSpec>,
    /// llama.cpp: tokens per decode step.
    pub step_tokens: Option<usize>,
}

/// Reads a `serve.toml`, naming the file and the key at fault.
pub fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads API keys from a file: one per line, blank lines and `#` comments skipped.
pub fn read_key_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the API key file: {e}", path.display()))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        return Err(format!("{}: the API key file holds no key", path.display()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_an_unknown_key_names_it() {
        let dir = std::env::temp_dir().join(format!("serve-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serve.toml");
        std::fs::write(&path, "addr = \"127.0.0.1:9000\"\nmax_new_token = 5\n").unwrap();
        let error = read_file(&path).unwrap_err();
        assert!(error.contains("max_new_token"), "{error}");
        std::fs::write(
            &path,
            "addr = \"127.0.0.1:9000\"\n[model]\nparallel = 8\nmodel = \"smollm2-135m\"\n",
        )
        .unwrap();
        let file = read_file(&path).unwrap();
        assert_eq!(file.addr.unwrap().port(), 9000);
        assert_eq!(file.model.parallel, Some(8));
        // Choices are typed: a wrong one is an error naming the key and the choices.
        std::fs::write(
            &path,
            "[model]\nbackend = \"candle\"\ndevice = \"cuda:1\"\n",
        )
        .unwrap();
        let file = read_file(&path).unwrap();
        assert_eq!(
            file.model.backend,
            Some(guardreasoner_engine::load::Backend::Candle)
        );
        assert_eq!(
            file.model.device,
            Some(guardreasoner_engine::DeviceSpec::Cuda(1))
        );
        std::fs::write(&path, "[model]\nbackend = \"vllm\"\n").unwrap();
        let error = read_file(&path).unwrap_err();
        assert!(
            error.contains("backend")
                && error.contains("expected auto, llama-cpp, candle or openai"),
            "{error}"
        );
        std::fs::write(&path, "# keys\nabc\n\n def \n").unwrap();
        assert_eq!(read_key_file(&path).unwrap(), vec!["abc", "def"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
