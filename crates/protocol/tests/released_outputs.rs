//! The parsers on GuardReasoner's released outputs (real model text, `shared/data`).

use guardreasoner_protocol::parse::{paper, parse_structured};
use guardreasoner_protocol::{Answer, Task};

fn released_outputs() -> Option<Vec<String>> {
    let root = guardreasoner_test_support::shared_benchmarks()?.join("test");
    let mut outputs = Vec::new();
    for size in ["1B", "3B", "8B"] {
        for entry in std::fs::read_dir(root.join(size)).unwrap() {
            let file = entry.unwrap().path().join("generated_predictions.jsonl");
            for line in std::fs::read_to_string(&file).unwrap().lines() {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                outputs.push(record["predict"].as_str().unwrap().to_string());
            }
        }
    }
    Some(outputs)
}

#[test]
fn structured_agrees_with_paper_wherever_the_paper_parser_reads_a_label() {
    let Some(outputs) = released_outputs() else {
        return;
    };
    assert_eq!(outputs.len(), 6585);
    let mut compared = 0;
    let mut disagreements = Vec::new();
    for output in &outputs {
        let structured = parse_structured(output).verdict;
        for task in Task::ALL {
            if let Some(label) = paper::extract(output, task) {
                compared += 1;
                if structured.get(task) != Answer::Label(label) {
                    disagreements.push((task, label, structured.get(task)));
                }
            }
        }
    }
    // The paper parser takes the first match in the tail, the structured one reads the last answers
    // block; they differ only on outputs with several blocks that disagree with each other.
    assert!(compared > 15_000, "{compared}");
    assert!(
        disagreements.len() * 1000 < compared,
        "{} of {compared} disagree: {:?}",
        disagreements.len(),
        &disagreements[..disagreements.len().min(10)]
    );
}

#[test]
fn structured_reads_more_outputs_than_the_paper_parser() {
    let Some(outputs) = released_outputs() else {
        return;
    };
    let readable =
        |complete: &dyn Fn(&String) -> bool| outputs.iter().filter(|o| complete(o)).count();
    let paper_complete = readable(&|o| paper::extract(o, Task::Request).is_some());
    let structured_complete =
        readable(&|o| matches!(parse_structured(o).verdict.request, Answer::Label(_)));
    assert!(
        structured_complete > paper_complete,
        "structured {structured_complete}, paper {paper_complete}"
    );
    // Every released output with reasoning headings splits into task sections; the few without
    // (74 of 6,585) are bare answers blocks.
    for output in &outputs {
        let parsed = parse_structured(output);
        if parsed.tasks.is_empty() {
            assert!(
                !parsed.reasoning.lines().any(|line| line.starts_with('#')),
                "unsplit reasoning: {:?}",
                parsed.reasoning
            );
        }
    }
}
