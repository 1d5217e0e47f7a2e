//! The server over real HTTP on loopback, serving the real-weights test model (SmolLM2-135M,
//! which is not a guard: its verdicts are whatever the policy makes of its output; these tests
//! check the service, not the judgement).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::{eventually, get, metric, post, request, send, Setup, TestServer, KEY};
use guardreasoner_server::ServeConfig;
use serde_json::{json, Value};

/// One server at a time: on two cores, servers generating side by side would make "at once" and
/// "within seconds" measure the machine, not the server.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A prompt SmolLM2 continues for as long as it is let (counting), to hold a slot.
const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,";

fn long_setup(slots: usize, queue: usize) -> Setup {
    Setup {
        slots,
        queue,
        context: 2048,
        max_new_tokens: 1500,
        ..Setup::default()
    }
}

fn assert_openai_error(reply: &common::Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    let body = reply.json();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    body
}

#[test]
fn every_endpoint_answers_in_its_shape() {
    let _serial = serial();
    let Some(server) = TestServer::start(Setup::default()) else {
        return;
    };
    let addr = server.addr;

    // /v1/guard: one conversation, a list, and a stream.
    let one = post(
        addr,
        "/v1/guard",
        &json!({"prompt": "How do I bake bread?"}),
    );
    assert_eq!(one.status, 200, "{}", one.body);
    let one = one.json();
    for field in [
        "harmful",
        "decided_by",
        "labels",
        "missing",
        "reasoning",
        "output",
        "usage",
        "timings",
        "stop",
        "id",
        "model",
    ] {
        assert!(one.get(field).is_some(), "no {field}: {one}");
    }
    for label in ["request", "completion", "response"] {
        assert!(one["labels"][label].is_string(), "{one}");
    }
    // The next check reuses the instruction its slot holds.
    let two = post(
        addr,
        "/v1/guard",
        &json!({"prompt": "How do I bake a cake?"}),
    )
    .json();
    assert!(
        two["usage"]["cached_prompt_tokens"].as_u64().unwrap() > 90,
        "{two}"
    );
    assert_eq!(one["model"], "smollm2-test");
    let list = post(
        addr,
        "/v1/guard",
        &json!([{"prompt": "a"}, {"prompt": "b", "response": "c"}]),
    );
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.json()["results"].as_array().unwrap().len(), 2);
    let streamed = post(
        addr,
        "/v1/guard",
        &json!({"prompt": "Hello there", "stream": true}),
    );
    assert_eq!(streamed.status, 200);
    assert!(streamed
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = streamed.events();
    let (last, verdict) = events.last().unwrap();
    assert_eq!(last, "verdict", "{}", streamed.body);
    let verdict: Value = serde_json::from_str(verdict).unwrap();
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "token")
        .map(|(_, data)| {
            serde_json::from_str::<Value>(data).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        text,
        verdict["output"].as_str().unwrap(),
        "the stream is the output"
    );

    // One conversation may shorten the budget and ignore end of text (load tests with a fixed
    // number of new tokens); the budget cannot exceed the server's.
    let fixed = post(
        addr,
        "/v1/guard",
        &json!({"prompt": "hi", "max_new_tokens": 9, "ignore_eos": true}),
    );
    assert_eq!(fixed.status, 200, "{}", fixed.body);
    let fixed = fixed.json();
    assert_eq!(fixed["usage"]["completion_tokens"], 9, "{fixed}");
    assert_eq!(fixed["stop"], "max_tokens", "{fixed}");
    let over = assert_openai_error(
        &post(
            addr,
            "/v1/guard",
            &json!({"prompt": "hi", "max_new_tokens": 25}),
        ),
        422,
    );
    assert_eq!(over["error"]["param"], "max_new_tokens", "{over}");
    let wrong = assert_openai_error(
        &post(
            addr,
            "/v1/guard",
            &json!({"prompt": "hi", "ignore_eos": "yes"}),
        ),
        400,
    );
    assert_eq!(wrong["error"]["param"], "ignore_eos", "{wrong}");

    // /v1/moderations: a string, a list, text parts; all 13 categories.
    for (input, count) in [
        (json!("hi"), 1),
        (json!(["hi", "there"]), 2),
        (json!([{"type": "text", "text": "hi"}]), 1),
    ] {
        let reply = post(
            addr,
            "/v1/moderations",
            &json!({"input": input, "model": "omni-moderation-latest"}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body = reply.json();
        assert!(body["id"].as_str().unwrap().starts_with("modr-"));
        assert_eq!(body["model"], "smollm2-test");
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), count, "one result per input: {body}");
        for result in results {
            assert!(result["flagged"].is_boolean());
            for key in [
                "categories",
                "category_scores",
                "category_applied_input_types",
            ] {
                assert_eq!(
                    result[key].as_object().unwrap().len(),
                    13,
                    "{key}: {result}"
                );
            }
            assert!(result["guardreasoner"]["labels"].is_object());
        }
    }
    let image = post(
        addr,
        "/v1/moderations",
        &json!({"input": [{"type": "image_url", "image_url": {"url": "x"}}]}),
    );
    let body = assert_openai_error(&image, 400);
    assert_eq!(body["error"]["param"], "input[0].type");

    // LiteLLM: a request, then its response under the same call id (recall itself: memory.rs's
    // tests); unknown fields ignored.
    let checked = post(
        addr,
        "/beta/litellm_basic_guardrail_api",
        &json!({
            "input_type": "request", "request_data": {}, "texts": ["hello"],
            "structured_messages": [{"role": "user", "content": "hello"}],
            "litellm_call_id": "call-1", "litellm_version": "1.110.2", "a_field_from_the_future": [1]
        }),
    );
    assert_eq!(checked.status, 200, "{}", checked.body);
    let action = checked.json()["action"].as_str().unwrap().to_string();
    assert!(action == "NONE" || action == "BLOCKED");
    let response = post(
        addr,
        "/beta/litellm_basic_guardrail_api",
        &json!({"input_type": "response", "request_data": {}, "texts": ["Hi!"], "litellm_call_id": "call-1"}),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    let empty = post(
        addr,
        "/beta/litellm_basic_guardrail_api",
        &json!({"input_type": "request", "request_data": {}, "texts": []}),
    );
    assert_eq!(empty.json(), json!({"action": "NONE"}));
    let missing = post(
        addr,
        "/beta/litellm_basic_guardrail_api",
        &json!({"input_type": "request"}),
    );
    assert!(assert_openai_error(&missing, 400)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("request_data"));

    // The raw model, OpenAI's shape.
    let chat = post(
        addr,
        "/v1/chat/completions",
        &json!({"model": "x", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "ignore_eos": true}),
    );
    assert_eq!(chat.status, 200, "{}", chat.body);
    let chat = chat.json();
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    assert_eq!(chat["usage"]["completion_tokens"], 8);
    assert_eq!(chat["choices"][0]["finish_reason"], "length");
    let stream = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "ignore_eos": true, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    let events = stream.events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let streamed_text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed_text,
        chat["choices"][0]["message"]["content"].as_str().unwrap(),
        "greedy: the same text streamed"
    );
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 8);
    let completion = post(
        addr,
        "/v1/completions",
        &json!({"prompt": COUNTING, "max_tokens": 24, "stop": ["15"]}),
    );
    assert_eq!(completion.status, 200, "{}", completion.body);
    let completion = completion.json();
    assert_eq!(completion["object"], "text_completion");
    assert_eq!(
        completion["choices"][0]["finish_reason"], "stop",
        "{completion}"
    );
    let text = completion["choices"][0]["text"].as_str().unwrap();
    assert!(text.contains("14,") && !text.contains("15"), "{text:?}");

    let models = get(addr, "/v1/models").json();
    assert_eq!(models["data"][0]["id"], "smollm2-test");
    let health = get(addr, "/health").json();
    assert_eq!(
        (
            health["status"].as_str(),
            health["continuous_batching"].as_bool()
        ),
        (Some("ok"), Some(true))
    );
    assert!(
        metric(
            addr,
            "guardreasoner_requests_total",
            &["endpoint=\"/v1/guard\"", "status=\"200\""]
        ) >= 3.0
    );
    assert!(metric(addr, "guardreasoner_generated_tokens_total", &[]) > 0.0);
    assert!(metric(addr, "guardreasoner_cached_prompt_tokens_total", &[]) > 0.0);
    let metrics = get(addr, "/metrics").body;
    for name in [
        "guardreasoner_request_duration_seconds",
        "guardreasoner_time_to_first_token_seconds",
        "guardreasoner_queue_time_seconds",
        "guardreasoner_queue_depth",
        "guardreasoner_running_sequences",
        "guardreasoner_parse_failures_total",
    ] {
        assert!(metrics.contains(name), "no {name}");
    }
    server.stop().unwrap();
}

