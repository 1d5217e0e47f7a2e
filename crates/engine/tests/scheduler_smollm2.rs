//! The llama.cpp scheduler on the real-weights test model: sequences join a running batch,
//! cancelled ones free their slot, the queue refuses past its bound, and each request keeps its
//! own sampling parameters.
#![cfg(feature = "llama-cpp")]

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use guardreasoner_engine::backends::llama_cpp::{LlamaCppEngine, LlamaCppOptions};
use guardreasoner_engine::schedule::{events, validate, Event, EventReceiver, Rejected, Scheduler};
use guardreasoner_engine::Prompt;
use guardreasoner_engine::{Generation, SamplingParams};
use guardreasoner_protocol::PromptFormat;

/// One engine at a time: two on these 2 cores would make each other's steps many times slower
/// than the speed a test measures and judges by.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn engine(slots: usize, queue_capacity: usize) -> Option<LlamaCppEngine> {
    let path = common::smollm2()?;
    Some(
        LlamaCppEngine::load(
            &path,
            LlamaCppOptions {
                context_per_sequence: 1024,
                max_batch: slots,
                queue_capacity,
                threads: Some(2),
                ..LlamaCppOptions::default()
            },
        )
        .unwrap(),
    )
}

fn params(tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens: tokens,
        logprobs: true,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

/// Queues `prompt`; its events come back on the returned receiver, tagged `tag`.
fn submit(
    engine: &LlamaCppEngine,
    prompt: &Prompt,
    params: SamplingParams,
    tag: usize,
) -> EventReceiver {
    let request = validate(
        engine,
        tag,
        prompt.clone(),
        Some(PromptFormat::Eval.shared_prefix()),
        params,
    )
    .unwrap();
    let (sender, receiver) = events();
    engine.submit(request, tag, sender).unwrap();
    receiver
}

/// Waits for the next event and its request's tag, failing the test after a minute.
fn next_tagged(receiver: &mut EventReceiver) -> (usize, Event) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match receiver.try_recv() {
            Ok(tagged) => return tagged,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(error) => panic!("no event: {error}"),
        }
    }
}

/// Waits for the next event, failing the test after a minute.
fn next(receiver: &mut EventReceiver) -> Event {
    next_tagged(receiver).1
}

/// The generations of requests 0 and 1, which share `receiver`.
fn finish_both(receiver: &mut EventReceiver) -> (Generation, Generation) {
    let mut done: [Option<Generation>; 2] = [None, None];
    while done.iter().any(Option::is_none) {
        if let (tag, Event::Finished(result)) = next_tagged(receiver) {
            done[tag] = Some(result.unwrap());
        }
    }
    let [first, second] = done.map(Option::unwrap);
    (first, second)
}

fn finish(receiver: &mut EventReceiver) -> Generation {
    loop {
        if let Event::Finished(result) = next(receiver) {
            return result.unwrap();
        }
    }
}

#[test]
fn a_sequence_joins_a_running_batch_and_agrees_with_running_alone() {
    let _serial = serial();
    let Some(engine) = engine(2, 8) else { return };
    let prompts = common::reference_prompts();
    // The long one has room to spare: the short one (8 tokens and its prefill) must end first
    // even when this thread is slow to submit it.
    let alone_long = finish(&mut submit(&engine, &prompts[0], params(120), 0));
    let alone_short = finish(&mut submit(&engine, &prompts[1], params(8), 1));

    let mut long = submit(&engine, &prompts[0], params(120), 0);
    // The long one is decoding before the short one arrives.
    let mut streamed = 0;
    while streamed < 5 {
        if let Event::Token { .. } = next(&mut long) {
            streamed += 1;
        }
    }
    let mut short = submit(&engine, &prompts[1], params(8), 1);
    let joined = finish(&mut short);
    // It finished while the long one was still running: it did not wait for the batch to end.
    assert_eq!(engine.load().running, 1, "the long sequence ended first");
    let long_generation = finish(&mut long);
    assert_eq!(long_generation.generated_tokens, 120);
    common::agree_until_near_tie("joined", &joined, &alone_short);
    common::agree_until_near_tie("running", &long_generation, &alone_long);
    assert_eq!(engine.load().running, 0);
}

#[test]
fn a_dropped_receiver_cancels_its_sequence_and_frees_the_slot() {
    let _serial = serial();
    let Some(engine) = engine(1, 8) else { return };
    let prompts = common::reference_prompts();
    // This machine's decode speed, to judge against below (not a fixed time).
    let reference = finish(&mut submit(&engine, &prompts[0], params(32), 0));
    let seconds_per_token =
        reference.timings.decode.as_secs_f64() / (reference.generated_tokens - 1) as f64;
    // Uncancelled, the endless request would decode until its context is full.
    let left = 1024 - reference.prompt_tokens - 1;
    assert!(left >= 200, "the prompt leaves {left} tokens");

    let mut endless = submit(&engine, &prompts[0], params(1000), 0);
    let _ = next(&mut endless);
    let waiting = submit(&engine, &prompts[1], params(4), 1);
    drop(waiting);
    drop(endless);
    // One slot: the next request runs only once the cancelled one is gone (and the cancelled
    // waiting one is skipped). Had the endless one kept its slot, this request would wait for
    // its `left` tokens; cancelled, it waits for a step or two.
    let generation = finish(&mut submit(&engine, &prompts[2], params(4), 2));
    assert_eq!(generation.generated_tokens, 4);
    let would_wait = seconds_per_token * (left - 32) as f64;
    assert!(
        generation.timings.queue.as_secs_f64() < would_wait / 2.0,
        "queued {:?}; the endless request's tokens would take {would_wait:.2} s",
        generation.timings.queue
    );
    assert_eq!(engine.load().queued, 0);
}

