//! `guardreasoner serve`: the guard as an HTTP service (crates/server does the work). Settings
//! come from flags (which clap also reads from the environment), then a TOML file, then defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use guardreasoner_guard::UnparseablePolicy;
use guardreasoner_server::config::{read_file, read_key_file, FileConfig};
use guardreasoner_server::{ServeConfig, Server};

use super::model_args::{GenerationArgs, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    generation: GenerationArgs,
    /// Where to listen (default 127.0.0.1:8080: loopback unless told otherwise).
    #[arg(long, env = "GUARDREASONER_ADDR")]
    addr: Option<SocketAddr>,
    /// An API key clients must send (`Authorization: Bearer KEY` or `x-api-key: KEY`).
    #[arg(long, env = "GUARDREASONER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A file of API keys, one per line.
    #[arg(long, env = "GUARDREASONER_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Sequences decoded together (the llama.cpp slots); overrides --batch-size.
    #[arg(long)]
    parallel: Option<usize>,
    /// Requests that may wait for a slot; more are refused at once (429, or 503 for LiteLLM).
    #[arg(long)]
    queue: Option<usize>,
    /// The model's name in answers and /v1/models (default: --model).
    #[arg(long)]
    model_name: Option<String>,
    /// The longest a request may take before it is cancelled, in seconds.
    #[arg(long)]
    request_timeout: Option<f64>,
    /// The longest a client may take to send its headers, or leave a connection idle, in
    /// seconds; then the connection is closed (default 30).
    #[arg(long)]
    header_timeout: Option<f64>,
    /// The longest a client may take to send a request body, in seconds (408; default 60).
    #[arg(long)]
    body_timeout: Option<f64>,
    /// The most connections open at once; past it a new one gets 503 and is closed (default
    /// 1024).
    #[arg(long)]
    max_connections: Option<usize>,
    /// A TOML file of settings (`docs/serving.md` lists the keys); flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// When a guard output lacks an answer: `error`, `fail-closed` (block) or `fail-open`.
    #[arg(long, default_value_t = UnparseablePolicy::FailClosed)]
    policy: UnparseablePolicy,
    /// Log JSON lines instead of plain text (RUST_LOG filters either).
    #[arg(long)]
    log_json: bool,
}

/// Whether `--flag` was given on the command line (so that it wins over the file).
fn given(flag: &str) -> bool {
    std::env::args().any(|arg| arg == flag || arg.starts_with(&format!("{flag}=")))
}

fn seconds(value: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{what}: {value} is not a duration"))
}

pub fn run(mut args: Args) -> Result<()> {
    init_logs(args.log_json);
    let file = match &args.config {
        Some(path) => read_file(path).map_err(anyhow::Error::msg)?,
        None => FileConfig::default(),
    };
    // The model's options: the file's [model] table where no flag was given.
    let model_file = &file.model;
    if let Some(model) = model_file.model.clone().filter(|_| !given("--model")) {
        args.model.model = model;
    }
    if let Some(context) = model_file.context.filter(|_| !given("--context")) {
        args.model.context = context;
    }
    if let Some(steps) = model_file.step_tokens.filter(|_| !given("--step-tokens")) {
        anyhow::ensure!(steps > 0, "[model] step_tokens: must be at least 1");
        args.model.step_tokens = steps;
    }
    if let Some(threads) = model_file.threads.filter(|_| !given("--threads")) {
        args.model.threads = Some(threads);
    }
    if let Some(device) = model_file.device.filter(|_| !given("--device")) {
        args.model.device = device;
    }
    let mut load = args.model.load_options();
    if let Some(backend) = model_file.backend.filter(|_| !given("--backend")) {
        load.backend = backend;
    }
    if let Some(parallel) = args.parallel.or(model_file.parallel) {
        load.batch_size = parallel.max(1);
    }
    if let Some(queue) = args.queue.or(model_file.queue) {
        load.queue_capacity = queue.max(1);
    }
    super::model_args::check_load_options(&load)?;

    let mut config = ServeConfig {
        model_name: args
            .model_name
            .clone()
            .or(file.model_name.clone())
            .unwrap_or_else(|| {
                std::path::Path::new(&load.model)
                    .file_stem()
                    .map_or(load.model.clone(), |s| s.to_string_lossy().into_owned())
            }),
        ..ServeConfig::default()
    };
    if let Some(addr) = args.addr.or(file.addr) {
        config.addr = addr;
    }
    let mut keys: Vec<String> = args.api_key.clone().into_iter().collect();
    for path in args.api_key_file.iter().chain(file.api_key_file.iter()) {
        keys.extend(read_key_file(path).map_err(anyhow::Error::msg)?);
    }
    keys.extend(file.api_keys.clone().unwrap_or_default());
    config.api_keys = keys;
    config.max_new_tokens = if given("--max-new-tokens") {
        args.generation.max_new_tokens
    } else {
        file.max_new_tokens
            .unwrap_or(args.generation.max_new_tokens)
    };
    if let Some(limit) = file.body_limit_bytes {
        config.body_limit = limit;
    }
    if let Some(timeout) = args.request_timeout.or(file.request_timeout_s) {
        config.request_timeout = seconds(timeout, "request timeout")?;
    }
    if let Some(timeout) = args.header_timeout.or(file.header_timeout_s) {
        config.header_timeout = seconds(timeout, "header timeout")?;
        anyhow::ensure!(
            !config.header_timeout.is_zero(),
            "header timeout: must be above 0"
        );
    }
    if let Some(timeout) = args.body_timeout.or(file.body_timeout_s) {
        config.body_timeout = seconds(timeout, "body timeout")?;
        anyhow::ensure!(
            !config.body_timeout.is_zero(),
            "body timeout: must be above 0"
        );
    }
    if let Some(connections) = args.max_connections.or(file.max_connections) {
        config.max_connections = connections.max(1);
    }
    if let Some(grace) = file.shutdown_grace_s {
        config.shutdown_grace = seconds(grace, "shutdown_grace_s")?;
    }
    if let Some(items) = file.max_items {
        config.max_items = items.max(1);
    }
    if let Some(memory) = file.litellm_memory_s {
        config.litellm_memory = seconds(memory, "litellm_memory_s")?;
    }
    let mut guard = args.generation.guard_config(args.policy);
    guard.params.max_new_tokens = config.max_new_tokens;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        let addr = server.local_addr();
        let auth = if server.state().keys.required() {
            "API key required"
        } else {
            "no API key (set --api-key to require one)"
        };
        tracing::info!(
            "listening on http://{addr} ({auth}); loading {}",
            load.model
        );
        server
            .run(load, guard, guardreasoner_server::shutdown_signal())
            .await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn init_logs(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