#[test]
fn keys_are_required_in_either_header_and_health_is_open() {
    let _serial = serial();
    let Some(server) = TestServer::start(Setup::default()) else {
        return;
    };
    let addr = server.addr;
    let body = json!({"input": "hi"}).to_string();
    let json = ("content-type", "application/json");
    let with = |headers: &[(&str, &str)]| {
        request(addr, "POST", "/v1/moderations", headers, body.as_bytes())
    };
    assert_openai_error(&with(&[json]), 401);
    assert_openai_error(&with(&[json, ("authorization", "Bearer wrong")]), 401);
    assert_openai_error(&with(&[json, ("x-api-key", "sk-test-ke")]), 401);
    let bearer = format!("Bearer {KEY}");
    assert_eq!(with(&[json, ("authorization", &bearer)]).status, 200);
    assert_eq!(with(&[json, ("x-api-key", KEY)]).status, 200);
    assert_eq!(request(addr, "GET", "/health", &[], b"").status, 200);
    assert_openai_error(&request(addr, "GET", "/metrics", &[], b""), 401);
}

#[test]
fn overload_is_answered_at_once() {
    let _serial = serial();
    let Some(server) = TestServer::start(long_setup(1, 1)) else {
        return;
    };
    let addr = server.addr;
    // One sequence runs, one waits: the queue is full. The running one
    // ignores end-of-sequence, so it cannot finish (and free the queue for
    // the requests below, which would then run in full) before we hang up.
    let running = send(
        addr,
        "POST",
        "/v1/completions",
        &[("content-type", "application/json"), ("x-api-key", KEY)],
        json!({"prompt": COUNTING, "max_tokens": 1500, "ignore_eos": true, "stream": true})
            .to_string()
            .as_bytes(),
    );
    let mut running = BufReader::new(running);
    let mut line = String::new();
    running.read_line(&mut line).unwrap();
    assert!(line.contains("200"), "{line}");
    // The answer's head comes before the scheduler takes the request from the queue: wait until
    // it runs, or the next request is refused and the ones below queue behind it.
    eventually(Duration::from_secs(30), "the first request running", || {
        metric(addr, "guardreasoner_running_sequences", &[]) == 1.0
    });
    let waiting = std::thread::spawn(move || {
        post(
            addr,
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 2}),
        )
    });
    eventually(Duration::from_secs(30), "a request waiting", || {
        assert!(!waiting.is_finished(), "the second request was answered");
        metric(addr, "guardreasoner_queue_depth", &[]) == 1.0
    });

    for (path, body, status) in [
        ("/v1/guard", json!({"prompt": "hi"}), 429),
        ("/v1/moderations", json!({"input": "hi"}), 429),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            429,
        ),
        ("/v1/completions", json!({"prompt": "hi"}), 429),
        (
            "/beta/litellm_basic_guardrail_api",
            json!({"input_type": "request", "request_data": {}, "texts": ["hi"]}),
            503,
        ),
    ] {
        let started = Instant::now();
        let reply = post(addr, path, &body);
        let took = started.elapsed();
        let error = assert_openai_error(&reply, status);
        assert!(took < Duration::from_secs(5), "{path} took {took:?}");
        assert_eq!(error["error"]["code"], "queue_full", "{path}");
        assert_eq!(reply.header("retry-after"), Some("1"), "{path}");
    }
    // Hanging up on the running one lets the waiting one through.
    drop(running);
    let waited = waiting.join().unwrap();
    assert_eq!(waited.status, 200, "{}", waited.body);
    assert!(metric(addr, "guardreasoner_requests_total", &["status=\"429\""]) >= 4.0);
}

