//! The OpenAI-compatible client against a loopback server that streams completions the way vLLM
//! and llama.cpp's server do (server-sent events, `data: {...}` lines, `data: [DONE]`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use guardreasoner_engine::backends::openai::{OpenAiEngine, OpenAiOptions};
use guardreasoner_engine::{Batch, EngineError, Generate, Prompt, SamplingParams, StopReason};

/// What the server saw.
#[derive(Default)]
struct Seen {
    bodies: Vec<serde_json::Value>,
    most_in_flight: usize,
}

/// Answers each prompt with its words, reversed, one event per word; `fail` prompts get HTTP 400;
/// `cut` prompts get one event, then the connection closes (no finish reason, no `[DONE]`);
/// `unfinished` prompts get `[DONE]` without a finish reason; `framing` prompts get events framed
/// in the ways the SSE standard allows and servers use (comments, CRLF, an event name, one event's
/// data over two `data:` lines, no space after the colon, no blank line after the last event).
/// Each request is held until `hold` requests are in flight (at most 2 s: the last ones of a batch
/// have no partner), then 50 ms more, so that requests the client sends together overlap here
/// however slowly the machine runs, and a request past the client's bound, sent at once or a
/// little later, is seen in flight beside them.
fn serve(seen: Arc<Mutex<Seen>>, hold: usize) -> String {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let base = format!("http://{}", server.server_addr().to_ip().unwrap());
    let in_flight = Arc::new(AtomicUsize::new(0));
    for _ in 0..8 {
        let (server, seen, in_flight) = (server.clone(), seen.clone(), in_flight.clone());
        thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                let mut body = String::new();
                request.as_reader().read_to_string(&mut body).unwrap();
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                {
                    let mut seen = seen.lock().unwrap();
                    seen.most_in_flight = seen.most_in_flight.max(now);
                    seen.bodies.push(body.clone());
                }
                let held = Instant::now();
                while in_flight.load(Ordering::SeqCst) < hold
                    && held.elapsed() < Duration::from_secs(2)
                {
                    thread::sleep(Duration::from_millis(5));
                }
                thread::sleep(Duration::from_millis(50));
                // Token ids are answered as one word.
                let prompt = body["prompt"].as_str().unwrap_or("ids").to_string();
                let response = if prompt == "fail" || request.url() != "/v1/completions" {
                    tiny_http::Response::from_string("{\"error\": \"bad request\"}")
                        .with_status_code(400)
                } else if prompt == "framing" {
                    tiny_http::Response::from_string(concat!(
                        ": keep-alive\r\n\r\n",
                        "data:{\"choices\": [{\"index\": 0,\r\n",
                        "data: \"text\": \"two\", \"finish_reason\": null}]}\r\n\r\n",
                        "event: completion\n",
                        "data: {\"choices\": [{\"index\": 0, \"text\": \" lines\", \"finish_reason\": \"stop\"}]}\n\n",
                        // The last event closed by the end of the stream, not a blank line.
                        "data: [DONE]\n",
                    ))
                } else if prompt == "cut" || prompt == "unfinished" {
                    let mut events = format!(
                        "data: {}\n\n",
                        serde_json::json!({"choices": [{"index": 0, "text": "partial", "finish_reason": null}]})
                    );
                    if prompt == "unfinished" {
                        events.push_str("data: [DONE]\n\n");
                    }
                    tiny_http::Response::from_string(events)
                } else {
                    let words: Vec<&str> = prompt.split(' ').rev().collect();
                    let max = body["max_tokens"].as_u64().unwrap() as usize;
                    let mut events = String::new();
                    for (i, word) in words.iter().take(max).enumerate() {
                        let finish = if i + 1 == words.len().min(max) {
                            if max < words.len() {
                                "\"length\""
                            } else {
                                "\"stop\""
                            }
                        } else {
                            "null"
                        };
                        let text = if i == 0 {
                            word.to_string()
                        } else {
                            format!(" {word}")
                        };
                        events.push_str(&format!(
                            "data: {}\n\n",
                            serde_json::json!({"choices": [{"index": 0, "text": text, "finish_reason": serde_json::from_str::<serde_json::Value>(finish).unwrap(), "logprobs": {"token_logprobs": [-0.5]}}]})
                        ));
                    }
                    events.push_str(&format!(
                        "data: {}\n\ndata: [DONE]\n\n",
                        serde_json::json!({"choices": [], "usage": {"prompt_tokens": words.len() + 1, "completion_tokens": words.len().min(max)}})
                    ));
                    tiny_http::Response::from_string(events)
                };
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = request.respond(response);
            }
        });
    }
    base
}

