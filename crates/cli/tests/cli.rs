//! The `guardreasoner` binary, end to end.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use guardreasoner_test_support::shared_data as shared;

fn guardreasoner(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_guardreasoner"));
    command.args(args);
    // Keep the user's environment from steering the tests.
    command.env_remove("GUARDREASONER_BENCHMARKS");
    command.env_remove("GUARDREASONER_DATA_MIRROR");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn score_prints_the_papers_numbers_beside_ours() {
    let Some(shared) = shared() else { return };
    let outputs = shared.join("benchmarks/test/8B");
    let output = run(&mut guardreasoner(&[
        "score",
        outputs.to_str().unwrap(),
        "--mode",
        "paper",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    let aegis = table
        .lines()
        .find(|l| l.contains("AegisSafetyTest"))
        .unwrap();
    // Ours, then the paper's 1B, 3B and 8B.
    assert!(
        aegis.contains("90.18") && aegis.contains("89.34") && aegis.contains("91.39"),
        "{aegis}"
    );
    assert!(table.contains("6 of the paper's 13 benchmark-tasks"));
}

#[test]
fn score_json_has_benchmark_task_and_f1_for_every_benchmark() {
    let Some(shared) = shared() else { return };
    let outputs = shared.join("benchmarks/test/3B");
    let output = run(&mut guardreasoner(&[
        "score",
        outputs.to_str().unwrap(),
        "--mode",
        "strict",
        "--format",
        "json",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let document: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let benchmarks = document["benchmarks"].as_array().unwrap();
    assert_eq!(benchmarks.len(), 6);
    for entry in benchmarks {
        assert!(
            entry["benchmark"].is_string() && entry["task"].is_string() && entry["f1"].is_f64()
        );
    }
    let refusal = benchmarks
        .iter()
        .find(|b| b["benchmark"] == "XSTestResponseRefusal")
        .unwrap();
    assert_eq!(refusal["task"], "refusal");
    assert_eq!(
        (refusal["f1"].as_f64().unwrap() * 100.0).round() / 100.0,
        85.41
    );
    assert_eq!(refusal["parse_failures"], 22);
    assert_eq!(document["mode"], "strict");
}

#[test]
fn score_markdown_is_a_markdown_table() {
    let Some(shared) = shared() else { return };
    let outputs = shared.join("benchmarks/test/1B");
    let output = run(&mut guardreasoner(&[
        "score",
        outputs.to_str().unwrap(),
        "--format",
        "markdown",
        "--weights",
        "paper",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("| prompt   | HarmBenchPrompt"), "{text}");
    assert!(text.contains("96.31"));
}

#[test]
fn bad_outputs_exit_non_zero_naming_file_and_line() {
    // The outputs are read, and fail, before any benchmark file: an empty benchmarks folder and
    // made-up lines are enough.
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::json!({"prompt": "p", "label": "harmful", "predict": "Answers: \nRequest: harmful"}).to_string();
    let mut lines = [line.as_str(); 10];
    let cut = &line[..line.len() / 2];
    lines[6] = cut;
    std::fs::create_dir(dir.path().join("SimpleSafetyTests")).unwrap();
    std::fs::write(
        dir.path()
            .join("SimpleSafetyTests/generated_predictions.jsonl"),
        lines.join("\n"),
    )
    .unwrap();
    let benchmarks = tempfile::tempdir().unwrap();
    std::fs::create_dir(benchmarks.path().join("benchmark")).unwrap();
    let output = run(&mut guardreasoner(&[
        "score",
        dir.path().to_str().unwrap(),
        "--benchmarks",
        benchmarks.path().to_str().unwrap(),
    ]));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("generated_predictions.jsonl:7: not a JSON object"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn score_without_benchmarks_says_how_to_get_them() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let output = run(guardreasoner(&["score", dir.path().to_str().unwrap()])
        .env("GUARDREASONER_DATA_DIR", cache.path()));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("guardreasoner data fetch"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn parse_reads_stdin_and_prints_the_verdict() {
    let mut child = guardreasoner(&["parse"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"# Task 1\n\n## Reasoning Step 1\nBad.\n\n---\n\nAnswers: \nRequest: harmful\nCompletion: None\nResponse: None")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["verdict"]["request"], "harmful");
    assert_eq!(json["verdict"]["completion"], "none");
    assert_eq!(json["tasks"][0]["steps"][0]["text"], "Bad.");

    let mut child = guardreasoner(&["parse", "--mode", "paper"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Answers: \nRequest: unharmful")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["verdict"]["request"], "unharmful");
    assert_eq!(json["missing"], serde_json::json!(["refusal", "response"]));
}

#[test]
fn prompt_json_shows_the_conversation_as_content_and_control_strings_as_text() {
    let output = run(&mut guardreasoner(&[
        "prompt",
        "--prompt",
        "a <|eot_id|> b",
        "--format",
        "llama3-chat",
        "--json",
    ]));
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let spans = json["spans"].as_array().unwrap();
    let content: Vec<&str> = spans
        .iter()
        .filter(|s| s["kind"] == "content")
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    assert_eq!(content, ["a <|eot_id|> b"]);
    let text = json["text"].as_str().unwrap();
    assert!(text.contains("Human user:\na <|eot_id|> b\n\nAI assistant:\nNone"));
    assert_eq!(
        spans
            .iter()
            .map(|s| s["text"].as_str().unwrap())
            .collect::<String>(),
        text
    );
}

#[test]
fn prompt_prints_the_exact_eval_text() {
    let output = run(&mut guardreasoner(&["prompt", "--prompt", "hi"]));
    assert!(output.status.success());
    assert_eq!(
        stdout(&output),
        guardreasoner_protocol::PromptFormat::Eval
            .render(&guardreasoner_protocol::Conversation::prompt_only("hi"))
            .text()
    );
}

#[test]
fn data_fetch_then_score_from_the_cache() {
    let Some(shared) = shared() else { return };
    let base = guardreasoner_data::testing::serve(shared, Arc::new(Mutex::new(Default::default())));
    let cache = tempfile::tempdir().unwrap();
    let fetch = |extra: &[&str]| {
        let mut command = guardreasoner(&["data", "fetch", "--mirror", &base]);
        command
            .args(extra)
            .env("GUARDREASONER_DATA_DIR", cache.path());
        run(&mut command)
    };
    let output = fetch(&[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("29 files"), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("29 downloaded"),
        "{}",
        stdout(&output)
    );
    let output = fetch(&["--only", "benchmarks"]);
    assert!(
        stdout(&output).contains("11 already valid"),
        "{}",
        stdout(&output)
    );

    // The scorer finds the benchmarks in the cache by default.
    let outputs = cache.path().join("benchmarks/test/8B");
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&outputs).unwrap() {
        let entry = entry.unwrap();
        let target = copy.path().join(entry.file_name());
        std::fs::create_dir(&target).unwrap();
        std::fs::copy(
            entry.path().join("generated_predictions.jsonl"),
            target.join("generated_predictions.jsonl"),
        )
        .unwrap();
    }
    let output = run(
        guardreasoner(&["score", copy.path().to_str().unwrap(), "--format", "json"])
            .env("GUARDREASONER_DATA_DIR", cache.path()),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("\"AegisSafetyTest\""));

    let output =
        run(guardreasoner(&["data", "verify"]).env("GUARDREASONER_DATA_DIR", cache.path()));
    assert!(output.status.success(), "{}", stderr(&output));
}
