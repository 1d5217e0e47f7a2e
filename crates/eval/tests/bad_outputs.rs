//! Bad outputs files: each is an error that names the file and the line. These run on a made-up
//! benchmark that each test writes, so they need no shared data.

use std::fs;
use std::path::Path;

use guardreasoner_eval::{score_outputs, ScoreMode, Weighting};
use guardreasoner_protocol::{Conversation, PromptFormat, INSTRUCTION};
use serde_json::json;

const SAMPLES: usize = 100;

/// Writes a SimpleSafetyTests of 100 made-up samples where the scorer reads benchmarks
/// (`<root>/benchmark/`), and returns outputs for it in GuardReasoner's layout (one JSON line per
/// sample: the prompt, the label, and a prediction that gives the label).
fn made_up_benchmark(root: &Path) -> Vec<String> {
    let samples: Vec<serde_json::Value> = (0..SAMPLES)
        .map(|i| {
            json!({
                "instruction": INSTRUCTION,
                "input": Conversation::prompt_only(format!("made-up request {i}")).input_block(),
                "output": if i % 3 == 0 { "harmful" } else { "unharmful" },
            })
        })
        .collect();
    fs::create_dir_all(root.join("benchmark")).unwrap();
    fs::write(
        root.join("benchmark/0_0_SimpleSafetyTests.json"),
        serde_json::to_string_pretty(&samples).unwrap(),
    )
    .unwrap();
    samples
        .iter()
        .map(|sample| {
            let label = sample["output"].as_str().unwrap();
            json!({
                "prompt": PromptFormat::Eval.render_parts(INSTRUCTION, sample["input"].as_str().unwrap()).text(),
                "label": label,
                "predict": format!("# Task 1\n\n## Reasoning Step 1\nMade up.\n\n---\n\nAnswers: \nRequest: {label}\nCompletion: None\nResponse: None"),
            })
            .to_string()
        })
        .collect()
}

/// A made-up benchmark in `root` and its outputs, transformed by `edit`, in GuardReasoner's
/// layout (`<outputs>/SimpleSafetyTests/generated_predictions.jsonl`).
fn layout_with(root: &Path, edit: impl Fn(Vec<String>) -> Vec<String>) -> tempfile::TempDir {
    let lines = made_up_benchmark(root);
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("SimpleSafetyTests")).unwrap();
    let mut text = edit(lines).join("\n");
    text.push('\n');
    fs::write(
        dir.path()
            .join("SimpleSafetyTests/generated_predictions.jsonl"),
        text,
    )
    .unwrap();
    dir
}

fn error(root: &Path, outputs: &Path) -> String {
    score_outputs(outputs, root, ScoreMode::Paper, Weighting::Files)
        .unwrap_err()
        .to_string()
}

#[test]
fn an_untouched_copy_scores() {
    let benchmarks = tempfile::tempdir().unwrap();
    let root = benchmarks.path().to_path_buf();
    let dir = layout_with(&root, |lines| lines);
    let report = score_outputs(dir.path(), &root, ScoreMode::Paper, Weighting::Files).unwrap();
    assert_eq!(report.benchmarks.len(), 1);
    // Every prediction gives the label: a perfect score.
    let score = &report.benchmarks[0];
    assert_eq!((score.f1, score.accuracy), (100.0, 100.0), "{score:?}");
}

#[test]
fn prompts_that_did_not_fit_are_noted_and_a_broken_run_record_is_an_error() {
    let benchmarks = tempfile::tempdir().unwrap();
    let root = benchmarks.path().to_path_buf();
    // Samples 3 and 4 did not fit when generated: `generate` wrote empty outputs for them.
    let dir = layout_with(&root, |mut lines| {
        for index in [3, 4] {
            let mut line: serde_json::Value = serde_json::from_str(&lines[index]).unwrap();
            line["predict"] = json!("");
            lines[index] = line.to_string();
        }
        lines
    });
    let record = guardreasoner_eval::predictions::RunRecord {
        model: "m".into(),
        backend: "llama.cpp".into(),
        format: "eval".into(),
        max_new_tokens: 16,
        too_long: vec![3, 4],
        ..Default::default()
    };
    let record_path = dir.path().join("SimpleSafetyTests/generation.json");
    record.write(&record_path).unwrap();
    let report = score_outputs(dir.path(), &root, ScoreMode::Strict, Weighting::Files).unwrap();
    assert_eq!(report.benchmarks[0].too_long, 2);
    assert_eq!(report.benchmarks[0].parse_failures, 2);
    let notes = guardreasoner_eval::report::notes(&report).join("\n");
    assert!(
        notes.contains("SimpleSafetyTests (prompt): 2 prompts did not fit the model's context"),
        "{notes}"
    );

    fs::write(&record_path, "{\"model\": 3}").unwrap();
    let message = error(&root, dir.path());
    assert!(message.contains("generation.json:1"), "{message}");
}

