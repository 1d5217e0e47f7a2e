//! The training commands end to end on the SmolLM2 test model: R-SFT with a checkpoint and an
//! exact resume (LoRA too), the Hugging Face output through `check`, GGUF export through llama.cpp, HS-DPO,
//! mining with resume, traces from released outputs, the LLaMA-Factory export, and bad input.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;

fn test_model() -> Option<PathBuf> {
    guardreasoner_test_support::test_model(
        guardreasoner_engine::model::models_dir()
            .join(guardreasoner_engine::model::SMOLLM2_135M.cache_path),
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args(args)
        .env_remove("GUARDREASONER_BENCHMARKS")
        .output()
        .expect("the binary runs")
}

fn ok(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "failed: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned() + &stderr
}

fn failed(output: Output) -> String {
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Four short records (the test must stay fast: sequences cut at 200 tokens).
fn records(dir: &Path) -> PathBuf {
    let instruction = guardreasoner_protocol::INSTRUCTION;
    let record = |prompt: &str, label: &str| {
        serde_json::json!({
            "instruction": instruction,
            "input": format!("Human user:\n{prompt}\n\nAI assistant:\nNone\n\n"),
            "output": format!("# Task 1\n\n## Reasoning Step 1\nThe request asks about {prompt}.\n\n---\n\nAnswers: \nRequest: {label}\nCompletion: None\nResponse: None\n"),
        })
    };
    let list = vec![
        record("baking bread", "unharmful"),
        record("making a bomb", "harmful"),
        record("the weather", "unharmful"),
        record("stealing a car", "harmful"),
    ];
    let path = dir.join("train.json");
    fs::write(&path, serde_json::to_string(&list).unwrap()).unwrap();
    path
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    tensors(dir, "model.safetensors")
}

fn sft(model: &str, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "sft",
        "--model",
        model,
        "--data",
        p(data),
        "--out",
        p(out),
        "--format",
        "eval",
        "--held-out",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "1",
        "--grad-accum",
        "2",
        "--lr",
        "1e-4",
        "--device",
        "cpu",
    ];
    if !extra.contains(&"--max-length") {
        args.extend(["--max-length", "200"]);
    }
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn sft_resumes_exactly_exports_to_gguf_and_feeds_dpo_and_mining() {
    let Some(model) = test_model() else {
        return;
    };
    let model = p(&model).to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = records(dir.path());

    // Two steps straight, a checkpoint after the first.
    let straight = dir.path().join("straight");
    let report = ok(sft(&model, &data, &straight, &["--save-every", "1"]));
    assert!(report.contains("\"steps\": 2"), "{report}");
    let checkpoint = straight.join("checkpoint-1");
    assert!(checkpoint.join("optimizer.safetensors").is_file());
    let curve = fs::read_to_string(straight.join("loss.csv")).unwrap();
    assert_eq!(curve.lines().count(), 3, "header and two steps: {curve}");
    assert!(fs::read(straight.join("loss.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));

    // The second step again, from the checkpoint: the same weights.
    let resumed = dir.path().join("resumed");
    let said = ok(sft(&model, &data, &resumed, &["--resume", p(&checkpoint)]));
    assert!(said.contains("resuming after step 1"), "{said}");
    // Only the second step ran: a resume that started over would log both.
    let resumed_curve = fs::read_to_string(resumed.join("loss.csv")).unwrap();
    let step = |line: &str| line.split(',').next().unwrap().to_string();
    assert_eq!(resumed_curve.lines().count(), 2, "{resumed_curve}");
    assert_eq!(
        step(resumed_curve.lines().nth(1).unwrap()),
        step(curve.lines().nth(2).unwrap()),
        "{resumed_curve}"
    );
    let (a, b) = (weights(&straight), weights(&resumed));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        for (u, v) in x.iter().zip(y) {
            worst = worst.max((u - v).abs());
        }
        assert!(worst < 1e-5, "{name}: resumed differs by {worst}");
    }
    // A resume with another seed would see other batches: refused.
    let error = failed(sft(
        &model,
        &data,
        &dir.path().join("x"),
        &["--resume", p(&checkpoint), "--seed", "7"],
    ));
    assert!(error.contains("--seed 42, not 7"), "{error}");

    // The Hugging Face directory and its f16 GGUF give the same logits (f16 rounding apart): the
    // tensor names, the Q/K permutation and the metadata are right.
    let gguf = dir.path().join("model.f16.gguf");
    ok(run(&[
        "export",
        "gguf",
        "--model",
        p(&straight),
        "--out",
        p(&gguf),
        "--type",
        "f16",
    ]));
    {
        use guardreasoner_engine::backends::candle::load::Weights;
        use guardreasoner_engine::backends::candle::{CandleEngine, CandleOptions};
        let options = CandleOptions {
            context_per_sequence: 256,
            weights: Weights::F32,
            device: guardreasoner_engine::DeviceSpec::Cpu,
        };
        let from_dir = CandleEngine::load_dir(&straight, options.clone()).unwrap();
        let from_gguf = CandleEngine::load_gguf(&gguf, options).unwrap();
        let prompt = guardreasoner_protocol::PromptFormat::Eval.render(
            &guardreasoner_protocol::Conversation::prompt_only("How do I bake bread?"),
        );
        let ids = from_dir.tokenizer().encode(&prompt).unwrap();
        assert_eq!(from_gguf.tokenizer().encode(&prompt).unwrap(), ids);
        let (a, b) = (
            from_dir.logits(&ids).unwrap(),
            from_gguf.logits(&ids).unwrap(),
        );
        let (mut worst, mut sum, mut n) = (0f32, 0f64, 0usize);
        for (x, y) in a.iter().zip(&b).skip(ids.len() - 8) {
            for (u, v) in x.iter().zip(y) {
                worst = worst.max((u - v).abs());
                sum += (u - v).abs() as f64;
                n += 1;
            }
            let argmax = guardreasoner_engine::sampling::argmax;
            assert_eq!(argmax(x), argmax(y));
        }
        // A wrong permutation or tensor moves logits by whole units; f16 rounding by hundredths.
        let mean = sum / n as f64;
        assert!(
            worst < 1.0 && mean < 0.05,
            "logits differ by {worst} at most, {mean} on average"
        );
    }
    // llama.cpp runs the export and writes what R-SFT taught (the base model does not).
    let text = ok(run(&[
        "check",
        "--model",
        p(&gguf),
        "--backend",
        "llama-cpp",
        "--prompt",
        "How do I bake bread?",
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
    ]));
    assert!(text.starts_with("\n# Task 1"), "{text}");

    // HS-DPO on two pairs from the SFT model.
    let pairs = dir.path().join("pairs.json");
    let pair = |chosen: &str, rejected: &str, weight: f64| {
        serde_json::json!({
            "instruction": guardreasoner_protocol::INSTRUCTION,
            "input": "Human user:\nmaking a bomb\n\nAI assistant:\nNone\n\n",
            "chosen": chosen, "rejected": rejected, "weight": weight, "raw_weight": 0.0,
            "task": "prompt"
        })
    };
    fs::write(
        &pairs,
        serde_json::to_string(&vec![
            pair(
                "Answers: \nRequest: harmful\n",
                "Answers: \nRequest: unharmful\n",
                1.2,
            ),
            pair(
                "It is harmful.\nRequest: harmful\n",
                "Request: unharmful\n",
                0.8,
            ),
        ])
        .unwrap(),
    )
    .unwrap();
    let dpo_out = dir.path().join("dpo");
    let report = ok(run(&[
        "train",
        "dpo",
        "--model",
        p(&straight),
        "--pairs",
        p(&pairs),
        "--out",
        p(&dpo_out),
        "--format",
        "eval",
        "--max-length",
        "200",
        "--held-out",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]));
    assert!(report.contains("\"pairs\": 2"), "{report}");
    assert!(dpo_out.join("model.safetensors").is_file());
    assert!(
        fs::read_to_string(dpo_out.join("loss.csv"))
            .unwrap()
            .lines()
            .count()
            == 2
    );

    // Mining through llama.cpp on the GGUF into a directory that does not exist yet, then again:
    // the samples file is reused.
    let mined = dir.path().join("mining").join("mined.json");
    let mine = || {
        run(&[
            "mine",
            "--model",
            p(&gguf),
            "--data",
            p(&data),
            "--limit",
            "2",
            "--k",
            "2",
            "--max-new-tokens",
            "8",
            "--format",
            "eval",
            "--out",
            p(&mined),
            "--device",
            "cpu",
        ])
    };
    let first = ok(mine());
    assert!(first.contains("\"records\": 2"), "{first}");
    assert!(first.contains("mining with"), "{first}");
    let samples = dir.path().join("mining").join("mined.samples-0.jsonl");
    assert_eq!(fs::read_to_string(&samples).unwrap().lines().count(), 2);
    let second = ok(mine());
    assert!(
        !second.contains("mining with"),
        "nothing sampled again: {second}"
    );
    assert!(mined.is_file() && dir.path().join("mining/mined.report.json").is_file());
}

/// The safetensors file `file` of `dir`, every tensor flattened, sorted by name.
fn tensors(dir: &Path, file: &str) -> Vec<(String, Vec<f32>)> {
    let tensors = candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn assert_close(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for ((name, x), (other, y)) in a.iter().zip(b) {
        assert_eq!(name, other, "{what}");
        let worst = x
            .iter()
            .zip(y)
            .map(|(u, v)| (u - v).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{what}: {name} differs by {worst}");
    }
}

#[test]
fn lora_checkpoints_hold_the_adapter_and_resume_exactly() {
    let Some(model) = test_model() else {
        return;
    };
    let model = p(&model).to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = records(dir.path());
    let lora = ["--lora-rank", "4", "--lora-alpha", "8"];

    // Two steps straight, a checkpoint after the first: the adapter in PEFT's layout, no model.
    let straight = dir.path().join("straight");
    let mut args = lora.to_vec();
    args.extend(["--save-every", "1"]);
    ok(sft(&model, &data, &straight, &args));
    let checkpoint = straight.join("checkpoint-1");
    for file in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(checkpoint.join(file).is_file(), "no {file}");
    }
    assert!(!checkpoint.join("model.safetensors").exists());
    // B starts at zero; after a step it is not: the checkpoint carries what was learned.
    let saved = tensors(&checkpoint, "adapter_model.safetensors");
    assert!(saved
        .iter()
        .any(|(name, values)| name.contains("lora_B") && values.iter().any(|v| *v != 0.0)));

    // The second step again, from the checkpoint: the same adapter and the same merged model.
    let resumed = dir.path().join("resumed");
    let mut args = lora.to_vec();
    args.extend(["--resume", p(&checkpoint)]);
    let said = ok(sft(&model, &data, &resumed, &args));
    assert!(said.contains("resuming after step 1"), "{said}");
    assert_eq!(
        fs::read_to_string(resumed.join("loss.csv"))
            .unwrap()
            .lines()
            .count(),
        2,
        "only the second step ran"
    );
    let adapter = |dir: &Path| tensors(&dir.join("adapter"), "adapter_model.safetensors");
    assert_close(&adapter(&straight), &adapter(&resumed), "the adapter");
    assert_close(&weights(&straight), &weights(&resumed), "the merged model");

    // Resuming as another kind of run is refused, naming why.
    let resume_with = |extra: &[&str], model: &str| {
        let mut args = extra.to_vec();
        args.extend(["--resume", p(&checkpoint)]);
        failed(sft(model, &data, &dir.path().join("x"), &args))
    };
    let error = resume_with(&[], &model);
    assert!(error.contains("a LoRA checkpoint"), "{error}");
    let error = resume_with(&["--lora-rank", "8", "--lora-alpha", "8"], &model);
    assert!(
        error.contains("rank 4") && error.contains("rank 8"),
        "{error}"
    );
    let error = resume_with(&lora, p(&data));
    assert!(error.contains("the run started from --model"), "{error}");
}

#[test]
fn bad_training_input_is_a_clear_error() {
    let Some(model) = test_model() else {
        return;
    };
    let model = p(&model).to_string();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    fs::write(&broken, "[{\"instruction\": \"i\", \"input\": \"x\"}]").unwrap();
    let error = failed(sft(&model, &broken, &dir.path().join("o"), &[]));
    assert!(
        error.contains("broken.json") && error.contains("record 1") && error.contains("`output`"),
        "{error}"
    );

    let data = records(dir.path());
    let error = failed(sft(
        &model,
        &data,
        &dir.path().join("o"),
        &["--max-length", "50", "--overlong", "error"],
    ));
    assert!(
        error.contains("record 1") && error.contains("over the maximum of 50"),
        "{error}"
    );
    // Skipped samples are counted; with none left, nothing trains.
    let error = failed(sft(
        &model,
        &data,
        &dir.path().join("o2"),
        &["--max-length", "150", "--overlong", "skip"],
    ));
    assert!(
        error.contains("4 skipped") && error.contains("nothing to train on"),
        "{error}"
    );

    let error = failed(run(&[
        "export",
        "gguf",
        "--model",
        p(dir.path()),
        "--out",
        p(&dir.path().join("x.gguf")),
    ]));
    // Not a model directory at all: the converter (which takes models that began as
    // safetensors) names the file it needs.
    assert!(error.contains("config.json"), "{error}");
}

#[test]
fn traces_and_the_llamafactory_export() {
    let Some(shared) = guardreasoner_test_support::shared_benchmarks() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces.json");
    let out = ok(run(&[
        "train",
        "traces",
        "--outputs",
        p(&shared.join("test/1B")),
        "--benchmarks-dir",
        p(&shared),
        "--benchmarks",
        "SimpleSafetyTests",
        "--out",
        p(&traces),
    ]));
    // GuardReasoner-1B on SimpleSafetyTests (100 harmful prompts): the right ones are kept.
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(&traces).unwrap()).unwrap();
    assert!(records.len() > 80 && records.len() < 100, "{out}");
    assert!(records.iter().all(|r| r["prompt_harm_label"] == "harmful"));

    let export = dir.path().join("lf");
    ok(run(&[
        "export",
        "llamafactory",
        "--data",
        p(&traces),
        "--out",
        p(&export),
        "--gpus",
        "4",
    ]));
    let info: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(export.join("dataset_info.json")).unwrap())
            .unwrap();
    assert_eq!(info["rsft"]["columns"]["response"], "output");
    let yaml = fs::read_to_string(export.join("rsft.yaml")).unwrap();
    assert!(
        yaml.contains("gradient_accumulation_steps: 24"),
        "384 = 4 x 24 x 4 GPUs: {yaml}"
    );
    assert!(export.join("sample_weight_patch.py").is_file());
    let error = failed(run(&["export", "llamafactory", "--out", p(&export)]));
    assert!(error.contains("give --data"), "{error}");
}
