//! The candle backend against Hugging Face transformers and llama.cpp, which we did not write.
//! On the CPU (`DeviceSpec::Cpu`), where the references were made: a GPU sums in other orders.
#![cfg(feature = "candle")]

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use guardreasoner_engine::backends::candle::load::Weights;
use guardreasoner_engine::backends::candle::tokenizer::GuardTokenizer;
use guardreasoner_engine::backends::candle::{CandleEngine, CandleOptions};
use guardreasoner_engine::{DeviceSpec, Generate, SamplingParams};

fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(common::fixture(name), &Device::Cpu).unwrap()
}

fn ids(tensor: &Tensor) -> Vec<u32> {
    tensor
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

/// Compares our logits (rows = positions) with a reference summary: the first ids' logits, the
/// argmax and the logsumexp over the whole vocabulary.
fn assert_logits_match(
    ours: &[Vec<f32>],
    reference: &HashMap<String, Tensor>,
    prefix: &str,
    tolerance: f32,
) {
    let slice = reference[&format!("{prefix}logits.slice")]
        .to_vec2::<f32>()
        .unwrap();
    let argmax = ids(&reference[&format!("{prefix}logits.argmax")]);
    let logsumexp = reference[&format!("{prefix}logits.logsumexp")]
        .to_vec1::<f32>()
        .unwrap();
    let rows = &ours[ours.len() - slice.len()..];
    let mut worst = 0f32;
    for (position, row) in rows.iter().enumerate() {
        for (ours, theirs) in row.iter().zip(&slice[position]) {
            worst = worst.max((ours - theirs).abs());
        }
        let our_argmax = guardreasoner_engine::sampling::argmax(row);
        assert_eq!(our_argmax, argmax[position], "{prefix} position {position}");
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let ours_lse = max + row.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
        assert!(
            (ours_lse - logsumexp[position]).abs() < tolerance,
            "{prefix} logsumexp {ours_lse} vs {}",
            logsumexp[position]
        );
    }
    assert!(
        worst < tolerance,
        "{prefix}: largest logit difference {worst}"
    );
}

fn greedy(tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens: tokens,
        ..SamplingParams::default()
    }
}

#[test]
fn smollm2_f32_matches_transformers_logits_tokens_and_greedy_text() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let options = CandleOptions {
        device: DeviceSpec::Cpu,
        context_per_sequence: 512,
        weights: Weights::F32,
    };
    let mut engine = CandleEngine::load_gguf(&path, options).unwrap();
    let reference = reference("smollm2_reference.safetensors");
    for (index, prompt) in common::reference_prompts().iter().enumerate() {
        let prefix = format!("prompt{index}.");
        let expected_ids = ids(&reference[&format!("{prefix}ids")]);
        let our_ids = engine.tokenizer().encode(prompt).unwrap();
        assert_eq!(our_ids, expected_ids, "prompt {index} token ids");
        let logits = engine.logits(&our_ids).unwrap();
        assert_logits_match(&logits, &reference, &prefix, 1e-3);

        common::assert_greedy_matches_transformers(&mut engine, index, prompt);
    }
}