#[test]
fn a_client_that_hangs_up_frees_its_slot() {
    let _serial = serial();
    let Some(server) = TestServer::start(long_setup(1, 4)) else {
        return;
    };
    let addr = server.addr;
    let running = || metric(addr, "guardreasoner_running_sequences", &[]);
    // This machine's speed, to judge the cancellations by: an uncancelled sequence below runs
    // 1,500 tokens (end of text ignored); a cancelled one must leave in a fraction of that.
    let started = Instant::now();
    let reference = post(
        addr,
        "/v1/completions",
        &json!({"prompt": COUNTING, "max_tokens": 64, "ignore_eos": true}),
    );
    assert_eq!(reference.status, 200, "{}", reference.body);
    let per_token = started.elapsed().as_secs_f64() / 64.0;
    let cancelled_within = Duration::from_secs_f64((per_token * 1400.0 / 4.0).clamp(2.0, 10.0));
    // Streaming: hang up after the first chunks.
    let stream = send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json"), ("x-api-key", KEY)],
        json!({"messages": [{"role": "user", "content": format!("Continue: {COUNTING}")}], "max_tokens": 1500, "ignore_eos": true, "stream": true})
            .to_string()
            .as_bytes(),
    );
    let mut reader = BufReader::new(stream);
    let mut data_lines = 0;
    while data_lines < 3 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        data_lines += usize::from(line.starts_with("data: "));
    }
    assert_eq!(running(), 1.0);
    drop(reader);
    eventually(cancelled_within, "the streamed sequence cancelled", || {
        running() == 0.0
    });

    // Not streaming: the client gives up before the answer.
    let mut plain = send(
        addr,
        "POST",
        "/v1/completions",
        &[("content-type", "application/json"), ("x-api-key", KEY)],
        json!({"prompt": COUNTING, "max_tokens": 1500, "ignore_eos": true})
            .to_string()
            .as_bytes(),
    );
    eventually(Duration::from_secs(10), "the sequence running", || {
        running() == 1.0
    });
    plain.flush().unwrap();
    plain.shutdown(std::net::Shutdown::Both).unwrap();
    drop(plain);
    eventually(cancelled_within, "the waiting sequence cancelled", || {
        running() == 0.0
    });
    // The slot serves the next one at once.
    let started = Instant::now();
    let next = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 4}),
    );
    assert_eq!(next.status, 200);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn bad_requests_get_clear_errors() {
    let _serial = serial();
    let Some(server) = TestServer::start(Setup {
        context: 512,
        config: ServeConfig {
            body_limit: 64 * 1024,
            ..Setup::default().config
        },
        ..Setup::default()
    }) else {
        return;
    };
    let addr = server.addr;
    let key = [("content-type", "application/json"), ("x-api-key", KEY)];
    let raw = |path: &str, body: &[u8]| request(addr, "POST", path, &key, body);

    let huge = json!({"prompt": "x".repeat(100 * 1024)}).to_string();
    assert_openai_error(&raw("/v1/guard", huge.as_bytes()), 413);
    let malformed = assert_openai_error(&raw("/v1/moderations", b"{\"input\": "), 400);
    assert_eq!(malformed["error"]["code"], "invalid_json");
    let missing = assert_openai_error(&raw("/v1/moderations", b"{\"inputs\": \"hi\"}"), 400);
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`input`"),
        "{missing}"
    );
    let wrong = assert_openai_error(&raw("/v1/guard", b"{\"prompt\": 5}"), 400);
    assert!(
        wrong["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{wrong}"
    );
    let unknown = assert_openai_error(
        &raw("/v1/guard", b"{\"prompt\": \"a\", \"respons\": \"b\"}"),
        400,
    );
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("respons"),
        "{unknown}"
    );
    assert_openai_error(
        &request(addr, "POST", "/v1/guard", &[("x-api-key", KEY)], b"{}"),
        400,
    );

    let long = "word ".repeat(3000);
    let too_long = assert_openai_error(&post(addr, "/v1/guard", &json!({"prompt": long})), 422);
    let message = too_long["error"]["message"].as_str().unwrap();
    assert!(message.contains("the context holds 512"), "{message}");
    assert_eq!(too_long["error"]["code"], "context_length_exceeded");
    let listed = assert_openai_error(
        &post(addr, "/v1/moderations", &json!({"input": ["ok", long]})),
        422,
    );
    assert_eq!(listed["error"]["param"], "input[1]");
    let over = assert_openai_error(
        &post(
            addr,
            "/v1/completions",
            &json!({"prompt": "a", "max_tokens": 100000}),
        ),
        422,
    );
    assert!(
        over["error"]["message"]
            .as_str()
            .unwrap()
            .contains("between 1 and 24"),
        "{over}"
    );
    assert_eq!(over["error"]["param"], "max_tokens");
    let zero = assert_openai_error(
        &post(
            addr,
            "/v1/completions",
            &json!({"prompt": "a", "max_tokens": 0}),
        ),
        422,
    );
    assert_eq!(zero["error"]["param"], "max_tokens");
    let top_p = assert_openai_error(
        &post(
            addr,
            "/v1/completions",
            &json!({"prompt": "a", "top_p": 1.5}),
        ),
        422,
    );
    assert_eq!(top_p["error"]["param"], "top_p");
    // Named from the error's own field, not guessed from its text.
    let temperature = assert_openai_error(
        &post(
            addr,
            "/v1/completions",
            &json!({"prompt": "top_p", "temperature": -1.0}),
        ),
        422,
    );
    assert_eq!(temperature["error"]["param"], "temperature");
    let n = assert_openai_error(
        &post(
            addr,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "a"}], "n": 3}),
        ),
        422,
    );
    assert_eq!(n["error"]["param"], "n");
    let nothing = assert_openai_error(&post(addr, "/v1/guard", &json!([])), 400);
    assert!(
        nothing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing"),
        "{nothing}"
    );
    assert_openai_error(&get(addr, "/v2/nothing"), 404);
    // Still serving.
    assert_eq!(
        post(addr, "/v1/guard", &json!({"prompt": "hi"})).status,
        200
    );
}

