//! The llama.cpp backend on the real-weights test model, SmolLM2-135M-Instruct (Q4_1 GGUF).
//! Comparisons with references made on the CPU run on the CPU (`DeviceSpec::Cpu`).
#![cfg(feature = "llama-cpp")]

mod common;

use std::path::PathBuf;

use guardreasoner_engine::backends::llama_cpp::{FlashAttention, LlamaCppEngine, LlamaCppOptions};
use guardreasoner_engine::{
    Batch, DeviceSpec, EngineError, Generate, Generation, SamplingParams, StopReason,
};
use guardreasoner_protocol::{Prompt, PromptFormat};

fn test_model() -> Option<PathBuf> {
    common::smollm2()
}

/// The test model loaded with `options`, or `None` where it is absent (and not required).
fn load(options: LlamaCppOptions) -> Option<LlamaCppEngine> {
    let path = test_model()?;
    Some(LlamaCppEngine::load(&path, options).unwrap())
}

fn engine(max_batch: usize) -> Option<LlamaCppEngine> {
    load(LlamaCppOptions {
        context_per_sequence: 1024,
        max_batch,
        ..LlamaCppOptions::default()
    })
}

fn guard_prompts() -> Vec<Prompt> {
    common::reference_prompts()
}

fn greedy(tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens: tokens,
        ..SamplingParams::default()
    }
}

#[test]
fn greedy_generation_is_deterministic_and_streams_what_it_returns() {
    let Some(mut engine) = engine(1) else { return };
    let batch = Batch {
        prompts: vec![guard_prompts()[0].clone()],
        params: greedy(24),
        shared_prefix: None,
    };
    let mut streamed = String::new();
    let first = engine
        .generate(&batch, &mut |event| streamed.push_str(event.text))
        .unwrap();
    let second = engine.generate(&batch, &mut |_| {}).unwrap();
    assert_eq!(first[0].text, streamed);
    assert_eq!(first[0].token_ids, second[0].token_ids);
    assert_eq!(first[0].generated_tokens, first[0].token_ids.len());
    assert!(first[0].generated_tokens > 0 && first[0].generated_tokens <= 24);
    assert!(first[0].prompt_tokens > 100);
}

