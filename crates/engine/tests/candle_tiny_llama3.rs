//! A tiny random model with Llama 3 shapes (GQA, llama3 RoPE scaling, tied embeddings, the real
//! Llama 3 tokenizer), written here as safetensors, against transformers' logits for the same
//! weights; and a backward pass that reaches every weight. On the CPU, as the references.
#![cfg(feature = "candle")]

mod common;

use candle_core::{DType, Device, Tensor};
use guardreasoner_engine::backends::candle::llama::KvCache;
use guardreasoner_engine::backends::candle::{CandleEngine, CandleOptions};
use guardreasoner_engine::{DeviceSpec, EngineError};

#[test]
fn tiny_llama3_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    if common::write_tiny_model(dir.path()).is_none() {
        return;
    }
    let engine = CandleEngine::load_dir(
        dir.path(),
        CandleOptions {
            device: DeviceSpec::Cpu,
            context_per_sequence: 1024,
            ..CandleOptions::default()
        },
    )
    .unwrap();
    let reference = candle_core::safetensors::load(
        common::fixture("tiny_llama3_reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let expected_ids: Vec<u32> = reference["ids"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let ids = engine
        .tokenizer()
        .encode(&common::reference_prompts()[1])
        .unwrap();
    assert_eq!(ids, expected_ids);
    assert_eq!(ids[0], 128000, "BOS from the tokenizer");
    let logits = engine.logits(&ids).unwrap();
    let slice = reference["logits.slice"].to_vec2::<f32>().unwrap();
    let argmax: Vec<i64> = reference["logits.argmax"].to_vec1().unwrap();
    let rows = &logits[logits.len() - slice.len()..];
    let mut worst = 0f32;
    for (position, row) in rows.iter().enumerate() {
        for (ours, theirs) in row.iter().zip(&slice[position]) {
            worst = worst.max((ours - theirs).abs());
        }
    }
    assert!(worst < 1e-3, "largest logit difference {worst}");
    eprintln!("largest logit difference from transformers: {worst:e}");
    for (position, row) in rows.iter().enumerate() {
        // Near-ties may flip between two implementations; a real mismatch is a clear gap.
        let ours = guardreasoner_engine::sampling::argmax(row) as usize;
        let theirs = argmax[position] as usize;
        assert!(
            row[ours] - row[theirs] < 1e-3,
            "position {position}: argmax {ours} vs {theirs}"
        );
    }

    // The cached path (prefix, then one token at a time) gives the same logits as one pass.
    let model = engine.model();
    let device = Device::Cpu;
    let mut cache = KvCache::default();
    let split = ids.len() - 3;
    model
        .forward(
            &Tensor::new(&ids[..split], &device)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            &mut cache,
        )
        .unwrap();
    for (offset, &id) in ids[split..].iter().enumerate() {
        let step = model
            .forward_last(
                &Tensor::new(&[id], &device).unwrap().unsqueeze(0).unwrap(),
                &mut cache,
            )
            .unwrap();
        let step: Vec<f32> = step.squeeze(0).unwrap().to_vec1().unwrap();
        let full = &logits[split + offset];
        let difference = step
            .iter()
            .zip(full)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            difference < 1e-4,
            "position {}: {difference}",
            split + offset
        );
    }
}

#[test]
fn a_backward_pass_reaches_every_weight() {
    let dir = tempfile::tempdir().unwrap();
    if common::write_tiny_model(dir.path()).is_none() {
        return;
    }
    let engine = CandleEngine::load_dir(
        dir.path(),
        CandleOptions {
            device: DeviceSpec::Cpu,
            context_per_sequence: 256,
            ..CandleOptions::default()
        },
    )
    .unwrap();
    let (trainable, vars) = engine.model().trainable().unwrap();
    // Embedding (tied to the output), 9 per block, the final norm.
    assert_eq!(vars.len(), 1 + 2 * 9 + 1);
    let ids = engine
        .tokenizer()
        .encode_text("Is this request harmful? No.")
        .unwrap();
    let tokens = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = trainable.forward(&tokens, &mut KvCache::default()).unwrap();
    // The same numbers as the inference model, up to summation order: with gradients tracked,
    // RMSNorm, RoPE and the softmax run as hand-written operations (`ops.rs`).
    let plain = engine
        .model()
        .forward(&tokens, &mut KvCache::default())
        .unwrap();
    let difference: f32 = (&logits - &plain)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(
        difference < 1e-4,
        "the trainable model's logits differ by {difference}"
    );

    // Next-token cross-entropy, written with differentiable operations.
    let (_, length, _) = logits.dims3().unwrap();
    let predictions = logits.squeeze(0).unwrap().narrow(0, 0, length - 1).unwrap();
    let max = predictions.max_keepdim(1).unwrap();
    let log_z = (predictions
        .broadcast_sub(&max)
        .unwrap()
        .exp()
        .unwrap()
        .sum_keepdim(1)
        .unwrap()
        .log()
        .unwrap()
        + &max)
        .unwrap();
    let targets = Tensor::new(&ids[1..], &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let picked = predictions.gather(&targets, 1).unwrap();
    let loss = (log_z - picked).unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in &vars {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let size: f32 = grad
            .to_dtype(DType::F32)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(
            size > 0.0 && size.is_finite(),
            "{name}: gradient size {size}"
        );
    }
}

#[test]
fn bad_model_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let load_error = || {
        CandleEngine::load_dir(dir.path(), CandleOptions::default())
            .err()
            .unwrap()
            .to_string()
    };
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "mistral", "architectures": ["MistralForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}"#).unwrap();
    let error = load_error();
    assert!(
        error.contains("config.json") && error.contains("not supported"),
        "{error}"
    );

    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}"#).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": broken}",
    )
    .unwrap();
    let error = load_error();
    assert!(
        error.contains("model.safetensors") && error.contains("safetensors"),
        "{error}"
    );

    // Sizes no Llama has are refused before anything divides by them.
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 0, "head_dim": 8}"#).unwrap();
    let error = load_error();
    assert!(
        error.contains("config.json") && error.contains("num_attention_heads"),
        "{error}"
    );

    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\",\n \"vocab_size\": \"ten\"}",
    )
    .unwrap();
    let error = load_error();
    assert!(
        error.contains("config.json") && error.contains("line 2"),
        "{error}"
    );
}

#[test]
fn truncated_and_corrupt_gguf_files_are_clear_errors() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // The head count's value, 0: the u32 after the key (its u64 length, its bytes) and the type.
    let key = b"llama.attention.head_count";
    let mut entry = (key.len() as u64).to_le_bytes().to_vec();
    entry.extend_from_slice(key);
    let at = bytes
        .windows(entry.len())
        .position(|w| w == entry.as_slice())
        .expect("the head count's key")
        + entry.len()
        + 4;
    let mut no_heads = bytes.clone();
    no_heads[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    for (name, content) in [
        ("no-heads.gguf", no_heads),
        ("truncated.gguf", bytes[..bytes.len() / 3].to_vec()),
        ("header.gguf", bytes[..100].to_vec()),
        ("text.gguf", b"hello".to_vec()),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        match CandleEngine::load_gguf(&file, CandleOptions::default()) {
            Err(EngineError::InvalidModel { path, message }) => assert_eq!(path, file, "{message}"),
            Err(other) => panic!("{name}: {other}"),
            Ok(_) => panic!("{name} loaded"),
        }
    }
}
