//! Rendering a [`Report`] as a terminal table, markdown, or JSON.

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{CellAlignment, Table};
use serde::Serialize;

use crate::published::{self, GUARDREASONER_MODELS};
use crate::score::{BenchmarkScore, Report};

guardreasoner_protocol::choice! {
    /// The output formats of `guardreasoner score`.
    #[derive(Default)]
    pub enum ReportFormat("report format") {
        /// A table for the terminal.
        #[default]
        Table = "table",
        /// A GitHub markdown table.
        Markdown = "markdown",
        /// One JSON document.
        Json = "json",
    }
}

/// Renders the report in `format`.
pub fn render(report: &Report, format: ReportFormat) -> String {
    match format {
        ReportFormat::Table => render_table(report, false),
        ReportFormat::Markdown => render_table(report, true),
        ReportFormat::Json => render_json(report),
    }
}

fn fixed(value: f64) -> String {
    format!("{value:.2}")
}

fn paper_cells(benchmark: &str, task: guardreasoner_protocol::Task) -> Vec<String> {
    GUARDREASONER_MODELS
        .iter()
        .map(|model| published::f1(model, benchmark, task).map_or("-".into(), fixed))
        .collect()
}

fn score_row(score: &BenchmarkScore) -> Vec<String> {
    let mut row = vec![
        score.task.to_string(),
        score.benchmark.to_string(),
        score.scored.to_string(),
        fixed(score.f1),
        fixed(score.precision),
        fixed(score.recall),
        fixed(score.accuracy),
        if score.parse_failures == 0 {
            "0".to_string()
        } else {
            format!(
                "{} ({:.1}%)",
                score.parse_failures, score.parse_failure_rate
            )
        },
        score.skipped_no_truth.to_string(),
    ];
    row.extend(paper_cells(score.benchmark, score.task));
    row
}

fn render_table(report: &Report, markdown: bool) -> String {
    let mut table = Table::new();
    table.load_preset(if markdown {
        ASCII_MARKDOWN
    } else {
        UTF8_FULL_CONDENSED
    });
    table.set_header([
        "task",
        "benchmark",
        "n",
        "F1",
        "precision",
        "recall",
        "accuracy",
        "parse failures",
        "no truth",
        "paper 1B",
        "paper 3B",
        "paper 8B",
    ]);
    for score in &report.benchmarks {
        table.add_row(score_row(score));
    }
    for average in &report.tasks {
        let mut row = vec![
            average.task.to_string(),
            format!(
                "weighted average ({} of {} benchmarks)",
                average.benchmarks, average.of
            ),
            String::new(),
            fixed(average.f1),
        ];
        row.extend(std::iter::repeat_n(String::new(), 5));
        row.extend(
            GUARDREASONER_MODELS.iter().map(|model| {
                published::task_average(model, average.task).map_or("-".into(), fixed)
            }),
        );
        table.add_row(row);
    }
    if let Some(headline) = report.headline {
        let mut row = vec![
            "all".to_string(),
            "headline (mean of the three task averages)".to_string(),
            String::new(),
            fixed(headline),
        ];
        row.extend(std::iter::repeat_n(String::new(), 5));
        row.extend(
            GUARDREASONER_MODELS
                .iter()
                .map(|model| published::headline(model).map_or("-".into(), fixed)),
        );
        table.add_row(row);
    }
    for column in 2..12 {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }

    let mut text = format!(
        "mode: {} (parse failures {}), task averages weighted by {}\n",
        report.mode,
        match report.mode {
            crate::ScoreMode::Paper =>
                "as the paper's script counts them: dropped for harmful truth, doubled otherwise",
            crate::ScoreMode::Strict => "count once as wrong",
        },
        match report.weighting {
            crate::Weighting::Files => "samples per file",
            crate::Weighting::Paper => "the paper's sample counts",
        }
    );
    text.push_str(&table.to_string());
    text.push('\n');
    for line in notes(report) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// Warnings a reader must not miss: unparseable outputs, partial coverage.
pub fn notes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    for score in report.unparseable(10.0) {
        notes.push(format!(
            "warning: {} ({}): {} of {} outputs ({:.1}%) give no {} label; their F1 mostly measures parse failures{}",
            score.benchmark,
            score.task,
            score.parse_failures,
            score.scored,
            score.parse_failure_rate,
            score.task,
            if score.parse_failures_dropped > 0 {
                format!(
                    " (paper mode dropped {} of them, with harmful truth)",
                    score.parse_failures_dropped
                )
            } else {
                String::new()
            }
        ));
    }
    for score in report
        .benchmarks
        .iter()
        .filter(|s| s.samples < s.benchmark_samples)
    {
        notes.push(format!(
            "note: {} ({}): a limited run, scored on its first {} of {} samples",
            score.benchmark, score.task, score.samples, score.benchmark_samples
        ));
    }
    for score in report.benchmarks.iter().filter(|s| s.too_long > 0) {
        notes.push(format!(
            "warning: {} ({}): {} prompts did not fit the model's context when generated; their outputs are empty and count as parse failures (see generation.json's too_long)",
            score.benchmark, score.task, score.too_long
        ));
    }
    if !report.complete {
        notes.push(format!(
            "note: {} of the paper's 13 benchmark-tasks were scored; averages cover only those, so compare them with the paper's only per benchmark",
            report.benchmarks.len()
        ));
    }
    notes
}

#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    report: &'a Report,
    paper: Vec<JsonPaper>,
    notes: Vec<String>,
}

#[derive(Serialize)]
struct JsonPaper {
    model: &'static str,
    benchmarks: Vec<JsonPaperCell>,
}

#[derive(Serialize)]
struct JsonPaperCell {
    benchmark: &'static str,
    task: guardreasoner_protocol::Task,
    f1: Option<f64>,
}

fn render_json(report: &Report) -> String {
    let paper = GUARDREASONER_MODELS
        .iter()
        .map(|&model| JsonPaper {
            model,
            benchmarks: report
                .benchmarks
                .iter()
                .map(|score| JsonPaperCell {
                    benchmark: score.benchmark,
                    task: score.task,
                    f1: published::f1(model, score.benchmark, score.task),
                })
                .collect(),
        })
        .collect();
    let document = JsonReport {
        report,
        paper,
        notes: notes(report),
    };
    serde_json::to_string_pretty(&document).expect("a report always serializes")
}
