//! The 13 GuardReasoner benchmarks: 11 files, 3 tasks (SPEC section 5).

use guardreasoner_protocol::Task;

/// Where a benchmark file keeps its ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSource {
    /// `output` is the bare label of the benchmark's one task.
    Plain,
    /// `output` is an `Answers:` block (SafeRLHF, BeaverTails).
    AnswersBlock,
    /// The columns `prompt_harm_label`, `response_refusal_label`, `response_harm_label`
    /// (WildGuardTest).
    WildGuardColumns,
}

/// One benchmark file and the tasks it scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Benchmark {
    /// The name used in the paper, in reports, and as the output directory name.
    pub name: &'static str,
    /// Candidate paths of the file under the benchmarks root, the first found is used.
    pub files: &'static [&'static str],
    /// Where the ground truth is.
    pub labels: LabelSource,
    /// The tasks it scores, each with the sample count the paper's weighted averages imply.
    pub tasks: &'static [(Task, u32)],
}

impl Benchmark {
    /// The paper's weight for `task` on this benchmark, when it scores that task.
    pub fn paper_weight(&self, task: Task) -> Option<u32> {
        self.tasks.iter().find(|(t, _)| *t == task).map(|(_, w)| *w)
    }

    /// Whether this benchmark scores `task`.
    pub fn scores(&self, task: Task) -> bool {
        self.paper_weight(task).is_some()
    }
}

/// The WildGuardTest benchmark's name (one file, all three tasks).
pub const WILDGUARDTEST: &str = "WildGuardTest";

/// Every benchmark, in the paper's column order within each task.
pub const BENCHMARKS: [Benchmark; 11] = [
    Benchmark {
        name: "ToxicChat",
        files: &["benchmark/0_8_toxic_chat.json"],
        labels: LabelSource::Plain,
        tasks: &[(Task::Request, 2853)],
    },
    Benchmark {
        name: "HarmBenchPrompt",
        files: &["benchmark/0_3_harmbench_prompt.json"],
        labels: LabelSource::Plain,
        tasks: &[(Task::Request, 239)],
    },
    Benchmark {
        name: "OpenAIModeration",
        files: &["benchmark/0_2_OpenAIModeration.json"],
        labels: LabelSource::Plain,
        tasks: &[(Task::Request, 1680)],
    },
    Benchmark {
        name: "AegisSafetyTest",
        files: &["benchmark/0_1_AegisSafetyTest.json"],
        labels: LabelSource::Plain,
        tasks: &[(Task::Request, 359)],
    },
    Benchmark {
        name: "SimpleSafetyTests",
        files: &["benchmark/0_0_SimpleSafetyTests.json"],
        labels: LabelSource::Plain,
        tasks: &[(Task::Request, 100)],
    },
    Benchmark {
        name: WILDGUARDTEST,
        // GuardReasoner's own file where a user has it; else the upstream test set, as our rebuild
        // in the same JSON layout or as the public Parquet file.
        files: &[
            "benchmark/0_4_wild_guard_test.json",
            "wildguardtest/wildguardtest_guardreasoner_format.json",
            "wildguardtest/wildguardtest.parquet",
        ],
        labels: LabelSource::WildGuardColumns,
        tasks: &[
            (Task::Request, 1756),
            (Task::Response, 1768),
            (Task::Completion, 1777),
        ],
    },
    Benchmark {
        name: "HarmBenchResponse",
        files: &["benchmark/0_5_harmbench_response.json"],
        labels: LabelSource::Plain,
        tasks: &[(Task::Response, 602)],
    },
    Benchmark {
        name: "SafeRLHF",
        files: &["benchmark/0_9_safe_rlhf.json"],
        labels: LabelSource::AnswersBlock,
        tasks: &[(Task::Response, 2000)],
    },
    Benchmark {
        name: "BeaverTails",
        files: &["benchmark/0_A_beaver_tails.json"],
        labels: LabelSource::AnswersBlock,
        tasks: &[(Task::Response, 3021)],
    },
    Benchmark {
        // The paper's repository spells it without the "s"; so do its output directories.
        name: "XSTestReponseHarmful",
        files: &["benchmark/0_6_xstest_response_harmful.json"],
        labels: LabelSource::Plain,
        tasks: &[(Task::Response, 446)],
    },
    Benchmark {
        name: "XSTestResponseRefusal",
        files: &["benchmark/0_7_xstest_response_refusal.json"],
        labels: LabelSource::Plain,
        tasks: &[(Task::Completion, 499)],
    },
];

/// Other spellings accepted for a benchmark name (directory names, user input).
const ALIASES: [(&str, &str); 1] = [("XSTestResponseHarmful", "XSTestReponseHarmful")];

/// Looks a benchmark up by name, ignoring case and accepting known aliases.
pub fn find(name: &str) -> Option<&'static Benchmark> {
    let name = ALIASES
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(name))
        .map_or(name, |(_, canonical)| canonical);
    BENCHMARKS
        .iter()
        .find(|benchmark| benchmark.name.eq_ignore_ascii_case(name))
}

/// The 13 (benchmark, task) pairs in the paper's table order: prompt, response, refusal.
pub fn scored_pairs() -> Vec<(&'static Benchmark, Task)> {
    [Task::Request, Task::Response, Task::Completion]
        .into_iter()
        .flat_map(|task| {
            BENCHMARKS
                .iter()
                .filter(move |benchmark| benchmark.scores(task))
                .map(move |benchmark| (benchmark, task))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirteen_benchmark_tasks_in_eleven_files() {
        assert_eq!(BENCHMARKS.len(), 11);
        assert_eq!(scored_pairs().len(), 13);
        let per_task = |task| scored_pairs().iter().filter(|(_, t)| *t == task).count();
        assert_eq!(per_task(Task::Request), 6);
        assert_eq!(per_task(Task::Response), 5);
        assert_eq!(per_task(Task::Completion), 2);
    }

    #[test]
    fn names_resolve_with_aliases_and_any_case() {
        assert_eq!(find("toxicchat").unwrap().name, "ToxicChat");
        assert_eq!(
            find("XSTestResponseHarmful").unwrap().name,
            "XSTestReponseHarmful"
        );
        assert!(find("MMLU").is_none());
    }

    #[test]
    fn paper_weights_recompute_the_papers_averages() {
        // GuardReasoner 8B, SPEC section 6: the weighted averages come out within 0.01.
        let prompt = [78.79, 91.86, 72.00, 90.18, 99.50, 89.17];
        let weights: Vec<f64> = scored_pairs()
            .iter()
            .filter(|(_, t)| *t == Task::Request)
            .map(|(b, t)| b.paper_weight(*t).unwrap() as f64)
            .collect();
        let average: f64 = prompt.iter().zip(&weights).map(|(f, w)| f * w).sum::<f64>()
            / weights.iter().sum::<f64>();
        assert!((average - 81.09).abs() < 0.01, "{average}");
    }
}
