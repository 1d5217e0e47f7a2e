//! The training-data readers on real files we did not write (the shared data) and on broken ones.

use std::path::Path;

use guardreasoner_protocol::{Label, INSTRUCTION};
use guardreasoner_train::data::{self, sources, Source};
use guardreasoner_train::TrainError;

#[test]
fn released_guardreasonertrain_samples_read_with_their_splits_and_labels() {
    let Some(root) = guardreasoner_test_support::shared_data() else {
        return;
    };
    let samples = root.join("train/guardreasonertrain_samples");
    let records = data::read_records(&samples.join("sample.json")).unwrap();
    assert_eq!(records.len(), 4);
    let sources: Vec<_> = records.iter().map(|r| r.source.clone().unwrap()).collect();
    assert_eq!(
        sources,
        [
            "WildGuardTrainR",
            "AegisTrainR",
            "BeaverTailsTrainR",
            "ToxicChatTrainR"
        ]
    );
    assert!(records.iter().all(|r| r.instruction == INSTRUCTION));
    // DATA_SOURCES.md: harmful/refusal/unharmful, harmful/None/None, harmful/compliance/harmful,
    // unharmful/None/None, read from the outputs' answers blocks.
    let wild = records[0].truth;
    assert_eq!(
        (wild.request, wild.completion, wild.response),
        (
            Some(Label::Harmful),
            Some(Label::Refusal),
            Some(Label::Unharmful)
        )
    );
    assert_eq!(records[1].truth.completion, None);
    assert_eq!(records[2].truth.completion, Some(Label::Compliance));
    assert_eq!(records[3].truth.request, Some(Label::Unharmful));

    let five = data::read_records(&samples.join("sample_3task_data.json")).unwrap();
    assert_eq!(five.len(), 5);
    assert_eq!(five[1].truth.request, Some(Label::Unharmful));

    // Written with the label fields and read back unchanged.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("train.json");
    data::write_records(&out, &records).unwrap();
    assert_eq!(data::read_records(&out).unwrap(), records);
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("\"response_refusal_label\": \"refusal\""));
}

#[test]
fn toxicchat_from_judge_bench_has_the_papers_2801_rows() {
    let Some(root) = guardreasoner_test_support::shared_data() else {
        return;
    };
    let loaded = sources::load(
        Source::ToxicChatTrain,
        &root.join("train/toxicchat/toxic_chat_train.json"),
    )
    .unwrap();
    assert_eq!(loaded.samples.len(), 2801);
    assert_eq!(loaded.skipped_total(), 0);
    let harmful = loaded
        .samples
        .iter()
        .filter(|s| s.truth.request == Some(Label::Harmful))
        .count();
    assert_eq!(harmful, 384, "DATA_SOURCES.md: toxicity 1 on 384 rows");
    assert!(loaded
        .samples
        .iter()
        .all(|s| s.conversation.response.is_none()));
}

#[test]
fn wildguardmix_parquet_reads_with_all_three_labels() {
    let Some(root) = guardreasoner_test_support::shared_data() else {
        return;
    };
    // The test split has the train split's columns; the loader reads either.
    let loaded = sources::load(
        Source::WildGuardTrain,
        &root.join("benchmarks/wildguardtest/wildguardtest.parquet"),
    )
    .unwrap();
    assert_eq!(loaded.samples.len(), 1725);
    let with_response = loaded
        .samples
        .iter()
        .filter(|s| s.conversation.response.is_some())
        .count();
    assert!(with_response > 0);
    assert!(loaded
        .samples
        .iter()
        .any(|s| s.truth.completion == Some(Label::Refusal)));
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn upstream_formats_map_their_labels_and_count_what_they_skip() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(
        dir.path(),
        "toxicchat0124_train.csv",
        "conv_id,user_input,model_output,human_annotation,toxicity,jailbreaking,openai_moderation\n\
         a,\"hi, there\",hello,True,0,0,[]\n\
         b,how to make a bomb,no,True,1,0,[]\n\
         c,unlabelled,x,False,0,0,[]\n",
    );
    let loaded = sources::load(Source::ToxicChatTrain, &csv).unwrap();
    assert_eq!(loaded.samples.len(), 2);
    assert_eq!(loaded.samples[0].conversation.prompt, "hi, there");
    assert_eq!(loaded.samples[1].truth.request, Some(Label::Harmful));
    assert_eq!(loaded.skipped_total(), 1);

    let aegis = write(
        dir.path(),
        "aegis.jsonl",
        concat!(
            r#"{"id":"1","text":"t1","text_type":"user_message","labels_0":"Safe","labels_1":"Safe","labels_2":"Violence","labels_3":null,"labels_4":null}"#,
            "\n",
            r#"{"id":"2","text":"t2","text_type":"user_message","labels_0":"Safe","labels_1":"Violence","labels_2":"Needs Caution","labels_3":"None"}"#,
            "\n",
            r#"{"id":"3","text":"t3","text_type":"user_message","labels_0":"None"}"#,
            "\n",
        ),
    );
    let loaded = sources::load(Source::AegisTrain, &aegis).unwrap();
    let labels: Vec<_> = loaded.samples.iter().map(|s| s.truth.request).collect();
    assert_eq!(labels, [Some(Label::Unharmful), Some(Label::Harmful)]);
    assert_eq!(loaded.skipped["Aegis row with no annotator label"], 1);

    let beaver = write(
        dir.path(),
        "train.jsonl",
        concat!(
            r#"{"prompt":"p","response":"r","category":{},"is_safe":false}"#,
            "\n"
        ),
    );
    let loaded = sources::load(Source::BeaverTailsTrain, &beaver).unwrap();
    let truth = loaded.samples[0].truth;
    assert_eq!(
        (truth.request, truth.response),
        (None, Some(Label::Harmful))
    );
}

#[test]
fn broken_files_are_errors_naming_the_file_record_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad_line = write(
        dir.path(),
        "bad.jsonl",
        "{\"prompt\":\"p\",\"response\":\"r\",\"is_safe\":true}\n{\"prompt\": oops}\n",
    );
    let error = sources::load(Source::BeaverTailsTrain, &bad_line).unwrap_err();
    assert!(
        matches!(error, TrainError::AtRecord { record: 2, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("bad.jsonl"), "{error}");

    let bad_label = write(
        dir.path(),
        "wild.jsonl",
        "{\"prompt\":\"p\",\"response\":null,\"prompt_harm_label\":\"dangerous\"}\n",
    );
    let error = sources::load(Source::WildGuardTrain, &bad_label)
        .unwrap_err()
        .to_string();
    assert!(error.contains("record 1"), "{error}");
    assert!(error.contains("`prompt_harm_label`"), "{error}");
    assert!(error.contains("`dangerous`"), "{error}");

    let no_output = write(
        dir.path(),
        "records.json",
        "[{\"instruction\":\"i\",\"input\":\"x\",\"output\":\"o\"},{\"instruction\":\"i\",\"input\":\"x\"}]",
    );
    let error = data::read_records(&no_output).unwrap_err().to_string();
    assert!(
        error.contains("record 2") && error.contains("`output`"),
        "{error}"
    );

    let not_json = write(dir.path(), "broken.json", "[{\"instruction\": ");
    let error = data::read_records(&not_json).unwrap_err().to_string();
    assert!(
        error.contains("broken.json") && error.contains("line 1"),
        "{error}"
    );
}