#[cfg(feature = "llama-cpp")]
#[test]
fn smollm2_quantized_greedy_matches_llama_cpp_and_tokenizers_agree() {
    use guardreasoner_engine::backends::llama_cpp::{LlamaCppEngine, LlamaCppOptions};
    let Some(path) = common::smollm2() else {
        return;
    };
    let mut candle = CandleEngine::load_gguf(
        &path,
        CandleOptions {
            device: DeviceSpec::Cpu,
            context_per_sequence: 512,
            ..CandleOptions::default()
        },
    )
    .unwrap();
    let mut llama = LlamaCppEngine::load(
        &path,
        LlamaCppOptions {
            device: DeviceSpec::Cpu,
            context_per_sequence: 512,
            max_batch: 1,
            ..LlamaCppOptions::default()
        },
    )
    .unwrap();
    for text in common::TRICKY
        .iter()
        .map(|t| t.to_string())
        .chain(common::reference_prompts().iter().map(|p| p.text()))
    {
        assert_eq!(
            candle.tokenizer().encode_text(&text).unwrap(),
            llama.tokenize_text(&text, true),
            "{text:?}"
        );
        let content = guardreasoner_protocol::Prompt::content(&text);
        assert_eq!(
            candle.tokenizer().encode(&content).unwrap(),
            llama.tokenize(&content).unwrap(),
            "{text:?} as content"
        );
    }
    // Both run the Q4_1 weights, but with different quantized kernels (llama.cpp's and candle's,
    // each picked for the building CPU's instruction sets), whose rounding differs: free-running
    // greedy paths part at the first near-tie, after 4 tokens on one prompt on an AVX2 machine.
    // So candle is checked on llama.cpp's own path (teacher forcing): at every step it must rank
    // llama.cpp's token first, or within a near-tie of its first.
    for (index, prompt) in common::reference_prompts().into_iter().enumerate() {
        let ours = common::generate_one(&mut candle, &prompt, greedy(32));
        let theirs = common::generate_one(&mut llama, &prompt, greedy(32));
        assert!(
            !theirs.token_ids.is_empty(),
            "prompt {index}: llama.cpp generated nothing"
        );
        let free_running = ours
            .token_ids
            .iter()
            .zip(&theirs.token_ids)
            .take_while(|(a, b)| a == b)
            .count();

        let prompt_ids = candle.tokenizer().encode(&prompt).unwrap();
        let mut forced = prompt_ids.clone();
        forced.extend(&theirs.token_ids);
        let logits = candle.logits(&forced).unwrap();
        let (mut first, mut widest_gap) = (0, 0.0f32);
        for (step, &token) in theirs.token_ids.iter().enumerate() {
            let row = &logits[prompt_ids.len() - 1 + step];
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let gap = best - row[token as usize];
            first += usize::from(gap == 0.0);
            widest_gap = widest_gap.max(gap);
        }
        eprintln!(
            "prompt {index}: free-running greedy agrees on {free_running} tokens; on llama.cpp's \
             path of {}, candle ranks its token first {first} times, widest logit gap {widest_gap:.3}",
            theirs.token_ids.len()
        );
        assert!(
            widest_gap < NEAR_TIE,
            "prompt {index}: candle puts llama.cpp's token {widest_gap} logits below its first\n{:?}\n{:?}",
            ours.token_ids,
            theirs.token_ids
        );
        assert!(
            first * 4 >= theirs.token_ids.len() * 3,
            "prompt {index}: candle ranks llama.cpp's token first at only {first} of {} steps",
            theirs.token_ids.len()
        );
    }
}

/// How far below candle's first token llama.cpp's may be, in logits, for the two to count as
/// tied: the spread of two quantized kernels' rounding on the same Q4_1 weights.
const NEAR_TIE: f32 = 1.0;

#[test]
fn llama3_tokenizer_matches_transformers_on_tricky_text() {
    let Some(path) = common::llama3_tokenizer() else {
        return;
    };
    let tokenizer = GuardTokenizer::from_file(&path, vec![128001, 128009]).unwrap();
    let reference: HashMap<String, Vec<u32>> = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("llama3_tokenizer_reference.json")).unwrap(),
    )
    .unwrap();
    assert!(reference.len() >= 13);
    for (text, expected) in &reference {
        assert_eq!(&tokenizer.encode_text(text).unwrap(), expected, "{text:?}");
    }
    // Streaming token by token rebuilds the text exactly, emoji and all (special tokens render
    // as nothing).
    for text in common::TRICKY {
        let ids = tokenizer.encode_text(text).unwrap();
        let mut stream = tokenizer.text_stream();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(id).unwrap());
        }
        streamed.push_str(&stream.finish());
        let expected = text.replace("<|begin_of_text|>", "");
        assert_eq!(streamed, expected);
    }
}

#[cfg(feature = "llama-cpp")]
#[test]
fn both_backends_render_the_models_chat_template_as_transformers_does() {
    use guardreasoner_engine::backends::llama_cpp::{LlamaCppEngine, LlamaCppOptions};
    use guardreasoner_engine::chat_template::Message;
    let Some(path) = common::smollm2() else {
        return;
    };
    let reference: HashMap<String, String> = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("smollm2_chat_template_reference.json")).unwrap(),
    )
    .unwrap();
    let candle = CandleEngine::load_gguf(
        &path,
        CandleOptions {
            device: DeviceSpec::Cpu,
            context_per_sequence: 256,
            ..CandleOptions::default()
        },
    )
    .unwrap();
    let llama = LlamaCppEngine::load(
        &path,
        LlamaCppOptions {
            device: DeviceSpec::Cpu,
            context_per_sequence: 256,
            max_batch: 1,
            ..LlamaCppOptions::default()
        },
    )
    .unwrap();
    assert_eq!(reference.len(), 3);
    for (prompt, expected) in &reference {
        for engine in [&candle as &dyn Generate, &llama as &dyn Generate] {
            let template = engine
                .chat_template()
                .expect("SmolLM2's GGUF carries a chat template");
            assert_eq!(
                &template
                    .render(
                        &[Message::user(guardreasoner_protocol::Prompt::content(
                            prompt
                        ))],
                        true
                    )
                    .unwrap()
                    .text(),
                expected,
                "{}",
                engine.info().backend
            );
        }
    }
}
