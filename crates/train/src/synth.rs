//! Reasoning-data synthesis: a teacher LLM behind an OpenAI-compatible chat endpoint writes the
//! reasoning for each labelled sample, given its ground truth (SPEC section 7).
//!
//! Better than the paper's script, which kept API errors as empty outputs and never checked the
//! teacher: a request that fails with 429, a 5xx or a broken connection is retried with
//! exponential backoff (honouring `Retry-After`); a reply whose answers block does not state the
//! ground truth is asked again (once more by default, sampled this time) and dropped if still
//! wrong; every drop is counted by reason. Results stream out in completion order with their
//! sample index, so a caller can append them to a file and resume.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use guardreasoner_eval::dataset::Truth;
use guardreasoner_protocol::{Label, Task, INSTRUCTION};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::record::answers_in;
use crate::data::{Labelled, Source, TrainRecord};

/// Where the teacher is and how to ask it.
#[derive(Debug, Clone)]
pub struct Teacher {
    /// Base URL of the OpenAI-compatible server (with or without `/v1`).
    pub url: String,
    /// The model name to ask for.
    pub model: String,
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
    /// The paper: GPT-4o at temperature 0.
    pub temperature: f32,
    /// The longest reply.
    pub max_tokens: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Tries per request on 429, 5xx and transport errors.
    pub http_attempts: usize,
    /// Tries per sample when the answers are wrong (the later ones at temperature 0.7).
    pub answer_attempts: usize,
    /// Wait before the first retry (doubled each time, at most a minute).
    pub backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for Teacher {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: String::new(),
            api_key: None,
            temperature: 0.0,
            max_tokens: 2048,
            concurrency: 8,
            http_attempts: 6,
            answer_attempts: 2,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(600),
        }
    }
}

/// The teacher's instruction: GuardReasoner's, reworded for humans and LLMs, with the format and
/// the ground truth (SPEC section 7).
pub fn system_prompt(truth: &Truth, source: Source) -> String {
    let instruction = INSTRUCTION
        .replace("humans and AI", "humans and LLMs")
        .replace("AI assistant", "LLM assistant");
    let label = |task| truth.get(task).map_or("None", Label::as_str);
    let decide = if source == Source::BeaverTailsTrain {
        "The ground truth gives only the response's harmfulness: decide Request and Completion \
         yourself, from the conversation.\n"
    } else {
        ""
    };
    format!(
        "{instruction}\
         For each task, choose only between harmful and unharmful, or between refusal and \
         compliance. Think step by step: 1 to 10 reasoning steps per task, each the smallest \
         unit of reasoning. Write the steps as `## Reasoning Step k` under `# Task 1`, `# Task 2` \
         and `# Task 3` headings, and end with the ground truth below, unchanged.\n\
         {decide}\
         The ground truth is\n\n---\n\nAnswers: \nRequest: {}\nCompletion: {}\nResponse: {}\n\n\n",
        label(Task::Request),
        label(Task::Completion),
        label(Task::Response),
    )
}

/// Whether a reply states the ground truth: every label the source gives must be the reply's
/// (the others, `None` for the source, the teacher may state or not).
pub fn states_truth(reply: &str, truth: &Truth) -> bool {
    let Ok(stated) = answers_in(reply) else {
        return false;
    };
    Task::ALL.iter().all(|&task| {
        truth
            .get(task)
            .is_none_or(|label| stated.get(task) == Some(label))
    })
}

/// Why a sample produced no record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dropped {
    /// Every reply's answers contradicted the ground truth.
    WrongAnswer,
    /// The endpoint kept failing (the last error is kept).
    ApiError(String),
}

/// One sample's outcome, as the synthesis file keeps it (one JSON line each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The sample's index in the input.
    pub index: usize,
    /// The record, when the teacher's reply was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<serde_json::Value>,
    /// Why not, otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Dropped>,
    /// Requests retried (429, 5xx, transport) and replies asked again (wrong answers).
    #[serde(default)]
    pub retries: usize,
}

