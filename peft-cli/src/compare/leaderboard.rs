//! A grid's leaderboard across tasks, per model: each row's rank on every task by the task's headline metric
//! (ties share the mean of their ranks), the mean rank, and the mean score over the tasks whose headline is a
//! score (higher is better: accuracy, F1, Matthews), with its 95% interval.
//!
//! The mean score's interval combines the tasks' intervals as independent errors: half-width
//! `sqrt(sum of squared half-widths) / tasks`, around the mean of the tasks' means.
//!
//! ```
//! use peft_cli::compare::leaderboard::{board, RowScores, TaskColumn, TaskScore};
//! let tasks = vec![
//!     TaskColumn { name: "sst2".into(), metric: "accuracy".into(), higher_is_better: true },
//!     TaskColumn { name: "rte".into(), metric: "accuracy".into(), higher_is_better: true },
//! ];
//! let score = |mean| Some(TaskScore { mean, interval: None });
//! let rows = vec![
//!     RowScores { method: "lora".into(), kind: "method".into(), trainable: Some(1e5), scores: vec![score(0.9), score(0.6)] },
//!     RowScores { method: "bitfit".into(), kind: "method".into(), trainable: Some(1e4), scores: vec![score(0.8), score(0.7)] },
//! ];
//! let b = board(&tasks, &rows);
//! // One first place and one second each: both rank 1.5 on average.
//! assert_eq!(b[0].mean_rank, 1.5);
//! assert!((b[0].mean_score.unwrap() - 0.75).abs() < 1e-12);
//! ```

/// A task of the leaderboard.
#[derive(Debug, Clone)]
pub struct TaskColumn {
    /// The task's name.
    pub name: String,
    /// Its headline metric.
    pub metric: String,
    /// Whether a higher value of the metric is better.
    pub higher_is_better: bool,
}

/// A row's headline value on one task: the mean over seeds and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskScore {
    /// Mean over seeds.
    pub mean: f64,
    /// 95% interval, where known.
    pub interval: Option<(f64, f64)>,
}

/// A method row's values on every task (in the order of the task columns; `None` where it did not run).
#[derive(Debug, Clone)]
pub struct RowScores {
    /// The row's name.
    pub method: String,
    /// `method`, `zero-shot` or `linear-probe`.
    pub kind: String,
    /// Trainable parameters, the mean over tasks (a classification head's size depends on the task).
    pub trainable: Option<f64>,
    /// One entry per task column.
    pub scores: Vec<Option<TaskScore>>,
}

/// One line of the leaderboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// The row's name.
    pub method: String,
    /// `method`, `zero-shot` or `linear-probe`.
    pub kind: String,
    /// Trainable parameters (mean over tasks).
    pub trainable: Option<f64>,
    /// Rank on each task (1 is best; `None` where the row has no value there).
    pub ranks: Vec<Option<f64>>,
    /// Mean of `ranks` over the tasks the row ran.
    pub mean_rank: f64,
    /// Mean headline value over the score tasks (higher is better), where the row ran every one of them.
    pub mean_score: Option<f64>,
    /// 95% interval of `mean_score`, where every score task's interval is known.
    pub score_interval: Option<(f64, f64)>,
}

/// The leaderboard of `rows` over `tasks`, best mean rank first (ties: higher mean score first).
pub fn board(tasks: &[TaskColumn], rows: &[RowScores]) -> Vec<Standing> {
    let ranks_by_task: Vec<Vec<Option<f64>>> = tasks
        .iter()
        .enumerate()
        .map(|(t, column)| {
            let values: Vec<Option<f64>> = rows
                .iter()
                .map(|r| r.scores.get(t).copied().flatten().map(|s| s.mean))
                .collect();
            ranks(&values, column.higher_is_better)
        })
        .collect();
    let score_tasks: Vec<usize> = (0..tasks.len())
        .filter(|&t| tasks[t].higher_is_better)
        .collect();
    let mut standings: Vec<Standing> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let ranks: Vec<Option<f64>> = ranks_by_task.iter().map(|r| r[i]).collect();
            let ran: Vec<f64> = ranks.iter().flatten().copied().collect();
            let mean_rank = if ran.is_empty() {
                f64::NAN
            } else {
                ran.iter().sum::<f64>() / ran.len() as f64
            };
            let scores: Option<Vec<TaskScore>> = score_tasks
                .iter()
                .map(|&t| row.scores.get(t).copied().flatten())
                .collect();
            let scores = scores.filter(|s| !s.is_empty());
            let mean_score = scores
                .as_ref()
                .map(|s| s.iter().map(|x| x.mean).sum::<f64>() / s.len() as f64);
            let score_interval = scores.as_ref().and_then(|s| {
                let halves: Option<Vec<f64>> = s
                    .iter()
                    .map(|x| x.interval.map(|(lo, hi)| (hi - lo) / 2.0))
                    .collect();
                let half = halves?.iter().map(|h| h * h).sum::<f64>().sqrt() / s.len() as f64;
                let m = mean_score?;
                Some((m - half, m + half))
            });
            Standing {
                method: row.method.clone(),
                kind: row.kind.clone(),
                trainable: row.trainable,
                ranks,
                mean_rank,
                mean_score,
                score_interval,
            }
        })
        .collect();
    standings.sort_by(|a, b| {
        a.mean_rank.total_cmp(&b.mean_rank).then(
            b.mean_score
                .unwrap_or(f64::NEG_INFINITY)
                .total_cmp(&a.mean_score.unwrap_or(f64::NEG_INFINITY)),
        )
    });
    standings
}

