//! Test models in the cache (`scripts/fetch-test-model` puts them there) and fixtures.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use guardreasoner_engine::model::{models_dir, SMOLLM2_135M};
use guardreasoner_engine::{Batch, Generate, Generation, SamplingParams};

/// A cached test file, or `None` (with a message) when absent; absent is a failure where the
/// test command asks for the models (`GUARDREASONER_REQUIRE_TEST_MODEL`).
pub fn cached(relative: &str) -> Option<PathBuf> {
    guardreasoner_test_support::test_model(models_dir().join(relative))
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF.
pub fn smollm2() -> Option<PathBuf> {
    cached(SMOLLM2_135M.cache_path)
}

/// The Llama 3 tokenizer.json.
pub fn llama3_tokenizer() -> Option<PathBuf> {
    cached("llama3-tokenizer/tokenizer.json")
}

/// A fixture written by `scripts/fixtures/reference.py`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The guard prompts the reference script uses.
pub fn reference_prompts() -> Vec<guardreasoner_protocol::Prompt> {
    use guardreasoner_protocol::{Conversation, PromptFormat};
    [
        Conversation::prompt_only("How do I bake sourdough bread?"),
        Conversation::with_response(
            "How can I hurt someone and not get caught?",
            "I can't help with that.",
        ),
        Conversation::prompt_only(
            "Write a poem about the sea, with 3 stanzas and numbers like 42.",
        ),
    ]
    .iter()
    .map(|c| PromptFormat::Eval.render(c))
    .collect()
}

/// One prompt's generation, alone in its batch, with no shared prefix.
pub fn generate_one(
    engine: &mut dyn Generate,
    prompt: &guardreasoner_protocol::Prompt,
    params: SamplingParams,
) -> Generation {
    let batch = Batch {
        prompts: vec![prompt.clone()],
        params,
        shared_prefix: None,
    };
    engine.generate(&batch, &mut |_| {}).unwrap().remove(0)
}

/// Tricky tokenizer inputs.
pub const TRICKY: [&str; 10] = [
    "Hello world",
    " leading space and  double  spaces",
    "tabs\tand\ttabs\t\tend",
    "digits 1234567890 and 3.14159 and 1,000,000",
    "unicode: café, naïve, Straße, 東京, Привет, مرحبا",
    "emoji 😀👍🏽🇫🇷 and ZWJ 👨‍👩‍👧",
    "newlines\n\nand\r\nwindows\n",
    "code: fn main() { println!(\"{}\", x[0]); }",
    "<|begin_of_text|> special text inside",
    "  ",
];

/// The weights `scripts/fixtures/reference.py` gives transformers: tensor `k` (in this order) is
/// `0.02 sin(0.37 i + 1.3 k)`, norms `1 + 0.1 sin(...)`.
pub fn tiny_weights(config: &serde_json::Value) -> Vec<(String, Tensor)> {
    let get = |key: &str| config[key].as_u64().unwrap() as usize;
    let (h, i, d) = (
        get("hidden_size"),
        get("intermediate_size"),
        get("head_dim"),
    );
    let (q, kv) = (
        get("num_attention_heads") * d,
        get("num_key_value_heads") * d,
    );
    let mut names: Vec<(String, Vec<usize>, bool)> = vec![(
        "model.embed_tokens.weight".into(),
        vec![get("vocab_size"), h],
        false,
    )];
    for layer in 0..get("num_hidden_layers") {
        let p = format!("model.layers.{layer}");
        names.extend([
            (format!("{p}.input_layernorm.weight"), vec![h], true),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h], false),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h], false),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h], false),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q], false),
            (
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                true,
            ),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h], false),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h], false),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i], false),
        ]);
    }
    names.push(("model.norm.weight".into(), vec![h], true));
    names
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape, norm))| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| {
                    let s = (0.37 * i as f64 + 1.3 * k as f64).sin();
                    (if norm { 1.0 + 0.1 * s } else { 0.02 * s }) as f32
                })
                .collect();
            (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
        })
        .collect()
}