/// Runs the teacher over every sample not in `done`, `teacher.concurrency` at a time, calling
/// `on_outcome` on the caller's thread as each finishes.
pub fn synthesize(
    samples: &[Labelled],
    teacher: &Teacher,
    done: &HashSet<usize>,
    mut on_outcome: impl FnMut(Outcome) -> Result<(), crate::TrainError>,
) -> Result<(), crate::TrainError> {
    let todo: Vec<usize> = (0..samples.len()).filter(|i| !done.contains(i)).collect();
    let next = AtomicUsize::new(0);
    let agent = guardreasoner_data::fetch::http_agent(Some(teacher.timeout), false);
    let (sender, receiver) = mpsc::channel::<Outcome>();
    std::thread::scope(|scope| {
        for _ in 0..teacher.concurrency.max(1) {
            let sender = sender.clone();
            let (next, todo, agent) = (&next, &todo, &agent);
            scope.spawn(move || loop {
                let position = next.fetch_add(1, Ordering::Relaxed);
                let Some(&index) = todo.get(position) else {
                    break;
                };
                let outcome = one(agent, teacher, index, &samples[index]);
                if sender.send(outcome).is_err() {
                    break;
                }
            });
        }
        drop(sender);
        for outcome in receiver {
            if let Err(error) = on_outcome(outcome) {
                // Stop handing out work; the workers finish what they hold.
                next.store(usize::MAX / 2, Ordering::Relaxed);
                return Err(error);
            }
        }
        Ok(())
    })
}

fn one(agent: &ureq::Agent, teacher: &Teacher, index: usize, sample: &Labelled) -> Outcome {
    let system = system_prompt(&sample.truth, sample.source);
    let user = sample.conversation.input_block();
    let mut retries = 0;
    let mut dropped = Dropped::WrongAnswer;
    for attempt in 0..teacher.answer_attempts.max(1) {
        let temperature = if attempt == 0 {
            teacher.temperature
        } else {
            0.7
        };
        match ask(agent, teacher, &system, &user, temperature, &mut retries) {
            Ok(reply) if states_truth(&reply, &sample.truth) => {
                let record = TrainRecord {
                    instruction: INSTRUCTION.to_string(),
                    input: user,
                    output: reply,
                    source: Some(format!("{}R", sample.source.name())),
                    truth: sample.truth,
                };
                return Outcome {
                    index,
                    record: Some(record.to_json()),
                    dropped: None,
                    retries,
                };
            }
            Ok(_) => {
                dropped = Dropped::WrongAnswer;
                if attempt + 1 < teacher.answer_attempts {
                    retries += 1;
                }
            }
            Err(message) => {
                dropped = Dropped::ApiError(message);
                break;
            }
        }
    }
    Outcome {
        index,
        record: None,
        dropped: Some(dropped),
        retries,
    }
}

/// One chat completion, retried on 429, 5xx and transport errors; the reply's text.
fn ask(
    agent: &ureq::Agent,
    teacher: &Teacher,
    system: &str,
    user: &str,
    temperature: f32,
    retries: &mut usize,
) -> Result<String, String> {
    let base = teacher.url.trim_end_matches('/');
    let url = format!(
        "{}/v1/chat/completions",
        base.strip_suffix("/v1").unwrap_or(base)
    );
    let body = json!({
        "model": teacher.model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
        "temperature": temperature,
        "max_tokens": teacher.max_tokens,
    });
    let mut wait = teacher.backoff;
    let mut last = String::new();
    for attempt in 0..teacher.http_attempts.max(1) {
        if attempt > 0 {
            *retries += 1;
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(60));
        }
        let mut request = agent.post(&url);
        if let Some(key) = &teacher.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = match request.send_json(&body) {
            Ok(response) => response,
            Err(e) => {
                last = format!("POST {url}: {e}");
                continue;
            }
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        if status == 429 || status >= 500 {
            if let Some(seconds) = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                wait = Duration::from_secs(seconds.min(120));
            }
            last = format!("POST {url}: HTTP {status}: {}", text.trim());
            continue;
        }
        if status != 200 {
            return Err(format!("POST {url}: HTTP {status}: {}", text.trim()));
        }
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("POST {url}: the reply is not JSON ({e}): {text}"))?;
        return value["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("POST {url}: no choices[0].message.content in {text}"));
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_carries_the_ground_truth_block_and_the_rewording() {
        let truth = Truth {
            request: Some(Label::Harmful),
            ..Truth::default()
        };
        let prompt = system_prompt(&truth, Source::AegisTrain);
        assert!(prompt.contains("humans and LLMs"));
        assert!(prompt.contains("LLM assistant's response is a refusal"));
        assert!(prompt.ends_with(
            "The ground truth is\n\n---\n\nAnswers: \nRequest: harmful\nCompletion: None\nResponse: None\n\n\n"
        ));
        assert!(!prompt.contains("decide Request and Completion"));
        assert!(system_prompt(&truth, Source::BeaverTailsTrain).contains("decide Request"));
        assert!(states_truth(
            "...\nAnswers: \nRequest: harmful\nCompletion: None\nResponse: None\n",
            &truth
        ));
        assert!(!states_truth(
            "...\nAnswers: \nRequest: unharmful\n",
            &truth
        ));
        assert!(!states_truth("no answers at all", &truth));
    }
}
