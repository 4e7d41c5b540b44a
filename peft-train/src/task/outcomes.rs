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
    /// Token classification: each example's labelled tokens (true and predicted class) and their summed
    /// cross-entropy; a metric over a set of examples pools their tokens, as the task's evaluation does.
    TokenClasses {
        /// Number of classes.
        classes: usize,
        /// True class of each labelled token, per example.
        labels: Vec<Vec<u32>>,
        /// Predicted class of each labelled token, per example.
        predictions: Vec<Vec<u32>>,
        /// Summed cross-entropy over the example's labelled tokens.
        loss_sums: Vec<f64>,
    },
    /// Sequence-to-sequence: each example's summed teacher-forced target loss, its target tokens, and
    /// whether the greedy output equalled the target.
    Generated {
        /// Summed cross-entropy over the example's target tokens.
        loss_sums: Vec<f64>,
        /// Target tokens of the example.
        tokens: Vec<usize>,
        /// Whether greedy generation reproduced the target exactly.
        exact: Vec<bool>,
    },
}

impl Outcomes {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Outcomes::Classes { labels, .. } => labels.len(),
            Outcomes::Tokens { tokens, .. } | Outcomes::Generated { tokens, .. } => tokens.len(),
            Outcomes::TokenClasses { labels, .. } => labels.len(),
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
            Outcomes::TokenClasses { .. } => &["accuracy", "loss", "macro_f1"],
            Outcomes::Generated { .. } => &["loss", "perplexity", "exact_match"],
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
            Outcomes::Tokens { loss_sums, tokens } => match name {
                "loss" | "perplexity" => token_loss(loss_sums, tokens, sample, name),
                _ => None,
            },
            Outcomes::Generated {
                loss_sums,
                tokens,
                exact,
            } => match name {
                "loss" | "perplexity" => token_loss(loss_sums, tokens, sample, name),
                "exact_match" => Some(sample.iter().filter(|&&i| exact[i]).count() as f64 / n),
                _ => None,
            },
            Outcomes::TokenClasses {
                classes,
                labels,
                predictions,
                loss_sums,
            } => {
                let count: usize = sample.iter().map(|&i| labels[i].len()).sum();
                if count == 0 {
                    return None;
                }
                let mut confusion = vec![vec![0usize; *classes]; *classes];
                for &i in sample {
                    for (&l, &p) in labels[i].iter().zip(&predictions[i]) {
                        confusion[l as usize][p as usize] += 1;
                    }
                }
                match name {
                    "accuracy" => {
                        let correct: usize = (0..*classes).map(|c| confusion[c][c]).sum();
                        Some(correct as f64 / count as f64)
                    }
                    "loss" => {
                        Some(sample.iter().map(|&i| loss_sums[i]).sum::<f64>() / count as f64)
                    }
                    "macro_f1" => Some(macro_f1(&confusion)),
                    _ => None,
                }
            }
        }
    }

    /// Whether example `i` came out right: classified correctly, or generated exactly (`None` where an
    /// example has no single right or wrong: language modelling, token classification).
    pub fn correct(&self, i: usize) -> Option<bool> {
        match self {
            Outcomes::Classes {
                labels,
                predictions,
                ..
            } => Some(labels[i] == predictions[i]),
            Outcomes::Generated { exact, .. } => Some(exact[i]),
            Outcomes::Tokens { .. } | Outcomes::TokenClasses { .. } => None,
        }
    }
}

/// Loss per token (or its exponential, `perplexity`) of the examples at `sample`, each weighed by its
/// tokens; `None` when they hold no token.
fn token_loss(loss_sums: &[f64], tokens: &[usize], sample: &[usize], name: &str) -> Option<f64> {
    let total: f64 = sample.iter().map(|&i| loss_sums[i]).sum();
    let count: usize = sample.iter().map(|&i| tokens[i]).sum();
    if count == 0 {
        return None;
    }
    let loss = total / count as f64;
    Some(if name == "perplexity" {
        loss.exp()
    } else {
        loss
    })
}

/// An evaluation's metrics and, where the task keeps them, its per-example outcomes.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The task's metrics over the whole evaluation set.
    pub metrics: Metrics,
    /// Per-example outcomes (`None` for a task that does not keep them).
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

    #[test]
    fn token_class_outcomes_pool_the_tokens_of_the_drawn_examples() {
        // Example 0: tokens (0->0, 1->0); example 1: (1->1); example 2 has no labelled token.
        let o = Outcomes::TokenClasses {
            classes: 2,
            labels: vec![vec![0, 1], vec![1], vec![]],
            predictions: vec![vec![0, 0], vec![1], vec![]],
            loss_sums: vec![1.0, 0.5, 0.0],
        };
        assert_eq!(o.len(), 3);
        let m = o.metrics();
        // 2 of 3 tokens right; (1 + 0.5) / 3 tokens; confusion [[1, 0], [1, 1]]: f1 2/3 and 2/3.
        assert!((m["accuracy"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m["loss"] - 0.5).abs() < 1e-12);
        assert!((m["macro_f1"] - 2.0 / 3.0).abs() < 1e-12);
        // Drawing example 1 twice: every token right.
        assert_eq!(o.metric("accuracy", &[1, 1, 2]), Some(1.0));
        assert_eq!(o.metric("accuracy", &[2]), None);
        assert_eq!(o.correct(0), None);
    }

    #[test]
    fn generated_outcomes_give_exact_match_and_token_weighed_loss() {
        let o = Outcomes::Generated {
            loss_sums: vec![3.0, 1.0],
            tokens: vec![3, 1],
            exact: vec![false, true],
        };
        let m = o.metrics();
        assert_eq!(m["exact_match"], 0.5);
        assert_eq!(m["loss"], 1.0);
        assert_eq!(m["perplexity"], 1f64.exp());
        assert_eq!(o.metric("exact_match", &[1, 1]), Some(1.0));
        assert_eq!(o.correct(0), Some(false));
        assert_eq!(o.metric("accuracy", &[0]), None);
    }
}
