//! Mining through the engine's interface: k prompts per record, per-sample seeds that do not
//! depend on batching, resumption, and the pairs and weights of SPEC section 7.

use std::collections::HashSet;

use guardreasoner_engine::generate::{ModelInfo, StopReason, Timings};
use guardreasoner_engine::{Batch, EngineError, Generate, Generation, SamplingParams, TokenEvent};
use guardreasoner_eval::dataset::Truth;
use guardreasoner_protocol::{Conversation, Label, PromptFormat, INSTRUCTION};
use guardreasoner_train::data::TrainRecord;
use guardreasoner_train::mine::{self, SampleSettings, Sampled};

/// A stand-in model whose answer depends on its sampler seed: even seeds say harmful, odd ones
/// unharmful; it records the prompts and seeds it was given.
struct SeededAnswers {
    info: ModelInfo,
    seen: Vec<(guardreasoner_protocol::Prompt, u64)>,
}

impl Generate for SeededAnswers {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(
        &mut self,
        batch: &Batch,
        _: &mut dyn FnMut(TokenEvent<'_>),
    ) -> Result<Vec<Generation>, EngineError> {
        Ok(batch
            .prompts
            .iter()
            .enumerate()
            .map(|(index, prompt)| {
                let seed = batch.params.seed + index as u64;
                self.seen.push((prompt.clone(), seed));
                let label = if seed.is_multiple_of(2) { "harmful" } else { "unharmful" };
                let text = format!(
                    "# Task 1\n{}\n---\n\nAnswers: \nRequest: {label}\nCompletion: None\nResponse: None\n",
                    "x".repeat(seed as usize % 5)
                );
                Generation {
                    text,
                    prompt_token_ids: Vec::new(),
                    prompt_tokens: 1,
                    cached_prompt_tokens: 0,
                    generated_tokens: 1,
                    token_ids: vec![],
                    logprobs: None,
                    stop: StopReason::EndOfText,
                    timings: Timings::default(),
                }
            })
            .collect())
    }

    fn count_tokens(
        &mut self,
        _: &guardreasoner_protocol::Prompt,
    ) -> Result<Option<usize>, EngineError> {
        Ok(None)
    }
}

fn record(prompt: &str, label: Label, source: &str) -> TrainRecord {
    TrainRecord {
        instruction: INSTRUCTION.to_string(),
        input: Conversation::prompt_only(prompt).input_block(),
        output: String::new(),
        source: Some(source.into()),
        truth: Truth {
            request: Some(label),
            ..Truth::default()
        },
    }
}

#[test]
fn mining_samples_k_per_record_resumes_and_pairs_the_disagreements() {
    let records = vec![
        record("a", Label::Harmful, "S"),
        record("b", Label::Unharmful, "S"),
        record("c", Label::Harmful, "T"),
    ];
    let settings = SampleSettings {
        k: 4,
        params: SamplingParams {
            temperature: 0.7,
            top_p: 0.95,
            seed: 10,
            max_new_tokens: 64,
            ..SamplingParams::default()
        },
        format: PromptFormat::Llama3Chat,
        records_per_batch: 2,
    };
    let mut engine = SeededAnswers {
        info: ModelInfo {
            backend: "test",
            source: "seeded".into(),
            context_length: 4096,
            max_batch: 8,
            device: "cpu".into(),
        },
        seen: Vec::new(),
    };
    // Record 1 was sampled before an interruption: only 0 and 2 are asked for now.
    let done: HashSet<usize> = [1].into();
    let mut samples = vec![Sampled {
        record: 1,
        outputs: vec!["Request: unharmful Completion: None Response: None".into(); 4],
    }];
    mine::sample(&mut engine, &records, &settings, &done, |s| {
        samples.push(s.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(
        engine.seen.len(),
        8,
        "k prompts for each of the two records left"
    );
    let rendered = PromptFormat::Llama3Chat.render_parts(INSTRUCTION, &records[2].input);
    assert!(engine.seen[4..].iter().all(|(p, _)| *p == rendered));
    // Seeds are 10 + record * k + j whatever the batching: record 2's are 18..22.
    let seeds: Vec<u64> = engine.seen[4..].iter().map(|(_, s)| *s).collect();
    assert_eq!(seeds, [18, 19, 20, 21]);

    samples.sort_by_key(|s| s.record);
    let (pairs, report) = mine::pairs_of(&records, &samples);
    // Records 0 and 2 got two harmful and two unharmful answers: hard; record 1 agreed: not hard.
    assert_eq!(pairs.len(), 2);
    assert!(pairs.iter().all(|p| p.raw_weight == 0.0));
    assert!(pairs[0].chosen.contains("Request: harmful"));
    assert!(pairs[0].rejected.contains("Request: unharmful"));
    assert_eq!(report.judged["S"], 2);
    let weighed = mine::union_and_weigh(vec![pairs]);
    assert!(
        weighed.iter().all(|p| p.weight == 1.0),
        "equal raw weights: the middle"
    );
}
