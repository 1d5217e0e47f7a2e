//! The tiny formula model that `scripts/fixtures/reference_train.py` builds in transformers, built
//! here in candle: SmolLM2-shaped (tied embeddings, grouped-query attention), 96 tokens, 2 blocks.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use guardreasoner_engine::backends::candle::llama::{
    Block, Embedding, Llama, LlamaConfig, RopeLayout, Weight,
};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 96,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        rope_freq_factors: None,
        rope_layout: RopeLayout::Half,
        max_position_embeddings: 64,
    }
}

/// `0.02 sin(0.37 i + 1.3 k)` (norms `1 + 0.1 sin(...)`), in f64 then f32, for the k-th tensor in
/// transformers' order, `offset` added to k (the reference model of the DPO fixture is offset 50).
fn formula(shape: &[usize], k: usize, norm: bool) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let s = (0.37 * i as f64 + 1.3 * k as f64).sin();
            (if norm { 1.0 + 0.1 * s } else { 0.02 * s }) as f32
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

pub fn tiny_model(offset: usize) -> Llama {
    let c = config();
    let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_heads * d, c.num_kv_heads * d);
    let mut k = offset;
    let mut next = |shape: &[usize], norm: bool| {
        let t = formula(shape, k, norm);
        k += 1;
        t
    };
    let table = next(&[c.vocab_size, h], false);
    let blocks = (0..c.num_layers)
        .map(|_| Block {
            attention_norm: next(&[h], true),
            wq: Weight::Dense(next(&[q, h], false)),
            wk: Weight::Dense(next(&[kv, h], false)),
            wv: Weight::Dense(next(&[kv, h], false)),
            wo: Weight::Dense(next(&[h, q], false)),
            mlp_norm: next(&[h], true),
            w_gate: Weight::Dense(next(&[i, h], false)),
            w_up: Weight::Dense(next(&[i, h], false)),
            w_down: Weight::Dense(next(&[h, i], false)),
        })
        .collect();
    let norm = next(&[h], true);
    Llama::new(
        c,
        Embedding {
            table: table.clone(),
        },
        blocks,
        norm,
        Weight::Dense(table),
        64,
        &Device::Cpu,
    )
    .unwrap()
}

/// The fixture's token sequences (same formulas as the script).
pub fn ramp(a: usize, b: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((a * i + b) % 96) as u32).collect()
}
