//! What each evaluation example came out as, kept in the evaluation set's order: enough to recompute any
//! metric of the task on a resample of the examples, which is what bootstrap intervals and paired tests
//! between two runs on the same dev set need.
//!
//! ```
//! use peft_train::task::Outcomes;
//! let o = Outcomes::Classes {
//!     classes: 2,
//!     labels: vec![0, 1, 1, 0],
//!     predictions: vec![0, 1, 0, 0],
//!     losses: vec![0.1, 0.2, 1.5, 0.3],
//! };
//! assert_eq!(o.len(), 4);
//! assert_eq!(o.metric("accuracy", &[0, 1, 2, 3]), Some(0.75));
//! // The same example drawn twice counts twice.
//! assert_eq!(o.metric("accuracy", &[2, 2, 1]), Some(1.0 / 3.0));
//! assert_eq!(o.metric("perplexity", &[0]), None);
//! ```

use serde::{Deserialize, Serialize};

use super::classify::{macro_f1, matthews};
use super::Metrics;

/// Per-example results of one evaluation, in evaluation-set order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcomes {
    /// Classification: each example's true class, predicted class and cross-entropy.
    Classes {
        /// Number of classes.
        classes: usize,
        /// True class per example.
        labels: Vec<u32>,
        /// Predicted (arg-max) class per example.
        predictions: Vec<u32>,
        /// Cross-entropy of the true class per example (empty for a baseline that scores no
        /// probabilities, such as the majority class: no `loss` then).
        #[serde(default)]
        losses: Vec<f64>,
    },
    /// Language modelling: each example's summed next-token loss and how many tokens it predicts (a metric
    /// over a set of examples weighs each by its tokens, as the task's own evaluation does).
    Tokens {
        /// Summed cross-entropy over the example's predicted tokens.
        loss_sums: Vec<f64>,
        /// Predicted tokens of the example.
        tokens: Vec<usize>,
    },
}

impl Outcomes {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Outcomes::Classes { labels, .. } => labels.len(),
            Outcomes::Tokens { tokens, .. } => tokens.len(),
        }
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The metrics the task reports, over every example.
    pub fn metrics(&self) -> Metrics {
        let all: Vec<usize> = (0..self.len()).collect();
        self.names()
            .iter()
            .filter_map(|name| Some((name.to_string(), self.metric(name, &all)?)))
            .collect()
    }

    /// The metric names these outcomes give.
    pub fn names(&self) -> &'static [&'static str] {
        match self {
            Outcomes::Classes { .. } => &["accuracy", "loss", "macro_f1", "matthews"],
            Outcomes::Tokens { .. } => &["loss", "perplexity"],
        }
    }

    /// `name` computed over the examples at `sample` (indices may repeat: a bootstrap draw); `None` for a
    /// metric these outcomes cannot give, or an empty sample.
    pub fn metric(&self, name: &str, sample: &[usize]) -> Option<f64> {
        if sample.is_empty() {
            return None;
        }
        let n = sample.len() as f64;
        match self {
            Outcomes::Classes {
                classes,
                labels,
                predictions,
                losses,
            } => match name {
                "accuracy" => Some(
                    sample
                        .iter()
                        .filter(|&&i| labels[i] == predictions[i])
                        .count() as f64
                        / n,
                ),
                "loss" if !losses.is_empty() => {
                    Some(sample.iter().map(|&i| losses[i]).sum::<f64>() / n)
                }
                "macro_f1" | "matthews" => {
                    let mut confusion = vec![vec![0usize; *classes]; *classes];
                    for &i in sample {
                        confusion[labels[i] as usize][predictions[i] as usize] += 1;
                    }
                    Some(if name == "macro_f1" {
                        macro_f1(&confusion)
                    } else {
                        matthews(&confusion)
                    })
                }
                _ => None,
            },
            Outcomes::Tokens { loss_sums, tokens } => {
                let total: f64 = sample.iter().map(|&i| loss_sums[i]).sum();
                let count: usize = sample.iter().map(|&i| tokens[i]).sum();
                if count == 0 {
                    return None;
                }
                let loss = total / count as f64;
                match name {
                    "loss" => Some(loss),
                    "perplexity" => Some(loss.exp()),
                    _ => None,
                }
            }
        }
    }

    /// Whether example `i` was classified correctly (`None` for language-model outcomes).
    pub fn correct(&self, i: usize) -> Option<bool> {
        match self {
            Outcomes::Classes {
                labels,
                predictions,
                ..
            } => Some(labels[i] == predictions[i]),
            Outcomes::Tokens { .. } => None,
        }
    }
}

/// An evaluation's metrics and, where the task keeps them, its per-example outcomes.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The task's metrics over the whole evaluation set.
    pub metrics: Metrics,
    /// Per-example outcomes (`None` for tasks that do not keep them: token classification, seq2seq).
    pub outcomes: Option<Outcomes>,
}

#[cfg(test)]
mod tests {
    use super::Outcomes;

    #[test]
    fn token_outcomes_weigh_examples_by_tokens() {
        let o = Outcomes::Tokens {
            loss_sums: vec![2.0, 9.0],
            tokens: vec![1, 3],
        };
        // (2 + 9) / 4 tokens, not the mean of 2 and 3.
        assert_eq!(o.metric("loss", &[0, 1]), Some(2.75));
        assert_eq!(o.metric("perplexity", &[1]), Some(3f64.exp()));
        assert_eq!(o.metric("accuracy", &[0]), None);
        assert_eq!(o.metrics().len(), 2);
    }

    #[test]
    fn class_outcomes_give_the_confusion_metrics() {
        // Confusion [[3, 1], [1, 1]] (true x predicted): macro-F1 0.625, as classify's test computes.
        let o = Outcomes::Classes {
            classes: 2,
            labels: vec![0, 0, 0, 0, 1, 1],
            predictions: vec![0, 0, 0, 1, 0, 1],
            losses: vec![0.5; 6],
        };
        let m = o.metrics();
        assert!((m["macro_f1"] - 0.625).abs() < 1e-12);
        assert!((m["accuracy"] - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(m["loss"], 0.5);
        assert_eq!(o.correct(3), Some(false));
        assert_eq!(o.metric("accuracy", &[]), None);
    }
}