#[test]
fn a_request_past_its_deadline_is_cancelled() {
    let _serial = serial();
    let Some(server) = TestServer::start(Setup {
        config: ServeConfig {
            request_timeout: Duration::from_millis(500),
            ..Setup::default().config
        },
        ..long_setup(1, 4)
    }) else {
        return;
    };
    let addr = server.addr;
    let reply = post(
        addr,
        "/v1/completions",
        &json!({"prompt": COUNTING, "max_tokens": 1500, "ignore_eos": true}),
    );
    let error = assert_openai_error(&reply, 504);
    assert_eq!(error["error"]["code"], "deadline_exceeded");
    eventually(Duration::from_secs(10), "the sequence cancelled", || {
        metric(addr, "guardreasoner_running_sequences", &[]) == 0.0
    });
}

#[test]
fn shutdown_finishes_what_is_in_flight() {
    let _serial = serial();
    let Some(server) = TestServer::start(long_setup(2, 4)) else {
        return;
    };
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || {
        post(
            addr,
            "/v1/completions",
            &json!({"prompt": COUNTING, "max_tokens": 60, "ignore_eos": true}),
        )
    });
    eventually(Duration::from_secs(10), "the request running", || {
        metric(addr, "guardreasoner_running_sequences", &[]) == 1.0
    });
    server.stop().unwrap();
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["usage"]["completion_tokens"], 60);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening"
    );
}
