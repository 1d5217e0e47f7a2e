//! A client of any OpenAI-compatible `/v1/completions` server (vLLM, llama.cpp's server, ours).
//!
//! This is how users scale out: vLLM on GPUs, several replicas behind a balancer. Requests are
//! streamed, with at most `max_in_flight` open at once.
//!
//! What the server reads: with the served model's tokenizer given
//! ([`OpenAiEngine::with_tokenizer`]), each prompt is sent as token ids made here
//! ([`crate::tokenize`]: a conversation's control strings stay text), and prompts are measured
//! against the context before they are sent. Without one, a prompt goes as its text, and the
//! server's tokenizer decides: vLLM and llama-server parse control-token strings in a text prompt,
//! so there a conversation's `<|eot_id|>` would be a control token.

use std::io::{self, Read};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_executor::block_on_stream;
use serde::Deserialize;
use serde_json::json;

use guardreasoner_protocol::Prompt;

use crate::error::EngineError;
use crate::generate::{
    Batch, Generate, Generation, ModelInfo, SamplingParams, StopReason, Timings, TokenEvent,
};
use crate::tokenize::{tokenize, Vocabulary};

const BACKEND: &str = "openai";

/// Where the server is and how to talk to it.
#[derive(Debug, Clone)]
pub struct OpenAiOptions {
    /// The server's base URL, e.g. `http://localhost:8000` (with or without `/v1`).
    pub base_url: String,
    /// The model name the server expects.
    pub model: String,
    /// An API key, sent as a bearer token.
    pub api_key: Option<String>,
    /// The most requests open at once.
    pub max_in_flight: usize,
    /// The server's context window, as far as the client knows it.
    pub context_length: usize,
    /// The longest one request may take.
    pub timeout: Duration,
}

/// A remote model behind an OpenAI-compatible completions endpoint.
pub struct OpenAiEngine {
    options: OpenAiOptions,
    info: ModelInfo,
    agent: ureq::Agent,
    /// The served model's tokenizer, when given: prompts then go as token ids.
    tokenizer: Option<Box<dyn Vocabulary + Send + Sync>>,
}

impl OpenAiEngine {
    /// A client for the server in `options`; no request is made until the first generation.
    pub fn new(options: OpenAiOptions) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(options.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let info = ModelInfo {
            backend: BACKEND,
            source: format!("{} ({})", options.base_url, options.model),
            context_length: options.context_length,
            max_batch: options.max_in_flight.max(1),
            device: "remote".into(),
        };
        Self {
            options,
            info,
            agent,
            tokenizer: None,
        }
    }

    /// Sends prompts as the token ids `tokenizer` (the served model's) gives them, instead of as
    /// text for the server to tokenize.
    pub fn with_tokenizer(mut self, tokenizer: Box<dyn Vocabulary + Send + Sync>) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// What a request's `prompt` field carries: the ids, or the text.
    fn prompt_field(&self, prompt: &Prompt) -> Result<serde_json::Value, EngineError> {
        Ok(match &self.tokenizer {
            Some(tokenizer) => json!(tokenize(tokenizer.as_ref(), prompt)?),
            None => json!(prompt.text()),
        })
    }

    fn url(&self) -> String {
        let base = self.options.base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        format!("{base}/v1/completions")
    }

    fn complete(
        &self,
        prompt: &Prompt,
        params: &SamplingParams,
        seed: u64,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let started = Instant::now();
        let mut body = json!({
            "model": self.options.model,
            "prompt": self.prompt_field(prompt)?,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": if params.is_greedy() { 1.0 } else { params.top_p },
            "seed": seed,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if params.logprobs {
            body["logprobs"] = json!(1);
        }
        if params.ignore_eos {
            // vLLM's extension; other servers ignore unknown fields.
            body["ignore_eos"] = json!(true);
        }
        let mut request = self.agent.post(&self.url());
        if let Some(key) = &self.options.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request
            .send_json(&body)
            .map_err(|e| EngineError::backend_caused(BACKEND, format!("POST {}", self.url()), e))?;
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            return Err(error(format!(
                "POST {}: HTTP {status}: {}",
                self.url(),
                text.trim()
            )));
        }
        let events = server_sent_events(response.body_mut().as_reader());
        let mut text = String::new();
        let mut logprobs = params.logprobs.then(Vec::new);
        let mut chunks = 0usize;
        let mut usage: Option<Usage> = None;
        let mut stop = None;
        let mut done = false;
        let mut first_at = None;
        for event in events {
            let event = event.map_err(|e| {
                EngineError::backend_caused(
                    BACKEND,
                    format!("POST {}: reading the stream", self.url()),
                    e,
                )
            })?;
            let data = event.data.trim();
            if data == "[DONE]" {
                done = true;
                break;
            }
            let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
                EngineError::backend_caused(
                    BACKEND,
                    format!("a stream event is not a completion chunk: {data}"),
                    e,
                )
            })?;
            if let Some(u) = chunk.usage {
                usage = Some(u);
            }
            for choice in chunk.choices {
                if !choice.text.is_empty() {
                    first_at.get_or_insert_with(Instant::now);
                    chunks += 1;
                    on_text(&choice.text);
                    text.push_str(&choice.text);
                }
                if let (Some(all), Some(lp)) = (&mut logprobs, choice.logprobs) {
                    all.extend(lp.token_logprobs.into_iter().flatten());
                }
                match choice.finish_reason.as_deref() {
                    Some("length") => stop = Some(StopReason::MaxTokens),
                    Some(_) => stop = Some(StopReason::EndOfText),
                    None => {}
                }
            }
        }
        // A stream cut off (a dropped connection, a server that died) must not pass for a whole
        // generation: it ends with a finish reason and `[DONE]`.
        let (Some(stop), true) = (stop, done) else {
            return Err(error(format!(
                "POST {}: the stream ended {} {} a finish_reason, after {} characters; the output may be cut off",
                self.url(),
                if done { "at [DONE]" } else { "before [DONE]" },
                if stop.is_some() { "with" } else { "without" },
                text.len()
            )));
        };
        let finished = Instant::now();
        let first = first_at.unwrap_or(finished);
        Ok(Generation {
            text,
            prompt_tokens: usage.as_ref().map_or(0, |u| u.prompt_tokens),
            prompt_token_ids: Vec::new(),
            cached_prompt_tokens: 0,
            generated_tokens: usage.as_ref().map_or(chunks, |u| u.completion_tokens),
            token_ids: Vec::new(),
            logprobs,
            stop,
            timings: Timings {
                prefill: first.duration_since(started),
                decode: finished.duration_since(first),
                ..Timings::default()
            },
        })
    }
}

