//! Times R-SFT steps of our trainer on a randomly initialised Llama of a named shape: forward,
//! backward and optimizer separately, tokens per second and peak memory, one JSON line per step.
//! `scripts/bench/train_compare.py` runs it beside PyTorch's eager trainer on the same shape.
//!
//!     cargo run --release -p guardreasoner-train --example sft_step_bench -- \
//!         --shape smollm2-135m --length 256 --steps 5 [--device cpu|cuda]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use guardreasoner_engine::backends::candle::llama::{
    Block, Embedding, Llama, Llama3RopeScaling, LlamaConfig, RopeLayout, Weight,
};
use guardreasoner_train::loss::{self, Batch};
use guardreasoner_train::model::{Precision, Trainable};
use guardreasoner_train::optim::{self, AdamW, AdamWConfig};

fn shape(name: &str) -> LlamaConfig {
    let base = LlamaConfig {
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        rope_scaling: None,
        rope_freq_factors: None,
        rope_layout: RopeLayout::Half,
        max_position_embeddings: 8192,
    };
    match name {
        "smollm2-135m" => base,
        "llama-3.2-1b" => LlamaConfig {
            vocab_size: 128256,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            rope_theta: 500000.0,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            }),
            max_position_embeddings: 131072,
            ..base
        },
        other => panic!("unknown shape {other}: smollm2-135m or llama-3.2-1b"),
    }
}

fn random_model(c: LlamaConfig, length: usize, device: &Device) -> candle_core::Result<Llama> {
    // Seeded on the CPU, then moved: the same weights on every device and in every run, so that
    // runs on the CPU and on a GPU can be compared loss for loss. Uniform with a standard
    // deviation of 0.02.
    use rand::{Rng, SeedableRng};
    let rng = std::cell::RefCell::new(rand::rngs::StdRng::seed_from_u64(7));
    let bound = 0.02f32 * 3f32.sqrt();
    let w = |rows: usize, cols: usize| {
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| rng.borrow_mut().random_range(-bound..bound))
            .collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu)?.to_device(device)
    };
    let ones = |n: usize| Tensor::ones(n, DType::F32, device);
    let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let table = w(c.vocab_size, h)?;
    let blocks = (0..c.num_layers)
        .map(|_| {
            Ok(Block {
                attention_norm: ones(h)?,
                wq: Weight::Dense(w(c.num_heads * d, h)?),
                wk: Weight::Dense(w(c.num_kv_heads * d, h)?),
                wv: Weight::Dense(w(c.num_kv_heads * d, h)?),
                wo: Weight::Dense(w(h, c.num_heads * d)?),
                mlp_norm: ones(h)?,
                w_gate: Weight::Dense(w(i, h)?),
                w_up: Weight::Dense(w(i, h)?),
                w_down: Weight::Dense(w(h, i)?),
            })
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let norm = ones(h)?;
    Llama::new(
        c,
        Embedding {
            table: table.clone(),
        },
        blocks,
        norm,
        Weight::Dense(table),
        length,
        device,
    )
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut shape_name, mut length, mut steps, mut device_name, mut batch) = (
        "smollm2-135m".to_string(),
        256usize,
        5usize,
        "cpu".to_string(),
        1usize,
    );
    let mut precision = Precision::F32;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or("a flag without its value")?;
        match flag.as_str() {
            "--shape" => shape_name = value,
            "--length" => length = value.parse()?,
            "--steps" => steps = value.parse()?,
            "--device" => device_name = value,
            "--batch" => batch = value.parse()?,
            "--precision" => precision = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let device = match device_name.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => return Err(format!("unknown device {other}").into()),
    };
    let config = shape(&shape_name);
    let vocab = config.vocab_size;
    let mut model = Trainable::new(&random_model(config, length + 1, &device)?)?;
    model.set_precision(precision)?;
    let parameters: usize = model.vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut optimizer = AdamW::new(model.var_list(), AdamWConfig::default())?;
    // Fixed pseudo-random tokens; the loss over all but the first 16 positions (a short prompt).
    let sequences: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..=length)
                .map(|t| ((t * 7919 + b * 104729 + 13) % vocab) as u32)
                .collect()
        })
        .collect();
    let views: Vec<(&[u32], usize)> = sequences.iter().map(|s| (s.as_slice(), 16)).collect();
    let vars = model.var_list();
    for step in 0..steps {
        let started = Instant::now();
        let data = Batch::new(&views, 0, &device)?;
        let scored = data.mask.sum_all()?.to_scalar::<f32>()? as f64;
        let loss = loss::nll_sum(&model.step_model()?, &data)?;
        let loss_value = loss.to_scalar::<f32>()? as f64 / scored;
        let forward = started.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        device.synchronize()?;
        let backward = started.elapsed().as_secs_f64() - forward;
        let norm = optim::grad_norm(&grads, &vars)? / scored;
        let clip = optim::clip_coefficient(norm, 1.0);
        optimizer.step(&grads, 5e-5, clip / scored)?;
        drop(grads);
        device.synchronize()?;
        let total = started.elapsed().as_secs_f64();
        println!(
            "{{\"impl\": \"guardreasoner\", \"shape\": \"{shape_name}\", \"device\": \"{device_name}\", \"precision\": \"{precision}\", \
             \"parameters\": {parameters}, \"length\": {length}, \"batch\": {batch}, \"step\": {step}, \
             \"loss\": {loss_value:.5}, \"forward_s\": {forward:.4}, \"backward_s\": {backward:.4}, \
             \"optimizer_s\": {:.4}, \"step_s\": {total:.4}, \"tokens_per_s\": {:.2}, \"peak_rss_mib\": {:.0}}}",
            total - forward - backward,
            (batch * length) as f64 / total,
            peak_rss_mib()
        );
    }
    Ok(())
}