#[test]
fn the_queue_refuses_past_its_bound_at_once() {
    let _serial = serial();
    let Some(engine) = engine(1, 1) else { return };
    let prompts = common::reference_prompts();
    let mut running = submit(&engine, &prompts[0], params(1000), 0);
    let _ = next(&mut running);
    let _waiting = submit(&engine, &prompts[1], params(4), 1);
    let request = validate(&engine, 2, prompts[2].clone(), None, params(4)).unwrap();
    let (sender, _receiver) = events();
    assert_eq!(
        engine.submit(request, 2, sender),
        Err(Rejected::QueueFull { capacity: 1 })
    );
    assert_eq!(engine.load().queued, 1);
}

#[test]
fn each_request_keeps_its_own_sampling() {
    let _serial = serial();
    let prompts = common::reference_prompts();
    let sampled = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: 3,
        ..params(12)
    };
    // The same requests in the same order on a fresh engine: the same tokens. Queued together,
    // so that they start in the same step every run (a batch's makeup moves its sums).
    let mut runs = Vec::new();
    for _ in 0..2 {
        let Some(engine) = engine(2, 8) else { return };
        let (sender, mut receiver) = events();
        let requests = [params(5), sampled.clone()]
            .into_iter()
            .enumerate()
            .map(|(tag, params)| {
                let prefix = Some(PromptFormat::Eval.shared_prefix());
                (
                    tag,
                    validate(&engine, tag, prompts[0].clone(), prefix, params).unwrap(),
                )
            })
            .collect();
        engine.submit_all(requests, sender).unwrap();
        let (greedy, hot) = finish_both(&mut receiver);
        assert_eq!((greedy.generated_tokens, hot.generated_tokens), (5, 12));
        let alone_greedy = finish(&mut submit(&engine, &prompts[0], params(12), 0));
        assert_ne!(
            hot.token_ids, alone_greedy.token_ids,
            "sampling was ignored"
        );
        runs.push(hot.token_ids);
    }
    assert_eq!(runs[0], runs[1], "the seed reproduces");
}

#[test]
fn bad_requests_fail_alone() {
    let _serial = serial();
    let Some(engine) = engine(2, 8) else { return };
    let bad = SamplingParams {
        max_new_tokens: 0,
        ..SamplingParams::default()
    };
    let error = validate(&engine, 0, Prompt::content("hello"), None, bad).unwrap_err();
    assert!(error.to_string().contains("max_new_tokens"), "{error}");
    let long = "word ".repeat(3000);
    let error = validate(&engine, 4, Prompt::content(long), None, params(4)).unwrap_err();
    assert!(
        error.to_string().starts_with("prompt 4 is 3001 tokens"),
        "{error}"
    );
    // The scheduler still serves.
    let generation = finish(&mut submit(
        &engine,
        &Prompt::content("Hello"),
        params(3),
        0,
    ));
    assert_eq!(generation.generated_tokens, 3);
}

#[test]
fn a_prompt_reuses_the_start_of_the_last_one_in_its_slot() {
    let _serial = serial();
    let Some(engine) = engine(2, 8) else { return };
    let Some(fresh) = engine_fresh() else { return };
    let prompts = common::reference_prompts();
    let submit_plain = |engine: &LlamaCppEngine, prompt: &Prompt, tag: usize| {
        let request = validate(engine, tag, prompt.clone(), None, params(12)).unwrap();
        let (sender, receiver) = events();
        engine.submit(request, tag, sender).unwrap();
        receiver
    };
    let first = finish(&mut submit_plain(&engine, &prompts[0], 0));
    assert_eq!(first.cached_prompt_tokens, 0, "nothing to reuse yet");
    // The second guard prompt shares the instruction with the first, which has finished: it
    // goes to the first's slot, whose cache still holds it.
    let second = finish(&mut submit_plain(&engine, &prompts[1], 1));
    assert!(
        second.cached_prompt_tokens > 90,
        "{}",
        second.cached_prompt_tokens
    );
    // And generates what a fresh engine does from scratch.
    let reference = finish(&mut submit_plain(&fresh, &prompts[1], 1));
    assert_eq!(reference.cached_prompt_tokens, 0);
    common::agree_until_near_tie("reused", &second, &reference);
}

fn engine_fresh() -> Option<LlamaCppEngine> {
    engine(1, 8)
}
