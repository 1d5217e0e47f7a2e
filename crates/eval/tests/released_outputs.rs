//! The scorer on GuardReasoner's released outputs, against the paper's script and tables.

mod common;

use guardreasoner_eval::score::BenchmarkScore;
use guardreasoner_eval::{published, score_outputs, Report, ScoreMode, Weighting};
use guardreasoner_protocol::Task;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    model: String,
    benchmark: String,
    paper_f1: f64,
    strict_f1: f64,
    parse_failures: usize,
}

fn score(size: &str, mode: ScoreMode) -> Option<Report> {
    let root = common::benchmarks()?;
    Some(score_outputs(&root.join("test").join(size), &root, mode, Weighting::Files).unwrap())
}

fn find<'a>(report: &'a Report, benchmark: &str) -> &'a BenchmarkScore {
    report
        .benchmarks
        .iter()
        .find(|s| s.benchmark == benchmark)
        .unwrap_or_else(|| panic!("{benchmark} not scored"))
}

fn rounded(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[test]
fn the_values_the_issue_names() {
    let Some(eight) = score("8B", ScoreMode::Paper) else {
        return;
    };
    assert_eq!(rounded(find(&eight, "AegisSafetyTest").f1), 90.18);
    assert_eq!(rounded(find(&eight, "XSTestResponseRefusal").f1), 93.68);
    let one = score("1B", ScoreMode::Paper).unwrap();
    assert_eq!(rounded(find(&one, "HarmBenchPrompt").f1), 96.31);
    let three = score("3B", ScoreMode::Paper).unwrap();
    let refusal = find(&three, "XSTestResponseRefusal");
    assert_eq!(rounded(refusal.f1), 80.61);
    assert_eq!(refusal.parse_failures, 22);
    let three_strict = score("3B", ScoreMode::Strict).unwrap();
    assert_eq!(
        rounded(find(&three_strict, "XSTestResponseRefusal").f1),
        85.41
    );
}

#[test]
fn all_eighteen_files_score_as_the_papers_script_scores_them() {
    let Some(_) = common::benchmarks() else {
        return;
    };
    let references: Vec<Reference> =
        serde_json::from_str(include_str!("fixtures/released_scores.json")).unwrap();
    assert_eq!(references.len(), 18);
    for size in ["1B", "3B", "8B"] {
        let paper_mode = score(size, ScoreMode::Paper).unwrap();
        let strict_mode = score(size, ScoreMode::Strict).unwrap();
        assert_eq!(paper_mode.benchmarks.len(), 6);
        let of_size: Vec<&Reference> = references.iter().filter(|r| r.model == size).collect();
        assert_eq!(of_size.len(), 6, "{size}: a reference per benchmark");
        for reference in of_size {
            let paper_score = find(&paper_mode, &reference.benchmark);
            let strict_score = find(&strict_mode, &reference.benchmark);
            let what = format!("{size} {}", reference.benchmark);
            assert!(
                (paper_score.f1 - reference.paper_f1).abs() < 1e-9,
                "{what}: {} vs {}",
                paper_score.f1,
                reference.paper_f1
            );
            assert!(
                (strict_score.f1 - reference.strict_f1).abs() < 1e-9,
                "{what} strict"
            );
            assert_eq!(
                paper_score.parse_failures, reference.parse_failures,
                "{what}"
            );
        }
    }
}

#[test]
fn about_half_equal_the_papers_table_and_all_are_within_0_6() {
    let Some(_) = common::benchmarks() else {
        return;
    };
    let mut equal = 0;
    for size in ["1B", "3B", "8B"] {
        let report = score(size, ScoreMode::Paper).unwrap();
        for s in &report.benchmarks {
            let published =
                published::f1(&format!("GuardReasoner {size}"), s.benchmark, s.task).unwrap();
            let ours = rounded(s.f1);
            assert!(
                (ours - published).abs() <= 0.6,
                "{size} {}: {ours} vs {published}",
                s.benchmark
            );
            if (ours - published).abs() < 1e-9 {
                equal += 1;
            }
        }
    }
    assert_eq!(equal, 10, "cells equal to the paper's table");
}

#[test]
fn the_report_counts_and_averages() {
    let Some(report) = score("3B", ScoreMode::Paper) else {
        return;
    };
    let refusal = find(&report, "XSTestResponseRefusal");
    assert_eq!(refusal.samples, 449);
    assert_eq!(refusal.scored, 449);
    assert_eq!(refusal.skipped_no_truth, 0);
    // 22 failures on refusal/compliance truth, each counted twice.
    assert_eq!(refusal.confusion.total(), 449 + 22);
    assert!(!report.complete);
    assert_eq!(report.tasks.len(), 3);
    let headline = report.headline.unwrap();
    let mean = report.tasks.iter().map(|t| t.f1).sum::<f64>() / 3.0;
    assert!((headline - mean).abs() < 1e-9);
    // The refusal average over one benchmark is that benchmark's F1.
    let refusal_average = report
        .tasks
        .iter()
        .find(|t| t.task == Task::Completion)
        .unwrap();
    assert!((refusal_average.f1 - refusal.f1).abs() < 1e-9);

    // Paper-mode drops harmful-truth failures: 8B AegisSafetyTest has one, and it is not counted.
    let eight = score("8B", ScoreMode::Paper).unwrap();
    let aegis = find(&eight, "AegisSafetyTest");
    assert_eq!((aegis.parse_failures, aegis.parse_failures_dropped), (1, 1));
    assert_eq!(aegis.confusion.total(), 358);
    let strict = score("8B", ScoreMode::Strict).unwrap();
    assert_eq!(find(&strict, "AegisSafetyTest").confusion.total(), 359);
}