#[test]
fn a_truncated_json_line_names_file_and_line() {
    let benchmarks = tempfile::tempdir().unwrap();
    let root = benchmarks.path().to_path_buf();
    let dir = layout_with(&root, |mut lines| {
        let cut = lines[41].len() / 2;
        lines[41].truncate(cut);
        lines
    });
    let message = error(&root, dir.path());
    assert!(
        message.contains("generated_predictions.jsonl:42: not a JSON object"),
        "{message}"
    );
}

#[test]
fn fewer_lines_than_the_benchmark_names_file_and_line() {
    let benchmarks = tempfile::tempdir().unwrap();
    let root = benchmarks.path().to_path_buf();
    let dir = layout_with(&root, |mut lines| {
        lines.truncate(97);
        lines
    });
    let message = error(&root, dir.path());
    assert!(
        message.contains("generated_predictions.jsonl:98:"),
        "{message}"
    );
    assert!(
        message.contains("3 of SimpleSafetyTests's 100 samples have no output"),
        "{message}"
    );
}

#[test]
fn more_lines_than_the_benchmark_is_an_error() {
    let benchmarks = tempfile::tempdir().unwrap();
    let root = benchmarks.path().to_path_buf();
    let dir = layout_with(&root, |mut lines| {
        lines.push(lines[0].clone());
        lines
    });
    let message = error(&root, dir.path());
    assert!(
        message.contains("generated_predictions.jsonl:101:"),
        "{message}"
    );
}

#[test]
fn misaligned_lines_are_caught_by_their_prompt() {
    let benchmarks = tempfile::tempdir().unwrap();
    let root = benchmarks.path().to_path_buf();
    let dir = layout_with(&root, |mut lines| {
        lines.swap(3, 4);
        lines
    });
    let message = error(&root, dir.path());
    assert!(
        message.contains("generated_predictions.jsonl:4:"),
        "{message}"
    );
    assert!(message.contains("not aligned"), "{message}");
}

#[test]
fn an_empty_line_in_the_middle_is_an_error() {
    let benchmarks = tempfile::tempdir().unwrap();
    let root = benchmarks.path().to_path_buf();
    let dir = layout_with(&root, |mut lines| {
        lines.insert(10, String::new());
        lines
    });
    let message = error(&root, dir.path());
    assert!(
        message.contains("generated_predictions.jsonl:11: empty line"),
        "{message}"
    );
}

#[test]
fn our_jsonl_layout_scores_the_same_as_guardreasoners() {
    let benchmarks = tempfile::tempdir().unwrap();
    let root = benchmarks.path().to_path_buf();
    let theirs_dir = layout_with(&root, |mut lines| {
        // A few wrong predictions, so that the score is not trivially perfect.
        for line in lines.iter_mut().take(10) {
            *line = line.replace("Request: unharmful", "Request: harmful");
        }
        lines
    });
    let source = theirs_dir
        .path()
        .join("SimpleSafetyTests/generated_predictions.jsonl");
    let mut lines: Vec<String> = fs::read_to_string(source)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(index, line)| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            json!({"benchmark": "SimpleSafetyTests", "index": index, "output": record["predict"]})
                .to_string()
        })
        .collect();
    lines.reverse(); // order does not matter in our layout
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outputs.jsonl");
    fs::write(&file, lines.join("\n")).unwrap();
    let ours = score_outputs(&file, &root, ScoreMode::Paper, Weighting::Files).unwrap();
    let theirs =
        score_outputs(theirs_dir.path(), &root, ScoreMode::Paper, Weighting::Files).unwrap();
    assert_eq!(ours.benchmarks, theirs.benchmarks);

    // A duplicated index is an error at its line.
    lines.push(lines[0].clone());
    fs::write(&file, lines.join("\n")).unwrap();
    let message = error(&root, &file);
    assert!(
        message.contains("outputs.jsonl:101: second output for sample 100"),
        "{message}"
    );
}
