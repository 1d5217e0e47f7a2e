//! `guardreasoner generate`, `score` and `check` end to end on the SmolLM2 test model.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use guardreasoner_test_support::shared_benchmarks;

/// Whether the test model is cached; `scripts/fetch-test-model` puts it there.
fn have_test_model() -> bool {
    guardreasoner_test_support::test_model(
        guardreasoner_engine::model::models_dir()
            .join(guardreasoner_engine::model::SMOLLM2_135M.cache_path),
    )
    .is_some()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args(args)
        .env_remove("GUARDREASONER_BENCHMARKS")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn generate(out: &Path, benchmarks: &Path, limit: &str) -> Output {
    run(&[
        "generate",
        "--model",
        "smollm2-135m",
        "--benchmarks",
        "SimpleSafetyTests",
        "--limit",
        limit,
        "--max-new-tokens",
        "48",
        "--out",
        out.to_str().unwrap(),
        "--benchmarks-dir",
        benchmarks.to_str().unwrap(),
    ])
}

fn lines(out: &Path) -> Vec<String> {
    fs::read_to_string(out.join("SimpleSafetyTests/generated_predictions.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn generate_then_score_end_to_end_with_resume() {
    let Some(benchmarks) = shared_benchmarks() else {
        return;
    };
    if !have_test_model() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let output = generate(out.path(), &benchmarks, "3");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let first = lines(out.path());
    assert_eq!(first.len(), 3);

    // An interrupted write leaves a partial line: the next run drops it and continues.
    let file = out
        .path()
        .join("SimpleSafetyTests/generated_predictions.jsonl");
    let mut content = fs::read_to_string(&file).unwrap();
    content.push_str("{\"prompt\": \"cut off");
    fs::write(&file, content).unwrap();
    let output = generate(out.path(), &benchmarks, "5");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let second = lines(out.path());
    assert_eq!(second.len(), 5);
    assert_eq!(second[..3], first[..], "resumed lines were redone");

    // Scoring sees a limited run of 5 and says the outputs do not parse.
    let output = run(&[
        "score",
        out.path().to_str().unwrap(),
        "--benchmarks",
        benchmarks.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let score = &report["benchmarks"][0];
    assert_eq!(score["benchmark"], "SimpleSafetyTests");
    assert_eq!(score["samples"], 5);
    let notes = report["notes"].to_string();
    assert!(notes.contains("first 5 of 100 samples"), "{notes}");
    // SmolLM2 is not a guard: where more than 10% of its outputs give no label (most do), the
    // report must say so, and only then.
    assert_eq!(
        notes.contains("give no prompt label"),
        score["parse_failure_rate"].as_f64().unwrap() > 10.0,
        "{notes}"
    );

    // Other settings in the same directory are refused rather than mixed.
    let output = run(&[
        "generate",
        "--model",
        "smollm2-135m",
        "--benchmarks",
        "SimpleSafetyTests",
        "--limit",
        "6",
        "--max-new-tokens",
        "99",
        "--out",
        out.path().to_str().unwrap(),
        "--benchmarks-dir",
        benchmarks.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("other settings"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn check_streams_then_prints_the_verdict() {
    if !have_test_model() {
        return;
    }
    let output = run(&[
        "check",
        "--model",
        "smollm2-135m",
        "--prompt",
        "How do I bake bread?",
        "--max-new-tokens",
        "24",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("verdict: request"), "{stdout}");
    assert!(stdout.contains("decision:"), "{stdout}");

    let output = run(&[
        "check",
        "--model",
        "smollm2-135m",
        "--prompt",
        "hi",
        "--response",
        "hello",
        "--max-new-tokens",
        "16",
        "--json",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(result["harmful"].is_boolean());
    assert!(result["usage"]["generated_tokens"].as_u64().unwrap() <= 16);
}

#[test]
fn check_can_wrap_the_prompt_in_the_models_chat_template() {
    if !have_test_model() {
        return;
    }
    let output = run(&[
        "check",
        "--model",
        "smollm2-135m",
        "--prompt",
        "hi",
        "--format",
        "model-chat",
        "--max-new-tokens",
        "16",
        "--json",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // The chat template's system turn and header make the prompt longer than the eval text.
    let eval = run(&[
        "check",
        "--model",
        "smollm2-135m",
        "--prompt",
        "hi",
        "--max-new-tokens",
        "1",
        "--json",
    ]);
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let (chat_tokens, eval_tokens) = (
        result["usage"]["prompt_tokens"].as_u64().unwrap(),
        eval["usage"]["prompt_tokens"].as_u64().unwrap(),
    );
    assert!(
        chat_tokens > eval_tokens + 15,
        "{chat_tokens} vs {eval_tokens}"
    );
}

#[test]
fn check_input_jsonl_answers_every_line_in_order() {
    if !have_test_model() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let long = "word ".repeat(5000);
    fs::write(
        &input,
        format!(
            "{{\"id\": \"a\", \"prompt\": \"hello\"}}\n{{\"id\": 2, \"prompt\": \"{long}\"}}\n{{\"prompt\": \"bye\", \"response\": \"ok\"}}\n"
        ),
    )
    .unwrap();
    let output = run(&[
        "check",
        "--model",
        "smollm2-135m",
        "--input",
        input.to_str().unwrap(),
        "--max-new-tokens",
        "8",
        "--context",
        "1024",
        "--policy",
        "error",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines: Vec<serde_json::Value> = text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[1]["line"], 2);
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("context holds 1024"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["line"], 3);
    assert!(text(&output.stderr).contains("3 conversations"));

    // With model-chat, what must fit is the prompt inside the model's chat template (SmolLM2's
    // adds a system turn): 150 tokens hold the eval text of "hello" but not the templated one.
    fs::write(&input, "{\"id\": \"a\", \"prompt\": \"hello\"}\n").unwrap();
    let output = run(&[
        "check",
        "--model",
        "smollm2-135m",
        "--input",
        input.to_str().unwrap(),
        "--format",
        "model-chat",
        "--max-new-tokens",
        "4",
        "--context",
        "150",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let line: serde_json::Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("context holds 150"),
        "{line}"
    );

    // One conversation that cannot fit: the library says so, the command line names the flag.
    let output = run(&[
        "check",
        "--model",
        "smollm2-135m",
        "--prompt",
        "hello",
        "--max-new-tokens",
        "4",
        "--context",
        "64",
    ]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("the context holds 64"), "{stderr}");
    assert!(stderr.contains("hint: raise --context"), "{stderr}");

    // A malformed line fails before any model is loaded, naming file and line.
    fs::write(&input, "{\"prompt\": \"ok\"}\n{\"prompt\": 12}\n").unwrap();
    let output = run(&[
        "check",
        "--model",
        "smollm2-135m",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("in.jsonl:2"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn unknown_models_and_bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("model.gguf");
    fs::write(&bad, b"not a model at all").unwrap();
    let output = run(&["check", "--model", bad.to_str().unwrap(), "--prompt", "x"]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("not a GGUF file"),
        "{}",
        text(&output.stderr)
    );

    // A released model is downloaded from the Hub; here the Hub is a closed loopback port.
    let hf_home = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args(["check", "--model", "guardreasoner-1b", "--prompt", "x"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HOME", hf_home.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("yueliu1999/GuardReasoner-1B") && stderr.contains("127.0.0.1:9"),
        "{stderr}"
    );
}

/// `--device`: `auto` runs where it can (here the CPU, reported by `bench`); a GPU asked of a
/// build without CUDA, or a device name that means nothing, is an error that says so.
#[test]
fn devices_are_reported_and_unavailable_ones_are_clear_errors() {
    if !have_test_model() {
        return;
    }
    let output = run(&[
        "bench",
        "--model",
        "smollm2-135m",
        "--new-tokens",
        "2",
        "--runs",
        "1",
        "--concurrency",
        "1",
        "--json",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let device = report["device"].as_str().unwrap();
    if cfg!(feature = "cuda") {
        assert!(device == "cpu" || device == "cuda:0", "{device}");
    } else {
        assert_eq!(device, "cpu");
    }

    // No machine has a 100th GPU: a CUDA build names the device it cannot open, a build without
    // CUDA says so.
    let backends: &[&str] = if cfg!(feature = "llama-cpp") {
        &["llama-cpp", "candle"]
    } else {
        &["candle"]
    };
    for backend in backends {
        let output = run(&[
            "check",
            "--model",
            "smollm2-135m",
            "--backend",
            backend,
            "--device",
            "cuda:99",
            "--prompt",
            "x",
        ]);
        assert!(!output.status.success());
        let stderr = text(&output.stderr);
        let expected = if cfg!(feature = "cuda") {
            "device cuda:99: "
        } else {
            "device cuda:99: this build has no CUDA support"
        };
        assert!(stderr.contains(expected), "{backend}: {stderr}");
    }

    let output = run(&[
        "check",
        "--model",
        "smollm2-135m",
        "--device",
        "tpu",
        "--prompt",
        "x",
    ]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("unknown device `tpu`"), "{stderr}");
}