/// The server-sent events of a response body, read blocking. eventsource-stream parses a
/// `Stream` of byte chunks; a body read on this thread is always ready, so the stream is driven
/// without a runtime.
fn server_sent_events(
    mut body: impl Read,
) -> impl Iterator<Item = Result<Event, EventStreamError<io::Error>>> {
    let mut ended = false;
    let chunks = std::iter::from_fn(move || loop {
        if ended {
            return None;
        }
        let mut buffer = vec![0; 8192];
        match body.read(&mut buffer) {
            // The standard drops an event that no blank line closes; a server that ends its
            // last `data: [DONE]` with one newline and hangs up still finished its answer.
            Ok(0) => {
                ended = true;
                return Some(Ok(b"\n\n".to_vec()));
            }
            Ok(read) => {
                buffer.truncate(read);
                return Some(Ok::<_, io::Error>(buffer));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                ended = true;
                return Some(Err(e));
            }
        }
    });
    block_on_stream(futures_util::stream::iter(chunks).eventsource())
}

fn error(message: String) -> EngineError {
    EngineError::backend(BACKEND, message)
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    text: String,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Logprobs>,
}

#[derive(Deserialize)]
struct Logprobs {
    #[serde(default)]
    token_logprobs: Vec<Option<f32>>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Generate for OpenAiEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(
        &mut self,
        batch: &Batch,
        on_token: &mut dyn FnMut(TokenEvent<'_>),
    ) -> Result<Vec<Generation>, EngineError> {
        batch.params.validate()?;
        let next = Mutex::new(0usize);
        let (events, receiver) =
            mpsc::channel::<(usize, Result<String, Result<Generation, EngineError>>)>();
        let this = &*self;
        let mut results: Vec<Option<Result<Generation, EngineError>>> =
            (0..batch.prompts.len()).map(|_| None).collect();
        thread::scope(|scope| {
            for _ in 0..this.options.max_in_flight.max(1).min(batch.prompts.len()) {
                let events = events.clone();
                let next = &next;
                scope.spawn(move || loop {
                    let index = {
                        let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
                        let index = *next;
                        *next += 1;
                        index
                    };
                    let Some(prompt) = batch.prompts.get(index) else {
                        break;
                    };
                    let seed = batch.params.seed.wrapping_add(index as u64);
                    let result = this.complete(prompt, &batch.params, seed, &mut |text| {
                        let _ = events.send((index, Ok(text.to_string())));
                    });
                    let _ = events.send((index, Err(result)));
                });
            }
            drop(events);
            for (index, event) in receiver {
                match event {
                    Ok(text) => on_token(TokenEvent {
                        sequence: index,
                        text: &text,
                    }),
                    Err(result) => results[index] = Some(result),
                }
            }
        });
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(error("a request thread stopped".into()))))
            .collect()
    }

    fn count_tokens(&mut self, prompt: &Prompt) -> Result<Option<usize>, EngineError> {
        // Without the model's tokenizer there is nothing to count with (the completions API has
        // no tokenizer endpoint), and a guess would turn prompts that fit into skipped ones: the
        // server says what does not fit.
        match &self.tokenizer {
            Some(tokenizer) => Ok(Some(tokenize(tokenizer.as_ref(), prompt)?.len())),
            None => Ok(None),
        }
    }
}
