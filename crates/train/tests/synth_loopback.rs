//! Synthesis against a teacher on loopback that answers right, rate-limits, fails, answers wrong
//! and answers garbage: retried, re-asked, dropped and counted as it should.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use guardreasoner_eval::dataset::Truth;
use guardreasoner_protocol::{Conversation, Label};
use guardreasoner_train::data::{Labelled, Source};
use guardreasoner_train::synth::{self, Dropped, Teacher};

fn reply(content: &str) -> String {
    serde_json::json!({"choices": [{"message": {"role": "assistant", "content": content}}]})
        .to_string()
}

/// Serves until the test ends: the behaviour is chosen by the user message's text.
fn teacher() -> (String, Arc<AtomicUsize>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", server.server_addr().to_ip().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for mut request in server.incoming_requests() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut body = String::new();
            request.as_reader().read_to_string(&mut body).unwrap();
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(request.url(), "/v1/chat/completions");
            assert_eq!(body["model"], "teacher-model");
            let system = body["messages"][0]["content"].as_str().unwrap().to_string();
            let user = body["messages"][1]["content"].as_str().unwrap().to_string();
            let truth = system.rsplit("Answers: \n").next().unwrap().to_string();
            let count = seen.entry(user.clone()).or_default();
            *count += 1;
            let right = format!(
                "# Task 1\n\n## Reasoning Step 1\nIt is what it is.\n\n---\n\nAnswers: \n{truth}"
            );
            let (status, text) = if user.contains("rate") && *count == 1 {
                (429, "slow down".to_string())
            } else if user.contains("flaky") && *count <= 2 {
                (503, "overloaded".to_string())
            } else if user.contains("wrong") {
                (
                    200,
                    reply("Answers: \nRequest: unharmful\nCompletion: None\nResponse: None\n"),
                )
            } else if user.contains("garbage") {
                (200, "<html>not json</html>".to_string())
            } else {
                (200, reply(&right))
            };
            let mut response = tiny_http::Response::from_string(text).with_status_code(status);
            if status == 429 {
                response.add_header(tiny_http::Header::from_bytes("Retry-After", "0").unwrap());
            }
            request.respond(response).unwrap();
        }
    });
    (url, requests)
}

fn sample(prompt: &str) -> Labelled {
    Labelled {
        conversation: Conversation::prompt_only(prompt),
        truth: Truth {
            request: Some(Label::Harmful),
            ..Truth::default()
        },
        source: Source::ToxicChatTrain,
    }
}

#[test]
fn the_teacher_is_retried_checked_and_every_drop_counted() {
    let (url, requests) = teacher();
    let samples: Vec<Labelled> = ["ok", "rate", "flaky", "wrong", "garbage", "done before"]
        .into_iter()
        .map(sample)
        .collect();
    let config = Teacher {
        url,
        model: "teacher-model".into(),
        concurrency: 3,
        backoff: Duration::from_millis(1),
        timeout: Duration::from_secs(10),
        ..Teacher::default()
    };
    let done: HashSet<usize> = [5].into();
    let mut outcomes = Vec::new();
    synth::synthesize(&samples, &config, &done, |o| {
        outcomes.push(o);
        Ok(())
    })
    .unwrap();
    outcomes.sort_by_key(|o| o.index);
    assert_eq!(
        outcomes.len(),
        5,
        "the sample done before is not asked again"
    );
    let kept: Vec<usize> = outcomes
        .iter()
        .filter(|o| o.record.is_some())
        .map(|o| o.index)
        .collect();
    assert_eq!(kept, [0, 1, 2]);
    assert_eq!(outcomes[1].retries, 1, "one 429");
    assert_eq!(outcomes[2].retries, 2, "two 503s");
    assert_eq!(outcomes[3].dropped, Some(Dropped::WrongAnswer));
    assert_eq!(outcomes[3].retries, 1, "asked once more");
    assert!(matches!(&outcomes[4].dropped, Some(Dropped::ApiError(m)) if m.contains("not JSON")));
    let record = outcomes[0].record.as_ref().unwrap();
    assert_eq!(record["prompt_harm_label"], "harmful");
    assert_eq!(record["source"], "ToxicChatTrainR");
    assert!(record["output"]
        .as_str()
        .unwrap()
        .ends_with("Request: harmful\nCompletion: None\nResponse: None\n\n\n"));
    // ok 1, rate 2, flaky 3, wrong 2, garbage 1.
    assert_eq!(requests.load(Ordering::SeqCst), 9);
}