#[test]
fn batched_and_prefix_cached_generation_agrees_with_single_stream() {
    let Some(mut single) = engine(1) else { return };
    let Some(mut batched) = engine(4) else { return };
    let prompts = guard_prompts();
    let params = SamplingParams {
        logprobs: true,
        ..greedy(24)
    };
    let alone: Vec<Generation> = prompts
        .iter()
        .map(|prompt| {
            let batch = Batch {
                prompts: vec![prompt.clone()],
                params: params.clone(),
                shared_prefix: Some(Prompt::new()),
            };
            single.generate(&batch, &mut |_| {}).unwrap().remove(0)
        })
        .collect();
    let batch = Batch {
        prompts: prompts.clone(),
        params,
        shared_prefix: Some(PromptFormat::Eval.shared_prefix()),
    };
    let mut sequences_seen = std::collections::BTreeSet::new();
    let together = batched
        .generate(&batch, &mut |event| {
            sequences_seen.insert(event.sequence);
        })
        .unwrap();
    assert_eq!(
        sequences_seen.into_iter().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    for (index, generation) in together.iter().enumerate() {
        // Cold slots: the first evaluates the instruction; the others wait for it and copy its
        // cells (the instruction is about 110 tokens).
        if index == 0 {
            assert_eq!(
                generation.cached_prompt_tokens, 0,
                "a cold slot holds nothing"
            );
        } else {
            assert!(
                generation.cached_prompt_tokens > 90,
                "prompt {index}: the instruction copied from the first slot, got {}",
                generation.cached_prompt_tokens
            );
        }
        common::agree_until_near_tie(&format!("prompt {index}"), generation, &alone[index]);
    }
    // Each slot keeps its last prompt: the next batch reuses the instruction.
    let again = batched.generate(&batch, &mut |_| {}).unwrap();
    for (index, generation) in again.iter().enumerate() {
        assert!(
            generation.cached_prompt_tokens > 90,
            "{}",
            generation.cached_prompt_tokens
        );
        common::agree_until_near_tie(&format!("again {index}"), generation, &alone[index]);
    }
    // The same batch on a fresh engine is the same output: what runs with what depends on the
    // order of the prompts, not on timing.
    let Some(mut fresh) = engine(4) else { return };
    let repeated = fresh.generate(&batch, &mut |_| {}).unwrap();
    for (index, generation) in repeated.iter().enumerate() {
        assert_eq!(
            generation.token_ids, together[index].token_ids,
            "prompt {index}"
        );
    }
}

#[test]
fn logprobs_are_returned_per_token() {
    let Some(mut engine) = engine(1) else { return };
    let params = SamplingParams {
        logprobs: true,
        ..greedy(8)
    };
    let batch = Batch {
        prompts: vec![guard_prompts()[1].clone()],
        params,
        shared_prefix: None,
    };
    let generation = engine.generate(&batch, &mut |_| {}).unwrap().remove(0);
    let logprobs = generation.logprobs.unwrap();
    assert_eq!(logprobs.len(), generation.generated_tokens);
    assert!(
        logprobs.iter().all(|&p| p <= 0.0 && p > -50.0),
        "{logprobs:?}"
    );
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let Some(mut engine) = engine(2) else { return };
    // 32 tokens past end of text, so that every run has the same length to compare.
    let prompt = guard_prompts()[2].clone();
    let mut run = |temperature: f32, seed: u64| {
        let params = SamplingParams {
            temperature,
            top_p: 0.95,
            seed,
            ignore_eos: true,
            ..greedy(32)
        };
        common::generate_one(&mut engine, &prompt, params).token_ids
    };
    let first = run(0.9, 7);
    assert_eq!(first.len(), 32);
    assert_eq!(first, run(0.9, 7), "the same seed gave other tokens");
    // Sampling is not ignored: another seed draws otherwise, and neither is greedy.
    let other_seed = run(0.9, 8);
    let greedy_tokens = run(0.0, 7);
    assert_ne!(first, other_seed, "seeds 7 and 8 drew the same 32 tokens");
    assert_ne!(first, greedy_tokens, "seed 7 drew the greedy tokens");
    assert_ne!(other_seed, greedy_tokens, "seed 8 drew the greedy tokens");
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let Some(mut engine) = engine(1) else { return };
    let long = "word ".repeat(3000);
    let batch = Batch {
        prompts: vec![Prompt::content("short"), Prompt::content(long)],
        params: greedy(4),
        shared_prefix: None,
    };
    match engine.generate(&batch, &mut |_| {}) {
        Err(EngineError::PromptTooLong {
            index: 1,
            context: 1024,
            tokens,
        }) => assert!(tokens > 1024),
        other => panic!("{other:?}"),
    }
    // The engine still works afterwards.
    let ok = Batch {
        prompts: vec![Prompt::content("hello")],
        params: greedy(2),
        shared_prefix: None,
    };
    assert_eq!(engine.generate(&ok, &mut |_| {}).unwrap().len(), 1);
}

#[test]
fn generation_stops_at_the_context_limit() {
    let Some(mut engine) = load(LlamaCppOptions {
        context_per_sequence: 160,
        max_batch: 1,
        ..LlamaCppOptions::default()
    }) else {
        return;
    };
    let prompt = guard_prompts()[0].clone();
    let tokens = engine.count_tokens(&prompt).unwrap().unwrap();
    assert!(tokens < 160);
    // Past end of text, so that the model cannot stop before the context does.
    let params = SamplingParams {
        ignore_eos: true,
        ..greedy(500)
    };
    let generation = common::generate_one(&mut engine, &prompt, params);
    assert_eq!(generation.stop, StopReason::ContextFull);
    assert_eq!(tokens + generation.generated_tokens, 160);
}

#[test]
fn truncated_and_corrupt_files_are_clear_errors() {
    let Some(path) = test_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated.gguf", bytes[..bytes.len() / 2].to_vec()),
        ("header-only.gguf", bytes[..64].to_vec()),
        ("not-gguf.gguf", b"this is not a model".to_vec()),
        ("empty.gguf", Vec::new()),
        ("garbage.gguf", {
            let mut garbage = b"GGUF\x03\x00\x00\x00".to_vec();
            garbage.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
            garbage
        }),
    ];
    for (name, content) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        let error = LlamaCppEngine::load(&file, LlamaCppOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{name} loaded"));
        let message = error.to_string();
        assert!(message.contains(name), "{name}: {message}");
    }
    let missing = LlamaCppEngine::load(&dir.path().join("absent.gguf"), LlamaCppOptions::default())
        .err()
        .unwrap();
    assert!(matches!(missing, EngineError::NotFound { .. }));
}

/// A JSON array of token ids from the llama-cpp-python fixture.

