//! The paper's published F1 tables (SPEC section 6), kept as data in `data/paper_results.json`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use guardreasoner_protocol::Task;
use serde::Deserialize;

/// The models whose numbers reports print beside ours.
pub const GUARDREASONER_MODELS: [&str; 3] =
    ["GuardReasoner 1B", "GuardReasoner 3B", "GuardReasoner 8B"];

#[derive(Debug, Deserialize)]
struct PaperResults {
    models: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
}

static RESULTS: LazyLock<PaperResults> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../data/paper_results.json"))
        .expect("data/paper_results.json is valid (checked by a test)")
});

/// The models the paper reports, in alphabetical order.
pub fn models() -> Vec<&'static str> {
    RESULTS.models.keys().map(String::as_str).collect()
}

/// The paper's F1 (x100) for `model` on `benchmark` and `task`.
pub fn f1(model: &str, benchmark: &str, task: Task) -> Option<f64> {
    RESULTS
        .models
        .get(model)?
        .get(task.name())?
        .get(benchmark)
        .copied()
}

/// The paper's weighted average F1 for `model` on `task`.
pub fn task_average(model: &str, task: Task) -> Option<f64> {
    f1(model, "average", task)
}

/// The paper's headline for `model`: the mean of its three task averages.
pub fn headline(model: &str) -> Option<f64> {
    let sum: Option<f64> = Task::ALL
        .iter()
        .map(|&task| task_average(model, task))
        .sum();
    sum.map(|sum| sum / 3.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::scored_pairs;

    #[test]
    fn every_model_has_all_thirteen_cells() {
        assert_eq!(models().len(), 6);
        for model in models() {
            for (benchmark, task) in scored_pairs() {
                assert!(
                    f1(model, benchmark.name, task).is_some(),
                    "{model} {}",
                    benchmark.name
                );
            }
        }
    }

    #[test]
    fn the_headline_of_guardreasoner_8b_is_84_09() {
        let headline = headline("GuardReasoner 8B").unwrap();
        assert!((headline - 84.09).abs() < 0.005, "{headline}");
    }

    #[test]
    fn the_paper_weights_recompute_every_published_average() {
        for model in models() {
            for task in Task::ALL {
                let pairs: Vec<_> = scored_pairs()
                    .into_iter()
                    .filter(|(_, t)| *t == task)
                    .collect();
                let total: f64 = pairs
                    .iter()
                    .map(|(b, t)| b.paper_weight(*t).unwrap() as f64)
                    .sum();
                let average = pairs
                    .iter()
                    .map(|(b, t)| {
                        f1(model, b.name, *t).unwrap() * b.paper_weight(*t).unwrap() as f64
                    })
                    .sum::<f64>()
                    / total;
                let published = task_average(model, task).unwrap();
                assert!(
                    (average - published).abs() <= 0.011,
                    "{model} {task}: {average} vs {published}"
                );
            }
        }
    }
}
