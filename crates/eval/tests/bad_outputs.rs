//! Bad outputs files: each is an error that names the file and the line.

mod common;

use std::fs;
use std::path::Path;

use guardreasoner_eval::{score_outputs, ScoreMode, Weighting};

/// Copies the 8B SimpleSafetyTests outputs into a temporary layout, transformed by `edit`.
fn layout_with(root: &Path, edit: impl Fn(Vec<String>) -> Vec<String>) -> tempfile::TempDir {
    let source = root.join("test/8B/SimpleSafetyTests/generated_predictions.jsonl");
    let lines: Vec<String> = fs::read_to_string(source)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
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
    let Some(root) = common::benchmarks() else {
        return;
    };
    let dir = layout_with(&root, |lines| lines);
    let report = score_outputs(dir.path(), &root, ScoreMode::Paper, Weighting::Files).unwrap();
    assert_eq!(report.benchmarks.len(), 1);
}

#[test]
fn a_truncated_json_line_names_file_and_line() {
    let Some(root) = common::benchmarks() else {
        return;
    };
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
    let Some(root) = common::benchmarks() else {
        return;
    };
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
    let Some(root) = common::benchmarks() else {
        return;
    };
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
    let Some(root) = common::benchmarks() else {
        return;
    };
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
    let Some(root) = common::benchmarks() else {
        return;
    };
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
    let Some(root) = common::benchmarks() else {
        return;
    };
    let source = root.join("test/1B/AegisSafetyTest/generated_predictions.jsonl");
    let mut lines: Vec<String> = fs::read_to_string(source)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(index, line)| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            serde_json::json!({"benchmark": "AegisSafetyTest", "index": index, "output": record["predict"]})
                .to_string()
        })
        .collect();
    lines.reverse(); // order does not matter in our layout
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outputs.jsonl");
    fs::write(&file, lines.join("\n")).unwrap();
    let ours = score_outputs(&file, &root, ScoreMode::Paper, Weighting::Files).unwrap();
    let theirs = score_outputs(
        &root.join("test/1B"),
        &root,
        ScoreMode::Paper,
        Weighting::Files,
    )
    .unwrap();
    let aegis = theirs
        .benchmarks
        .iter()
        .find(|s| s.benchmark == "AegisSafetyTest")
        .unwrap();
    assert_eq!(ours.benchmarks[0], *aegis);

    // A duplicated index is an error at its line.
    lines.push(lines[0].clone());
    fs::write(&file, lines.join("\n")).unwrap();
    let message = error(&root, &file);
    assert!(
        message.contains("outputs.jsonl:360: second output for sample 359"),
        "{message}"
    );
}