fn engine(base: &str, in_flight: usize) -> OpenAiEngine {
    OpenAiEngine::new(OpenAiOptions {
        base_url: format!("{base}/v1"),
        model: "guard".into(),
        api_key: Some("secret".into()),
        max_in_flight: in_flight,
        context_length: 4096,
        timeout: Duration::from_secs(30),
    })
}

#[test]
fn streams_batches_with_bounded_concurrency_and_reads_usage() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let base = serve(seen.clone(), 2);
    let mut engine = engine(&base, 2);
    let prompts: Vec<Prompt> = (0..5)
        .map(|i| Prompt::content(format!("a b c {i}")))
        .collect();
    let params = SamplingParams {
        max_new_tokens: 16,
        logprobs: true,
        seed: 7,
        ..SamplingParams::default()
    };
    let mut streamed = vec![String::new(); 5];
    let generations = engine
        .generate(
            &Batch {
                prompts,
                params,
                shared_prefix: None,
            },
            &mut |event| streamed[event.sequence].push_str(event.text),
        )
        .unwrap();
    assert_eq!(generations.len(), 5);
    for (index, generation) in generations.iter().enumerate() {
        assert_eq!(generation.text, format!("{index} c b a"));
        assert_eq!(streamed[index], generation.text);
        assert_eq!(generation.stop, StopReason::EndOfText);
        assert_eq!(
            (generation.prompt_tokens, generation.generated_tokens),
            (5, 4)
        );
        assert_eq!(generation.logprobs.as_deref(), Some(&[-0.5f32; 4][..]));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bodies.len(), 5);
    assert_eq!(seen.most_in_flight, 2, "requests in flight are bounded");
    let body = &seen.bodies[0];
    assert_eq!(
        (
            body["model"].as_str(),
            body["temperature"].as_f64(),
            body["stream"].as_bool()
        ),
        (Some("guard"), Some(0.0), Some(true))
    );
    let mut seeds: Vec<u64> = seen
        .bodies
        .iter()
        .map(|b| b["seed"].as_u64().unwrap())
        .collect();
    seeds.sort_unstable();
    assert_eq!(seeds, vec![7, 8, 9, 10, 11]);
}

#[test]
fn length_stops_and_server_errors_are_reported() {
    let base = serve(Arc::new(Mutex::new(Seen::default())), 1);
    let mut engine = engine(&base, 1);
    let params = SamplingParams {
        max_new_tokens: 2,
        ..SamplingParams::default()
    };
    let generation = engine
        .generate(
            &Batch {
                prompts: vec![Prompt::content("one two three")],
                params: params.clone(),
                shared_prefix: None,
            },
            &mut |_| {},
        )
        .unwrap()
        .remove(0);
    assert_eq!(
        (generation.text.as_str(), generation.stop),
        ("three two", StopReason::MaxTokens)
    );

    let error = engine
        .generate(
            &Batch {
                prompts: vec![Prompt::content("fail")],
                params,
                shared_prefix: None,
            },
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(
        error,
        EngineError::Backend {
            backend: "openai",
            ..
        }
    ));
    assert!(error.to_string().contains("HTTP 400"), "{error}");
}

#[test]
fn a_stream_cut_off_is_an_error_not_a_short_answer() {
    let base = serve(Arc::new(Mutex::new(Seen::default())), 1);
    let mut engine = engine(&base, 1);
    for (prompt, expected) in [
        ("cut", "ended before [DONE] without a finish_reason"),
        ("unfinished", "ended at [DONE] without a finish_reason"),
    ] {
        let error = engine
            .generate(
                &Batch {
                    prompts: vec![Prompt::content(prompt)],
                    params: SamplingParams::default(),
                    shared_prefix: None,
                },
                &mut |_| {},
            )
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{prompt}: {error}");
    }
}

#[test]
fn events_are_read_as_the_sse_standard_frames_them() {
    let base = serve(Arc::new(Mutex::new(Seen::default())), 1);
    let mut engine = engine(&base, 1);
    let mut streamed = String::new();
    let generations = engine
        .generate(
            &Batch {
                prompts: vec![Prompt::content("framing")],
                params: SamplingParams::default(),
                shared_prefix: None,
            },
            &mut |event| streamed.push_str(event.text),
        )
        .unwrap();
    let generation = &generations[0];
    assert_eq!(generation.text, "two lines");
    assert_eq!(streamed, "two lines");
    assert_eq!(generation.stop, StopReason::EndOfText);
}

#[test]
fn a_remote_backend_does_not_guess_token_counts() {
    let mut engine = engine("http://127.0.0.1:9", 1);
    assert_eq!(
        engine
            .count_tokens(&Prompt::content("word ".repeat(10_000)))
            .unwrap(),
        None
    );
}
