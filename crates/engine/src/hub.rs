//! Downloading a model from the Hugging Face Hub with the `hf-hub` crate, into its usual cache
//! (`$HF_HOME/hub`, else `~/.cache/huggingface/hub`; `$HF_ENDPOINT` for a mirror; `$HF_TOKEN` for
//! gated repositories such as Llama's).

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;

use crate::error::EngineError;

fn hub_error(
    repo: &str,
    file: &str,
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> EngineError {
    EngineError::download(
        format!("downloading {file} of {repo} from the Hugging Face Hub"),
        error,
    )
}

/// Files a model directory may have beside `config.json`, `tokenizer.json` and the weights:
/// end-of-generation ids and sampling defaults, the special tokens and the chat template (in
/// `tokenizer_config.json`, or on its own in `chat_template.jinja`, as newer transformers versions
/// save it).
pub const OPTIONAL_FILES: [&str; 4] = [
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Whether the Hub answered that the file is not in the repository (404). hf-hub's HTTP client
/// is a ureq of its own version, so its status is read from the error's text
/// (`<url>: status code 404`).
fn is_not_found(error: &hf_hub::api::sync::ApiError) -> bool {
    matches!(error, hf_hub::api::sync::ApiError::RequestError(e) if e.to_string().ends_with("status code 404"))
}

/// Downloads what a Llama model directory needs (`config.json`, `tokenizer.json`, the
/// safetensors weights, sharded or not, and each of [`OPTIONAL_FILES`] the repository has) and
/// returns the snapshot directory that holds them.
pub fn download(repo: &str) -> Result<PathBuf, EngineError> {
    let mut builder = ApiBuilder::from_env().with_progress(true);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .map_err(|e| hub_error(repo, "(connecting)", e))?;
    let model = api.model(repo.to_string());
    let get = |file: &str| model.get(file).map_err(|e| hub_error(repo, file, e));

    let config = get("config.json")?;
    get("tokenizer.json")?;
    for file in OPTIONAL_FILES {
        // Absent from many repositories, which is fine; any other failure (a 5xx, a timeout, a
        // refused token) would leave the model without its chat template or special tokens.
        if let Err(error) = model.get(file) {
            if !is_not_found(&error) {
                return Err(hub_error(repo, file, error));
            }
        }
    }
    match model.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| hub_error(repo, "model.safetensors.index.json", e))?;
            let index: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| hub_error(repo, "model.safetensors.index.json", e))?;
            let mut shards: Vec<String> = index["weight_map"]
                .as_object()
                .map(|map| {
                    map.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                get(&shard)?;
            }
        }
        Err(_) => {
            get("model.safetensors")?;
        }
    }
    config
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| hub_error(repo, "config.json", "the cache path has no parent"))
}