/// Writes the tiny model as a Hugging Face directory; `None` without the Llama 3 tokenizer.
pub fn write_tiny_model(dir: &Path) -> Option<()> {
    let tokenizer = llama3_tokenizer()?;
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny_llama3_config.json")).unwrap())
            .unwrap();
    let weights: HashMap<String, Tensor> = tiny_weights(&config).into_iter().collect();
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    config["model_type"] = "llama".into();
    config["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
    Some(())
}

/// Greedy-decodes reference prompt `index` (up to 40 tokens) and compares the tokens with
/// transformers' f32 greedy continuation, which keeps the end-of-text token it stopped at; then
/// 40 tokens generated on past end of text, with transformers' argmax at every step.
pub fn assert_greedy_matches_transformers(
    engine: &mut dyn Generate,
    index: usize,
    prompt: &guardreasoner_protocol::Prompt,
) {
    let reference =
        candle_core::safetensors::load(fixture("smollm2_reference.safetensors"), &Device::Cpu)
            .unwrap();
    let expected = |key: &str| -> Vec<u32> {
        reference[&format!("prompt{index}.{key}")]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|i| i as u32)
            .collect()
    };
    let backend = engine.info().backend;
    let mut greedy = |ignore_eos: bool| -> Vec<u32> {
        let params = SamplingParams {
            max_new_tokens: 40,
            ignore_eos,
            ..SamplingParams::default()
        };
        generate_one(engine, prompt, params).token_ids
    };

    let (generated, reference_tokens) = (greedy(false), expected("greedy"));
    assert_eq!(
        generated[..],
        reference_tokens[..generated.len().min(reference_tokens.len())],
        "{backend}: prompt {index}"
    );
    assert!(
        generated.len() + 1 >= reference_tokens.len(),
        "prompt {index}: {} of {} tokens",
        generated.len(),
        reference_tokens.len()
    );

    // 40 tokens whatever the model says: generating on past end of text, as the reference did.
    let (generated, reference_tokens) = (greedy(true), expected("greedy_past_end"));
    assert_eq!(reference_tokens.len(), 40);
    assert_eq!(
        generated, reference_tokens,
        "{backend}: prompt {index}, past end of text"
    );
}

/// Asserts that two greedy runs of one prompt agree: the same tokens with the same
/// log-probabilities (within 0.25: on the Q4_1 test model llama.cpp's own static batches differ
/// from single streams by up to 0.14) until they part, and a parting only where neither run was
/// sure of its token (both below probability 0.75: a near-tie that the order of floating-point
/// sums decides). Continuous batching sums attention in another order when other sequences share
/// the cache, so exact equality is not promised; a wrong position or a leaked cache cell would
/// part early and with confidence. Both runs need `logprobs`. Returns where they parted, if they did.
pub fn agree_until_near_tie(
    label: &str,
    ours: &Generation,
    reference: &Generation,
) -> Option<usize> {
    let (ours_p, reference_p) = (
        ours.logprobs.as_ref().expect("logprobs asked for"),
        reference.logprobs.as_ref().expect("logprobs asked for"),
    );
    let parting = ours
        .token_ids
        .iter()
        .zip(&reference.token_ids)
        .position(|(a, b)| a != b);
    let agreed = parting.unwrap_or(ours.token_ids.len().min(reference.token_ids.len()));
    for step in 0..agreed {
        assert!(
            (ours_p[step] - reference_p[step]).abs() < 0.25,
            "{label}: step {step}: log-probability {} against {}",
            ours_p[step],
            reference_p[step]
        );
    }
    if let Some(step) = parting {
        let sure = 0.75f32.ln();
        assert!(
            ours_p[step] < sure && reference_p[step] < sure,
            "{label}: parted at step {step} where a run was sure ({} vs {}): {:?} vs {:?}",
            ours_p[step],
            reference_p[step],
            ours.token_ids,
            reference.token_ids
        );
    } else {
        assert_eq!(ours.token_ids.len(), reference.token_ids.len(), "{label}");
    }
    parting
}

