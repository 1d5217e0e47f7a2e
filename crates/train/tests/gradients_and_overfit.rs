//! The trainer's gradients against finite differences for every kind of parameter, mixed bf16
//! steps against f32 ones, and R-SFT driving the loss on 8 samples near zero in either precision
//! (the loop, the optimizer and the mask together).

mod common;

use candle_core::{DType, Device, Tensor};
use guardreasoner_engine::backends::candle::llama::Weight;
use guardreasoner_train::encode::Example;
use guardreasoner_train::loss::{self, Batch};
use guardreasoner_train::model::{Precision, Trainable};
use guardreasoner_train::optim::AdamWConfig;
use guardreasoner_train::sft;
use guardreasoner_train::trainer::Schedule;

/// The mean NLL of `batch` as a training step computes it (in the model's precision).
fn mean_nll(model: &Trainable, batch: &Batch) -> Tensor {
    let tokens = batch.mask.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    (loss::nll_sum(&model.step_model().unwrap(), batch).unwrap() / tokens).unwrap()
}

/// `var`'s gradient in `grads`, which must be f32.
fn gradient(
    grads: &candle_core::backprop::GradStore,
    name: &str,
    var: &candle_core::Var,
) -> Vec<f32> {
    let grad = grads
        .get(var.as_tensor())
        .unwrap_or_else(|| panic!("no gradient for {name}"));
    assert_eq!(grad.dtype(), DType::F32, "{name}");
    grad.flatten_all().unwrap().to_vec1().unwrap()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|u| (*u as f64).powi(2)).sum::<f64>().sqrt()
}

fn cosine(x: &[f32], y: &[f32]) -> f64 {
    let dot: f64 = x.iter().zip(y).map(|(u, v)| *u as f64 * *v as f64).sum();
    dot / (norm(x) * norm(y))
}

/// The analytic gradient of `var` at its largest entry against a central finite difference of
/// the mean NLL (h = 1e-2, within 2% of the larger of the gradient and 1e-2).
fn assert_matches_finite_difference(
    model: &Trainable,
    batch: &Batch,
    grads: &candle_core::backprop::GradStore,
    name: &str,
    var: &candle_core::Var,
) {
    let grad: Vec<f32> = grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (index, &analytic) = grad
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
        .unwrap();
    let original = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let h = 1e-2f32;
    let at = |delta: f32| {
        let mut values = original.clone();
        values[index] += delta;
        var.set(&Tensor::from_vec(values, var.as_tensor().shape(), &Device::Cpu).unwrap())
            .unwrap();
        mean_nll(model, batch).to_scalar::<f32>().unwrap() as f64
    };
    let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
    at(0.0);
    assert!(
        (numeric - analytic as f64).abs() < 2e-2 * (analytic.abs() as f64).max(1e-2),
        "{name}[{index}]: analytic {analytic:e}, finite difference {numeric:e}"
    );
}

#[test]
fn gradients_match_finite_differences_for_every_parameter_kind() {
    let model = Trainable::new(&common::tiny_model(0)).unwrap();
    let a = common::ramp(7, 3, 12);
    let b = common::ramp(11, 5, 9);
    let batch = Batch::new(&[(&a, 5), (&b, 4)], 0, &Device::Cpu).unwrap();
    let grads = mean_nll(&model, &batch).backward().unwrap();
    let kinds = [
        "embedding",
        "attention_norm",
        "wq",
        "wk",
        "wv",
        "wo",
        "mlp_norm",
        "w_gate",
        "w_up",
        "w_down",
        "norm",
    ];
    for kind in kinds {
        // The block-1 variable of this kind (or the model-level one), at its largest gradient.
        let (name, var) = model
            .vars
            .iter()
            .find(|(name, _)| name == kind || name == &format!("blocks.1.{kind}"))
            .unwrap();
        assert_matches_finite_difference(&model, &batch, &grads, name, var);
    }
}

