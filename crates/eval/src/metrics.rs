//! Binary classification metrics, computed as scikit-learn computes them.

use serde::Serialize;

/// A 2x2 confusion matrix for one positive class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Confusion {
    /// Positive truth, positive prediction.
    pub true_positive: u64,
    /// Negative truth, positive prediction.
    pub false_positive: u64,
    /// Negative truth, negative prediction.
    pub true_negative: u64,
    /// Positive truth, negative prediction.
    pub false_negative: u64,
}

impl Confusion {
    /// Records one (truth, prediction) pair, each given as "is it the positive class?".
    pub fn add(&mut self, truth_positive: bool, predicted_positive: bool) {
        match (truth_positive, predicted_positive) {
            (true, true) => self.true_positive += 1,
            (false, true) => self.false_positive += 1,
            (false, false) => self.true_negative += 1,
            (true, false) => self.false_negative += 1,
        }
    }

    /// How many pairs were recorded.
    pub fn total(&self) -> u64 {
        self.true_positive + self.false_positive + self.true_negative + self.false_negative
    }

    /// F1 of the positive class, x100. 0 when there is no positive truth nor prediction
    /// (scikit-learn's `zero_division` default).
    pub fn f1(&self) -> f64 {
        ratio(
            2 * self.true_positive,
            2 * self.true_positive + self.false_positive + self.false_negative,
        )
    }

    /// Precision of the positive class, x100.
    pub fn precision(&self) -> f64 {
        ratio(self.true_positive, self.true_positive + self.false_positive)
    }

    /// Recall of the positive class, x100.
    pub fn recall(&self) -> f64 {
        ratio(self.true_positive, self.true_positive + self.false_negative)
    }

    /// Accuracy, x100.
    pub fn accuracy(&self) -> f64 {
        ratio(self.true_positive + self.true_negative, self.total())
    }
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        100.0 * numerator as f64 / denominator as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        let mut confusion = Confusion::default();
        for (truth, predicted, times) in [
            (true, true, 6),
            (false, true, 2),
            (true, false, 4),
            (false, false, 8),
        ] {
            for _ in 0..times {
                confusion.add(truth, predicted);
            }
        }
        assert_eq!(confusion.total(), 20);
        assert!((confusion.precision() - 75.0).abs() < 1e-9);
        assert!((confusion.recall() - 60.0).abs() < 1e-9);
        assert!((confusion.f1() - 100.0 * 12.0 / 18.0).abs() < 1e-9);
        assert!((confusion.accuracy() - 70.0).abs() < 1e-9);
    }

    #[test]
    fn no_positives_at_all_gives_zero_not_nan() {
        let mut confusion = Confusion::default();
        confusion.add(false, false);
        assert_eq!(confusion.f1(), 0.0);
        assert_eq!(confusion.precision(), 0.0);
        assert_eq!(Confusion::default().accuracy(), 0.0);
    }
}