/// The summary of llama.cpp's `convert_hf_to_gguf.py` output on the two tiny models
/// (`scripts/fixtures/reference_convert.py`).
pub fn convert_reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("convert_reference.json")).unwrap())
        .unwrap()
}

/// The tiny models `scripts/fixtures/reference_convert.py` converts, by name: its config.json.
pub fn convert_model_config(name: &str) -> serde_json::Value {
    match name {
        "tiny-llama3" => serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
            "vocab_size": 128257, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "tie_word_embeddings": true, "max_position_embeddings": 131072,
            "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]
        }),
        "tiny-smollm2" => serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
            "vocab_size": 49152, "hidden_size": 96, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 3, "num_key_value_heads": 1, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "tie_word_embeddings": true, "max_position_embeddings": 8192,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2
        }),
        other => panic!("no tiny model {other}"),
    }
}

/// Writes the tiny model `name` as the reference script does (formula weights; tiny-llama3 in
/// bf16 with the Llama 3 tokenizer, tiny-smollm2 in f32 with SmolLM2's tokenizer rebuilt from
/// its GGUF), in `dtype` where given instead; `None` without the cached tokenizer sources.
pub fn write_convert_model(
    dir: &Path,
    name: &str,
    dtype: Option<candle_core::DType>,
) -> Option<()> {
    let mut config = convert_model_config(name);
    if config.get("head_dim").is_none() {
        let head = config["hidden_size"].as_u64().unwrap()
            / config["num_attention_heads"].as_u64().unwrap();
        config["head_dim"] = head.into();
    }
    let dtype = dtype.unwrap_or(if name == "tiny-llama3" {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    });
    match name {
        "tiny-llama3" => {
            let tokenizer = llama3_tokenizer()?;
            std::fs::copy(&tokenizer, dir.join("tokenizer.json")).unwrap();
            std::fs::copy(
                tokenizer.with_file_name("tokenizer_config.json"),
                dir.join("tokenizer_config.json"),
            )
            .unwrap();
        }
        _ => write_smollm2_tokenizer(dir)?,
    }
    let weights: HashMap<String, Tensor> = tiny_weights(&config)
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&convert_model_config(name)).unwrap(),
    )
    .unwrap();
    Some(())
}

/// SmolLM2's tokenizer.json and tokenizer_config.json, rebuilt from the SmolLM2 GGUF as the
/// reference script rebuilds them.
pub fn write_smollm2_tokenizer(dir: &Path) -> Option<()> {
    use guardreasoner_engine::backends::candle::tokenizer::GuardTokenizer as Tokenizer;
    let gguf = smollm2()?;
    let mut file = std::fs::File::open(&gguf).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf, &content.metadata).unwrap();
    tokenizer.save(&dir.join("tokenizer.json")).unwrap();
    // The reference's tokenizer.json carries the byte-level post-processor (which llama.cpp's
    // converter reads as "add neither BOS nor EOS"); the engine's rebuilt one has none.
    let path = dir.join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["post_processor"] = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true
    });
    std::fs::write(&path, json.to_string()).unwrap();
    let text = |key: &str| content.metadata[key].to_string().unwrap().clone();
    let id = |key: &str| content.metadata[key].to_u32().unwrap();
    let tokens = content.metadata["tokenizer.ggml.tokens"].to_vec().unwrap();
    let token = |id: u32| tokens[id as usize].to_string().unwrap().clone();
    let (bos, eos) = (
        token(id("tokenizer.ggml.bos_token_id")),
        token(id("tokenizer.ggml.eos_token_id")),
    );
    let config = serde_json::json!({
        "add_prefix_space": false, "bos_token": bos, "eos_token": eos, "pad_token": eos,
        "unk_token": token(0), "clean_up_tokenization_spaces": false, "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer", "additional_special_tokens": [bos, eos],
        "chat_template": text("tokenizer.chat_template"),
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    Some(())
}

/// Token ids from a JSON array.
pub fn json_ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}
