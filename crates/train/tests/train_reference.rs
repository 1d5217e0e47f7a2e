//! Our R-SFT and HS-DPO losses and gradients against PyTorch, transformers and TRL on the same
//! tiny model and batches (`scripts/fixtures/reference_train.py`), to 1e-4.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use guardreasoner_train::loss::{self, Batch, DpoSettings, WeightOn};

const TOLERANCE: f32 = 1e-4;

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(common::fixture("train_reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn max_difference(ours: &Tensor, theirs: &Tensor) -> f32 {
    assert_eq!(ours.dims(), theirs.dims());
    (ours - theirs)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn assert_grads_match(
    grads: &candle_core::backprop::GradStore,
    vars: &[(String, Var)],
    reference: &HashMap<String, Tensor>,
    prefix: &str,
) {
    let mut compared = 0;
    for (name, var) in vars {
        let Some(theirs) = reference.get(&format!("{prefix}.grad.{name}")) else {
            continue;
        };
        let ours = grads.get(var.as_tensor()).expect("a gradient");
        let scale = theirs
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let difference = max_difference(ours, theirs);
        assert!(
            difference <= TOLERANCE * scale.max(1.0),
            "{prefix} gradient of {name}: {difference:e} (largest entry {scale:e})"
        );
        compared += 1;
    }
    assert_eq!(compared, 6, "every named gradient compared");
}

#[test]
fn sft_loss_and_gradients_match_transformers() {
    let reference = reference();
    let (model, vars) = common::tiny_model(0).trainable().unwrap();
    let a = common::ramp(7, 3, 12);
    let b = common::ramp(11, 5, 9);
    let batch = Batch::new(&[(&a, 5), (&b, 4)], 0, &Device::Cpu).unwrap();
    let tokens = batch.mask.sum_all().unwrap();
    let loss = (loss::nll_sum(&model, &batch).unwrap() / tokens.to_scalar::<f32>().unwrap() as f64)
        .unwrap();
    let theirs = reference["sft.loss"].to_vec1::<f32>().unwrap()[0];
    let ours = loss.to_scalar::<f32>().unwrap();
    assert!((ours - theirs).abs() < TOLERANCE, "{ours} vs {theirs}");
    assert_grads_match(&loss.backward().unwrap(), &vars, &reference, "sft");
}

#[test]
fn weighted_dpo_with_the_sft_term_matches_trl_and_llamafactory() {
    let reference = reference();
    let (policy, vars) = common::tiny_model(0).trainable().unwrap();
    let reference_model = common::tiny_model(50);
    let prompts = [common::ramp(5, 1, 5), common::ramp(13, 2, 4)];
    let chosen = [common::ramp(3, 7, 6), common::ramp(17, 4, 4)];
    let rejected = [common::ramp(19, 9, 3), common::ramp(23, 6, 7)];
    let sequences: Vec<(Vec<u32>, usize)> = chosen
        .iter()
        .chain(&rejected)
        .zip(prompts.iter().cycle())
        .map(|(completion, prompt)| ([prompt.clone(), completion.clone()].concat(), prompt.len()))
        .collect();
    let views: Vec<(&[u32], usize)> = sequences.iter().map(|(s, p)| (s.as_slice(), *p)).collect();
    let batch = Batch::new(&views, 0, &Device::Cpu).unwrap();

    let logps = loss::token_logprobs(&policy, &batch)
        .unwrap()
        .sum(1)
        .unwrap();
    let reference_logps = loss::token_logprobs(&reference_model, &batch)
        .unwrap()
        .sum(1)
        .unwrap();
    assert!(max_difference(&logps, &reference["dpo.policy_logps"]) < TOLERANCE);
    assert!(max_difference(&reference_logps, &reference["dpo.reference_logps"]) < TOLERANCE);

    let half = |t: &Tensor, i: usize| t.narrow(0, i * 2, 2).unwrap();
    let counts = batch.token_counts().unwrap();
    let weights = Tensor::new(&[0.8f32, 1.2], &Device::Cpu).unwrap();
    let settings = DpoSettings {
        beta: 0.1,
        ftx: 2.0,
        weight_on: WeightOn::Dpo,
    };
    let terms = loss::dpo_terms(
        &half(&logps, 0),
        &half(&logps, 1),
        &half(&reference_logps, 0),
        &half(&reference_logps, 1),
        &half(&counts, 0),
        &weights,
        settings,
    )
    .unwrap();
    let loss = terms.losses.mean_all().unwrap();
    let theirs = reference["dpo.loss"].to_vec1::<f32>().unwrap()[0];
    let ours = loss.to_scalar::<f32>().unwrap();
    assert!((ours - theirs).abs() < TOLERANCE, "{ours} vs {theirs}");
    assert_grads_match(&loss.backward().unwrap(), &vars, &reference, "dpo");
}

#[test]
fn the_fused_loss_equals_the_composed_one_in_value_and_gradient() {
    let (model, vars) = common::tiny_model(0).trainable().unwrap();
    let a = common::ramp(7, 3, 40);
    let b = common::ramp(11, 5, 64);
    let c = common::ramp(13, 1, 64);
    // 34 + 53 + 33 scored positions: two chunks of the fused loss, padding and prompts masked.
    let batch = Batch::new(&[(&a, 5), (&b, 10), (&c, 30)], 0, &Device::Cpu).unwrap();
    let fused = loss::token_logprobs(&model, &batch).unwrap();
    let composed = loss::token_logprobs_composed(&model, &batch).unwrap();
    assert!(max_difference(&fused, &composed) < 1e-5);
    let fused_grads = fused.sum_all().unwrap().backward().unwrap();
    let composed_grads = composed.sum_all().unwrap().backward().unwrap();
    for (name, var) in &vars {
        let difference = max_difference(
            fused_grads.get(var.as_tensor()).unwrap(),
            composed_grads.get(var.as_tensor()).unwrap(),
        );
        assert!(difference < 1e-4, "{name}: {difference:e}");
    }
}