/// Mixed bf16 against f32 on the same weights and batch: the loss within 1 %, every variable's
/// gradient (projections through their bf16 casts, the rest directly) f32, pointing the same way
/// (cosine > 0.99) with about the same size (within 10 %: the smallest gradients, the norms', are
/// the noisiest).
#[test]
fn bf16_steps_track_f32_loss_and_gradients() {
    let mut model = Trainable::new(&common::tiny_model(0)).unwrap();
    let a = common::ramp(7, 3, 12);
    let b = common::ramp(11, 5, 9);
    let batch = Batch::new(&[(&a, 5), (&b, 4)], 0, &Device::Cpu).unwrap();
    let run = |model: &Trainable| {
        let loss = mean_nll(model, &batch);
        (loss.to_scalar::<f32>().unwrap(), loss.backward().unwrap())
    };
    let (loss32, grads32) = run(&model);
    model.set_precision(Precision::Bf16).unwrap();
    // The step's projections are bf16 copies; the model's own weights stay f32.
    let step_model = model.step_model().unwrap();
    assert!(matches!(&step_model.blocks[0].wq, Weight::Dense(w) if w.dtype() == DType::BF16));
    assert!(matches!(&model.model.blocks[0].wq, Weight::Dense(w) if w.dtype() == DType::F32));
    let (loss16, grads16) = run(&model);
    assert!(
        (loss16 - loss32).abs() < 1e-2 * loss32.abs(),
        "bf16 loss {loss16}, f32 {loss32}"
    );
    for (name, var) in &model.vars {
        let (x, y) = (gradient(&grads32, name, var), gradient(&grads16, name, var));
        let cosine = cosine(&x, &y);
        assert!(cosine > 0.99, "{name}: cosine {cosine}");
        assert!(
            (norm(&y) / norm(&x) - 1.0).abs() < 0.1,
            "{name}: norms {} and {}",
            norm(&x),
            norm(&y)
        );
    }
}

#[test]
fn sft_drives_the_loss_on_eight_samples_near_zero() {
    sft_overfits(Precision::F32);
}

#[test]
fn sft_in_bf16_drives_the_loss_on_eight_samples_near_zero() {
    sft_overfits(Precision::Bf16);
}

fn sft_overfits(precision: Precision) {
    let mut model = Trainable::new(&common::tiny_model(0)).unwrap();
    model.set_precision(precision).unwrap();
    let examples: Vec<Example> = (0..8)
        .map(|i| Example {
            ids: common::ramp(5 + 2 * i, 3 * i + 1, 16),
            output_start: 6,
        })
        .collect();
    let config = Schedule {
        epochs: 200,
        adamw: AdamWConfig {
            lr: 2e-2,
            ..AdamWConfig::default()
        },
        warmup_ratio: 0.05,
        batch_size: 4,
        grad_accum: 2,
        ..Schedule::default()
    };
    let held_out = examples[..2].to_vec();
    let mut optimizer = sft::optimizer(&model, &config).unwrap();
    let logs = sft::train(
        &model,
        &mut optimizer,
        &examples,
        &held_out,
        &config,
        |_, _| Ok(true),
    )
    .unwrap();
    assert_eq!(logs.len(), config.total_steps(8));
    let first = logs.first().unwrap().loss;
    let last = logs.last().unwrap();
    let held_out_loss = last.held_out.as_ref().unwrap()[0];
    eprintln!(
        "{precision}: loss {first:.3} -> {:.4}; held-out {held_out_loss}",
        last.loss
    );
    assert!(first > 4.0, "starts near ln(96): {first}");
    assert!(last.loss < 0.05, "{}", last.loss);
    assert!(held_out_loss < 0.05);
}

#[test]
fn dpo_raises_the_reward_margin_and_accuracy_on_a_small_pair_set() {
    use guardreasoner_train::dpo::{self, PairExample};
    use guardreasoner_train::loss::DpoSettings;

    let frozen = common::tiny_model(0);
    let model = Trainable::new(&frozen).unwrap();
    let pairs: Vec<PairExample> = (0..8)
        .map(|i| {
            let prompt = common::ramp(5 + i, 2 * i + 1, 6);
            let with = |tail: Vec<u32>| Example {
                ids: [prompt.clone(), tail].concat(),
                output_start: 6,
            };
            PairExample {
                chosen: with(common::ramp(3 + i, i, 8)),
                rejected: with(common::ramp(29 + i, 7 * i + 3, 8)),
                weight: if i.is_multiple_of(2) { 0.8 } else { 1.2 },
            }
        })
        .collect();
    let reference = dpo::reference_logprobs(&frozen, &pairs, 4, &Device::Cpu).unwrap();
    let schedule = Schedule {
        epochs: 30,
        adamw: AdamWConfig {
            lr: 5e-3,
            ..AdamWConfig::default()
        },
        batch_size: 4,
        grad_accum: 2,
        ..Schedule::default()
    };
    let settings = DpoSettings {
        beta: 0.1,
        ..DpoSettings::default()
    };
    let mut optimizer = sft::optimizer(&model, &schedule).unwrap();
    let steps = dpo::train(
        &model,
        &mut optimizer,
        &pairs,
        &reference,
        (&pairs, &reference),
        settings,
        &schedule,
        |_, _| Ok(true),
    )
    .unwrap();
    let first = &steps[0];
    let last = steps.last().unwrap();
    // At the start the policy is the reference: every reward is 0.
    assert!(first.metrics[0].abs() < 1e-3 && first.metrics[1].abs() < 1e-3);
    let held_out = last.held_out.as_ref().unwrap();
    let margin = held_out[1] - held_out[2];
    eprintln!(
        "loss {} -> {}; margin {margin}, accuracy {}",
        first.loss, last.loss, held_out[3]
    );
    assert!(margin > 1.0, "chosen reward above rejected: {held_out:?}");
    assert_eq!(held_out[3], 1.0, "every pair ranked right");
    assert!(last.loss < first.loss);
}