/// Ranks of `values` (1 is best), ties sharing the mean of the ranks they span; `None` stays `None`.
pub fn ranks(values: &[Option<f64>], higher_is_better: bool) -> Vec<Option<f64>> {
    let mut order: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i, v)))
        .collect();
    order.sort_by(|a, b| {
        if higher_is_better {
            b.1.total_cmp(&a.1)
        } else {
            a.1.total_cmp(&b.1)
        }
    });
    let mut out = vec![None; values.len()];
    let mut start = 0;
    while start < order.len() {
        let end = start
            + order[start..]
                .iter()
                .take_while(|x| x.1 == order[start].1)
                .count();
        // Ranks start..end (0-based) tie: each gets the mean of start+1 ..= end.
        let shared = (start + 1 + end) as f64 / 2.0;
        for &(i, _) in &order[start..end] {
            out[i] = Some(shared);
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, metric: &str, higher: bool) -> TaskColumn {
        TaskColumn {
            name: name.into(),
            metric: metric.into(),
            higher_is_better: higher,
        }
    }

    fn row(method: &str, kind: &str, scores: &[Option<(f64, f64)>]) -> RowScores {
        RowScores {
            method: method.into(),
            kind: kind.into(),
            trainable: Some(1000.0),
            scores: scores
                .iter()
                .map(|s| {
                    s.map(|(mean, half)| TaskScore {
                        mean,
                        interval: Some((mean - half, mean + half)),
                    })
                })
                .collect(),
        }
    }

    #[test]
    fn ties_share_their_ranks_and_lower_is_better_ranks_upwards() {
        let v = [Some(0.8), Some(0.9), Some(0.8), None, Some(0.7)];
        assert_eq!(
            ranks(&v, true),
            vec![Some(2.5), Some(1.0), Some(2.5), None, Some(4.0)]
        );
        assert_eq!(
            ranks(&[Some(12.0), Some(10.0)], false),
            vec![Some(2.0), Some(1.0)]
        );
    }

    #[test]
    fn a_toy_leaderboard() {
        // Two accuracy tasks and one perplexity task (lower is better: ranked, not in the mean score).
        let tasks = [
            column("sst2", "accuracy", true),
            column("rte", "accuracy", true),
            column("shakespeare", "perplexity", false),
        ];
        let rows = [
            row(
                "zero-shot",
                "zero-shot",
                &[Some((0.78, 0.03)), Some((0.50, 0.06)), Some((20.0, 0.5))],
            ),
            row(
                "lora",
                "method",
                &[Some((0.88, 0.02)), Some((0.60, 0.05)), Some((12.0, 0.4))],
            ),
            row(
                "bitfit",
                "method",
                &[Some((0.86, 0.02)), Some((0.62, 0.04)), Some((14.0, 0.4))],
            ),
            // Ran SST-2 only: ranked there, no mean score.
            row("prefix", "method", &[Some((0.79, 0.03)), None, None]),
        ];
        let b = board(&tasks, &rows);
        let names: Vec<&str> = b.iter().map(|s| s.method.as_str()).collect();
        // lora: ranks 1, 2, 1 -> 4/3; bitfit: 2, 1, 2 -> 5/3; prefix: 3 on its one task; zero-shot: 4, 3, 3.
        assert_eq!(names, ["lora", "bitfit", "prefix", "zero-shot"]);
        assert!((b[0].mean_rank - 4.0 / 3.0).abs() < 1e-12);
        assert_eq!(b[0].ranks, vec![Some(1.0), Some(2.0), Some(1.0)]);
        assert!((b[0].mean_score.unwrap() - 0.74).abs() < 1e-12);
        // Half-width sqrt(0.02^2 + 0.05^2) / 2.
        let (lo, hi) = b[0].score_interval.unwrap();
        let half = (0.02f64.powi(2) + 0.05f64.powi(2)).sqrt() / 2.0;
        assert!((hi - lo - 2.0 * half).abs() < 1e-12);
        assert_eq!(b[2].mean_score, None);
        assert_eq!(b[2].score_interval, None);
        assert!((b[3].mean_rank - 10.0 / 3.0).abs() < 1e-12);
    }
}