#[test]
fn tokens_and_greedy_text_match_llama_cpp_python() {
    // The reference ran with llama-cpp-python's default, plain attention.
    let Some(mut engine) = load(LlamaCppOptions {
        device: DeviceSpec::Cpu,
        context_per_sequence: 1024,
        max_batch: 1,
        flash_attention: FlashAttention::Off,
        ..LlamaCppOptions::default()
    }) else {
        return;
    };
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("smollm2_llama_cpp_reference.json")).unwrap(),
    )
    .unwrap();
    for (text, ids) in reference["tokens"].as_object().unwrap() {
        let expected = common::json_ids(ids);
        assert_eq!(engine.tokenize_text(text, true), expected, "{text:?}");
    }
    for (index, prompt) in guard_prompts().into_iter().enumerate() {
        // 40 tokens, generating on past end of text as the reference did: the same tokens, unless
        // the two part at a near-tie of the reference's.
        let past_end = SamplingParams {
            ignore_eos: true,
            ..greedy(40)
        };
        let ours = common::generate_one(&mut engine, &prompt, past_end);
        assert_eq!(ours.token_ids.len(), 40);
        let parted = near_tie_parting(&ours.token_ids, &reference, index);
        // Up to end of text: the same tokens and the same stop, or a parting no earlier than the
        // near-tie above (end of text is one of the tokens there).
        let ours = common::generate_one(&mut engine, &prompt, greedy(40));
        let python = common::json_ids(&reference["greedy"][index]);
        match parting(&ours.token_ids, &python) {
            None => {
                assert_eq!(ours.token_ids, python, "prompt {index}");
                if python.len() < 40 {
                    assert_eq!(ours.stop, StopReason::EndOfText, "prompt {index}");
                }
            }
            Some(step) => assert!(
                parted.is_some_and(|tie| tie <= step),
                "prompt {index}: parts from llama-cpp-python at step {step}, not at a near-tie\nours: {:?}\ntheirs: {python:?}",
                ours.token_ids
            ),
        }
    }
}

/// How close, in logits, llama-cpp-python's first and second choices must be for a different
/// choice of ours to count as the same computation rounded otherwise. llama.cpp's kernels differ
/// by instruction set, and the fixture was made on one CPU: a fixture made on another machine
/// chose prompt 0's 5th token otherwise than this one (AMD EPYC, AVX2), which prefers its choice
/// by 0.184.
const LLAMA_NEAR_TIE: f64 = 0.25;

/// Where two greedy paths part: the first differing step, or where the shorter one ends.
fn parting(ours: &[u32], theirs: &[u32]) -> Option<usize> {
    ours.iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .or((ours.len() != theirs.len()).then(|| ours.len().min(theirs.len())))
}

/// Where our 40 tokens past end of text part from the reference's for prompt `index`, if they
/// do; a parting must be at a near-tie of the reference's, with our token its runner-up.
fn near_tie_parting(ours: &[u32], reference: &serde_json::Value, index: usize) -> Option<usize> {
    let python = common::json_ids(&reference["greedy_past_end"][index]);
    let runner_up = common::json_ids(&reference["greedy_past_end_runner_up"][index]);
    let margins: Vec<f64> = reference["greedy_past_end_margin"][index]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_f64().unwrap())
        .collect();
    assert_eq!(python.len(), 40);
    assert_eq!((runner_up.len(), margins.len()), (40, 40));
    let step = parting(ours, &python)?;
    eprintln!(
        "prompt {index}: parts from llama-cpp-python at step {step} ({} vs {}, margin {})",
        ours[step], python[step], margins[step]
    );
    assert!(
        margins[step] < LLAMA_NEAR_TIE && ours[step] == runner_up[step],
        "prompt {index}: at step {step} ours is {} where llama-cpp-python chose {} by {} logits \
         over {}\nours: {ours:?}\ntheirs: {python:?}",
        ours[step],
        python[step],
        margins[step],
        runner_up[step]
    );
    Some(step)
}

/// On f32 weights (the Q4_1 file dequantized), llama.cpp's greedy tokens equal transformers' f32
/// greedy tokens: what is left of the quantized comparison's differences was quantization.
#[cfg(feature = "candle")]
#[test]
fn on_f32_weights_greedy_tokens_equal_transformers() {
    let Some(path) = test_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let f32_file = dir.path().join("smollm2-f32.gguf");
    guardreasoner_engine::backends::candle::load::dequantize_gguf(&path, &f32_file).unwrap();
    let mut engine = LlamaCppEngine::load(
        &f32_file,
        LlamaCppOptions {
            device: DeviceSpec::Cpu,
            context_per_sequence: 1024,
            max_batch: 1,
            ..LlamaCppOptions::default()
        },
    )
    .unwrap();
    for (index, prompt) in guard_prompts().into_iter().enumerate() {
        common::assert_greedy_matches_transformers(&mut engine, index, &prompt);
    }
}