#[test]
fn lora_trains_only_adapter_variables_with_gradients_matching_finite_differences_and_merges() {
    use guardreasoner_train::lora::{self, LoraConfig};

    let base = common::tiny_model(0);
    let model = lora::with_adapters(
        &base,
        &LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
    )
    .unwrap();
    assert_eq!(
        model.vars.len(),
        2 * 7 * 2,
        "A and B for 7 targets in 2 blocks"
    );
    let a = common::ramp(7, 3, 12);
    let b = common::ramp(11, 5, 9);
    let batch = Batch::new(&[(&a, 5), (&b, 4)], 0, &Device::Cpu).unwrap();
    // B starts at zero: the adapted model is the base model.
    let before = mean_nll(&Trainable::new(&base).unwrap(), &batch)
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(mean_nll(&model, &batch).to_scalar::<f32>().unwrap(), before);
    // Move B off zero so that A has a gradient too, then check both against finite differences.
    for (name, var) in &model.vars {
        if name.ends_with("lora_b") {
            let shape = var.as_tensor().shape().clone();
            let n = shape.elem_count();
            let values: Vec<f32> = (0..n).map(|i| 0.05 * ((i as f32) * 0.7).sin()).collect();
            var.set(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let grads = mean_nll(&model, &batch).backward().unwrap();
    for (name, var) in model
        .vars
        .iter()
        .filter(|(n, _)| n.starts_with("blocks.1."))
    {
        assert_matches_finite_difference(&model, &batch, &grads, name, var);
    }
    // In bf16 the frozen bases multiply in bf16; the adapters' f32 gradients agree with f32's.
    let mut half = model.clone();
    half.set_precision(Precision::Bf16).unwrap();
    let half_grads = mean_nll(&half, &batch).backward().unwrap();
    // The frozen bases are cast once, not at every step.
    let base = |model: &Trainable| match &model.step_model().unwrap().blocks[0].wq {
        Weight::Lora { base, .. } => match base.as_ref() {
            Weight::Dense(t) => (t.id(), t.dtype()),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let (first, dtype) = base(&half);
    assert_eq!(dtype, DType::BF16);
    assert_eq!(base(&half).0, first);
    for (name, var) in &model.vars {
        let cosine = cosine(
            &gradient(&grads, name, var),
            &gradient(&half_grads, name, var),
        );
        assert!(cosine > 0.99, "{name} in bf16: cosine {cosine}");
    }
    // Merged weights equal base + scale B A.
    let (merged, _) = guardreasoner_train::model::named_weights(&model.model).unwrap();
    let wq = &merged.iter().find(|(n, _)| n == "blocks.0.wq").unwrap().1;
    let adapter_out = model.model.blocks[0]
        .wq
        .forward(
            &batch
                .inputs
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .unsqueeze(2)
                .unwrap()
                .broadcast_as((2, 11, 32))
                .unwrap()
                .contiguous()
                .unwrap(),
        )
        .unwrap();
    let merged_out = (batch
        .inputs
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap()
        .broadcast_as((2, 11, 32))
        .unwrap()
        .contiguous()
        .unwrap()
        .broadcast_matmul(&wq.t().unwrap()))
    .unwrap();
    let difference: f32 = (adapter_out - merged_out)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(difference < 1e-3, "{difference}");
}
