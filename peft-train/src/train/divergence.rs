//! The divergence warning: a run whose loss climbs far above where it started is warned about once, on
//! stderr and in the metrics log, and keeps going (a NaN stops it; see the trainer's non-finite guard).
//!
//! The rule: the reference is the loss of the run's first step (the adapter as initialised: the run's
//! start); from step `WINDOW + 1` on, the mean loss of the last [`WINDOW`] steps (never the first) is
//! compared with it, and a mean above both [`FACTOR`] x the reference and the reference + [`MARGIN`] is a
//! divergence. A window's mean rather than one step's loss, so that a single hard batch does not warn; the
//! margin, so that a run starting near 0 (an adapter already trained) does not warn over noise. The watch is
//! part of the checkpoint, so that a resumed run warns exactly where an uninterrupted one would.
//!
//! ```
//! use peft_train::train::divergence::DivergenceWatch;
//! let mut watch = DivergenceWatch::default();
//! let warned: Vec<bool> = [0.7, 0.9, 0.7, 0.7, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5]
//!     .iter()
//!     .map(|&l| watch.observe(l).is_some())
//!     .collect();
//! assert!(warned.iter().all(|w| !w), "a falling loss never warns");
//! let mut rising = DivergenceWatch::default();
//! let first = (1..=20).map(|s| rising.observe(0.7 * s as f64)).find_map(|w| w).unwrap();
//! assert!(first.window_mean > 2.0 * first.reference);
//! ```

use serde::{Deserialize, Serialize};

/// Steps in the moving window of recent losses.
pub const WINDOW: usize = 5;
/// How many times the reference the window's mean must exceed.
pub const FACTOR: f64 = 2.0;
/// How far above the reference (in loss units, nats) the window's mean must be too.
pub const MARGIN: f64 = 1.0;

/// What the watch has seen of a run's losses (saved with its checkpoints).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DivergenceWatch {
    /// The loss of the run's first step.
    #[serde(default)]
    pub start: Option<f64>,
    /// The losses of the last [`WINDOW`] steps, oldest first.
    #[serde(default)]
    pub recent: Vec<f64>,
    /// Steps observed.
    #[serde(default)]
    pub steps: usize,
    /// Whether the run has been warned (once per run).
    #[serde(default)]
    pub warned: bool,
}

/// A divergence found: the reference and the window's mean that exceeded it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    /// The loss of the run's first step.
    pub reference: f64,
    /// Mean loss of the last [`WINDOW`] steps.
    pub window_mean: f64,
}

impl DivergenceWatch {
    /// Counts in the loss of the step that just finished; returns a divergence the first time the rule
    /// holds (and never again in this run).
    pub fn observe(&mut self, loss: f64) -> Option<Divergence> {
        self.steps += 1;
        let Some(reference) = self.start else {
            self.start = Some(loss);
            return None;
        };
        self.recent.push(loss);
        if self.recent.len() > WINDOW {
            self.recent.remove(0);
        }
        if self.warned || self.recent.len() < WINDOW {
            return None;
        }
        let window_mean = self.recent.iter().sum::<f64>() / WINDOW as f64;
        if window_mean > FACTOR * reference && window_mean > reference + MARGIN {
            self.warned = true;
            return Some(Divergence {
                reference,
                window_mean,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_doubled_over_a_window_warns_once() {
        let mut watch = DivergenceWatch::default();
        let losses = [1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 5.0, 9.0, 9.0];
        let warnings: Vec<usize> = losses
            .iter()
            .enumerate()
            .filter_map(|(i, &l)| watch.observe(l).map(|_| i + 1))
            .collect();
        // The window of steps 4..=8 has mean 2.4 > 2 x 1.0 and > 1.0 + 1.0; steps 3..=7 had 2.0.
        assert_eq!(warnings, [8]);
        assert!(watch.warned);
    }

    #[test]
    fn one_hard_batch_and_a_small_start_do_not_warn() {
        let mut watch = DivergenceWatch::default();
        for l in [0.7, 0.7, 0.7, 0.7, 0.7, 0.5, 0.5, 4.0, 0.5, 0.5, 0.5] {
            assert!(watch.observe(l).is_none());
        }
        // A run starting near 0: 0.01 -> 0.9 is 90x but within the margin.
        let mut trained = DivergenceWatch::default();
        for l in [0.01].into_iter().chain([0.9; 10]) {
            assert!(trained.observe(l).is_none());
        }
    }

    #[test]
    fn the_watch_survives_a_round_trip_through_json() {
        let mut watch = DivergenceWatch::default();
        for l in [0.5, 0.25, 1.5] {
            watch.observe(l);
        }
        let text = serde_json::to_string(&watch).unwrap();
        assert_eq!(
            serde_json::from_str::<DivergenceWatch>(&text).unwrap(),
            watch
        );
        assert_eq!(
            serde_json::from_str::<DivergenceWatch>("{}").unwrap(),
            DivergenceWatch::default()
        );
    }
}
