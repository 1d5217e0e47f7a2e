//! The benchmark loaders on the real benchmark files.

mod common;

use guardreasoner_eval::dataset::{self, load_file};
use guardreasoner_eval::registry::{find, BENCHMARKS};
use guardreasoner_protocol::{Label, PromptFormat, Task, INSTRUCTION};

#[test]
fn every_file_loads_with_the_exact_instruction_and_round_trips_its_input() {
    let Some(root) = common::benchmarks() else {
        return;
    };
    for benchmark in &BENCHMARKS {
        let data = dataset::load(&root, benchmark).unwrap();
        for (index, sample) in data.samples.iter().enumerate() {
            assert_eq!(
                sample.instruction,
                INSTRUCTION,
                "{} record {}",
                benchmark.name,
                index + 1
            );
            let conversation = sample.conversation().expect("a well-formed input block");
            assert_eq!(conversation.input_block(), sample.input);
            assert_eq!(
                sample.prompt(PromptFormat::Eval),
                PromptFormat::Eval.render(&conversation)
            );
        }
    }
}

#[test]
fn label_counts_match_the_sources() {
    let Some(root) = common::benchmarks() else {
        return;
    };
    let count = |name: &str, task: Task, label: Label| {
        let data = dataset::load(&root, find(name).unwrap()).unwrap();
        data.samples
            .iter()
            .filter(|s| s.truth.get(task) == Some(label))
            .count()
    };
    assert_eq!(count("ToxicChat", Task::Request, Label::Harmful), 362);
    assert_eq!(count("ToxicChat", Task::Request, Label::Unharmful), 2491);
    assert_eq!(
        count("XSTestResponseRefusal", Task::Completion, Label::Refusal),
        178
    );
    assert_eq!(count("SafeRLHF", Task::Response, Label::Harmful), 1000);
    assert_eq!(count("BeaverTails", Task::Response, Label::Unharmful), 1288);
    assert_eq!(count("WildGuardTest", Task::Request, Label::Harmful), 754);
    assert_eq!(count("WildGuardTest", Task::Response, Label::Harmful), 284);
    assert_eq!(
        count("WildGuardTest", Task::Completion, Label::Compliance),
        1157
    );
}

#[test]
fn wildguardtest_parquet_and_json_rebuild_agree_row_for_row() {
    let Some(root) = common::benchmarks() else {
        return;
    };
    let benchmark = find("WildGuardTest").unwrap();
    let parquet = load_file(&root.join("wildguardtest/wildguardtest.parquet"), benchmark).unwrap();
    let json = load_file(
        &root.join("wildguardtest/wildguardtest_guardreasoner_format.json"),
        benchmark,
    )
    .unwrap();
    assert_eq!(parquet.len(), 1725);
    assert_eq!(parquet, json);
    let missing = |task| {
        parquet
            .iter()
            .filter(|s| s.truth.get(task).is_none())
            .count()
    };
    assert_eq!(
        (
            missing(Task::Request),
            missing(Task::Response),
            missing(Task::Completion)
        ),
        (26, 16, 5)
    );
}

#[test]
fn a_corrupt_parquet_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wildguardtest.parquet");
    std::fs::write(&path, b"PAR1 this is not parquet PAR1").unwrap();
    let message = load_file(&path, find("WildGuardTest").unwrap())
        .unwrap_err()
        .to_string();
    assert!(message.contains("wildguardtest.parquet"), "{message}");
    assert!(message.contains("Parquet"), "{message}");
}
