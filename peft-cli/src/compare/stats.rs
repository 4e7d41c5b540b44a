//! The statistics of `peft compare`'s tables: 95% intervals of a row's mean over seeds, and paired tests
//! between two rows evaluated on the same dev examples.
//!
//! A row's interval is a two-level bootstrap: each resample draws the row's seeds with replacement and the
//! dev examples with replacement (the same examples for every seed drawn), and takes the mean over the drawn
//! seeds of the metric recomputed on the drawn examples; the interval is the 2.5th to 97.5th percentile of
//! 2,000 such means. It covers both the spread between seeds and the finite dev set (a single zero-shot run
//! still gets an interval). Runs without per-example outcomes (results written before they were kept) fall
//! back to Student's t over seeds, which the report marks.
//!
//! A paired comparison draws the dev examples once per resample for both rows (and each row's seeds on its
//! own), so that what both rows get right or wrong together cancels; its p-value is two-sided. McNemar's
//! exact test on the pooled discordant pairs is given beside it for accuracy.
//!
//! ```
//! use peft_cli::compare::stats::mcnemar_exact;
//! // 1 example only the first row gets right, 9 only the second: p = 2 (C(10,0) + C(10,1)) / 2^10.
//! assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
//! ```

use peft_train::task::Outcomes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::measure::percentile;

/// Bootstrap resamples per interval or test.
pub const RESAMPLES: usize = 2000;

/// The bootstrap's random seed: a report is the same every time it is written.
pub const BOOTSTRAP_SEED: u64 = 0x5eed;

/// How an interval was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntervalKind {
    /// Bootstrap over seeds and dev examples.
    Bootstrap,
    /// Student's t over the seeds' values (no per-example outcomes).
    StudentT,
}

/// A 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Lower end.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
    /// How it was computed.
    pub kind: IntervalKind,
}

/// A paired comparison of row A against row B on the same dev examples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    /// Mean of A over its seeds minus mean of B over its seeds, on every example.
    pub difference: f64,
    /// 95% bootstrap interval of the difference.
    pub lo: f64,
    /// Upper end of that interval.
    pub hi: f64,
    /// Two-sided bootstrap p-value of "no difference".
    pub p: f64,
    /// McNemar's exact p-value over the discordant pairs pooled over seeds (accuracy and exact match).
    pub mcnemar_p: Option<f64>,
}

impl Paired {
    /// Whether the difference's interval excludes zero.
    pub fn significant(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }
}

/// The 95% interval of a row's mean `metric` over its runs: a bootstrap over seeds and dev examples where
/// every run kept its outcomes (`outcomes.len() == values.len()`), else Student's t over the `values` (two
/// runs at least), else `None`.
pub fn interval(values: &[f64], outcomes: &[&Outcomes], metric: &str) -> Option<Interval> {
    if !outcomes.is_empty() && outcomes.len() == values.len() {
        if let Some((lo, hi)) = bootstrap_interval(outcomes, metric, RESAMPLES, BOOTSTRAP_SEED) {
            return Some(Interval {
                lo,
                hi,
                kind: IntervalKind::Bootstrap,
            });
        }
    }
    let (lo, hi) = t_interval(values)?;
    Some(Interval {
        lo,
        hi,
        kind: IntervalKind::StudentT,
    })
}

/// The percentile bootstrap interval (2.5th to 97.5th) of the mean `metric` over `runs`, resampling runs and
/// examples; `None` where the runs differ in length or cannot give the metric.
pub fn bootstrap_interval(
    runs: &[&Outcomes],
    metric: &str,
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64)> {
    let n = same_length(runs)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sample = vec![0usize; n];
    let mut means = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        draw(&mut rng, &mut sample, n);
        means.push(mean_over_drawn_runs(&mut rng, runs, metric, &sample)?);
    }
    Some((percentile(&means, 2.5)?, percentile(&means, 97.5)?))
}

/// Mean and (sample) standard deviation; the deviation is `None` for one value.
pub fn mean_std(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    if xs.len() < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some(var.sqrt()))
}

/// Student's t 95% interval of the mean of `values` (at least two).
pub fn t_interval(values: &[f64]) -> Option<(f64, f64)> {
    let (mean, sd) = mean_std(values);
    let half = t_975(values.len() - 1) * sd? / (values.len() as f64).sqrt();
    Some((mean - half, mean + half))
}

/// Compares row A's runs with row B's on the same dev examples (see the module docs); `None` where either
/// has no runs, their example counts differ, or the metric is not theirs.
pub fn paired(a: &[&Outcomes], b: &[&Outcomes], metric: &str) -> Option<Paired> {
    paired_bootstrap(a, b, metric, RESAMPLES, BOOTSTRAP_SEED)
}

/// [`paired`] with the resample count and seed given.
pub fn paired_bootstrap(
    a: &[&Outcomes],
    b: &[&Outcomes],
    metric: &str,
    resamples: usize,
    seed: u64,
) -> Option<Paired> {
    let n = same_length(a)?;
    if same_length(b)? != n {
        return None;
    }
    let all: Vec<usize> = (0..n).collect();
    let mean_all = |runs: &[&Outcomes]| -> Option<f64> {
        let xs: Option<Vec<f64>> = runs.iter().map(|o| o.metric(metric, &all)).collect();
        Some(mean_std(&xs?).0)
    };
    let difference = mean_all(a)? - mean_all(b)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sample = vec![0usize; n];
    let mut diffs = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        draw(&mut rng, &mut sample, n);
        let da = mean_over_drawn_runs(&mut rng, a, metric, &sample)?;
        let db = mean_over_drawn_runs(&mut rng, b, metric, &sample)?;
        diffs.push(da - db);
    }
    let below = diffs.iter().filter(|d| **d <= 0.0).count();
    let above = diffs.iter().filter(|d| **d >= 0.0).count();
    // The +1s keep a p-value from reading 0 with finitely many resamples.
    let p = (2.0 * (below.min(above) + 1) as f64 / (resamples + 1) as f64).min(1.0);
    let mcnemar_p = matches!(metric, "accuracy" | "exact_match")
        .then(|| pooled_discordant(a, b))
        .flatten()
        .map(|(only_a, only_b)| mcnemar_exact(only_a, only_b));
    Some(Paired {
        difference,
        lo: percentile(&diffs, 2.5)?,
        hi: percentile(&diffs, 97.5)?,
        p,
        mcnemar_p,
    })
}

/// Examples only A classified correctly and only B did, summed over pairs of runs (A's run `i` with B's run
/// `i`, B's runs reused in turn when it has fewer, as a single zero-shot run has).
pub fn pooled_discordant(a: &[&Outcomes], b: &[&Outcomes]) -> Option<(usize, usize)> {
    if b.is_empty() {
        return None;
    }
    let (mut only_a, mut only_b) = (0, 0);
    for (i, ra) in a.iter().enumerate() {
        let rb = b[i % b.len()];
        if ra.len() != rb.len() {
            return None;
        }
        for e in 0..ra.len() {
            match (ra.correct(e)?, rb.correct(e)?) {
                (true, false) => only_a += 1,
                (false, true) => only_b += 1,
                _ => {}
            }
        }
    }
    Some((only_a, only_b))
}

/// McNemar's exact two-sided test: the probability under "either row is as likely to be the one right" of
/// a split of the `only_a + only_b` discordant pairs at least as uneven as this one (a binomial with p = 1/2).
pub fn mcnemar_exact(only_a: usize, only_b: usize) -> f64 {
    let n = only_a + only_b;
    if n == 0 {
        return 1.0;
    }
    let k = only_a.min(only_b);
    // Sum C(n, i) / 2^n for i <= k in log space: n reaches thousands when seeds are pooled.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// The common example count of `runs`; `None` when empty or unequal.
fn same_length(runs: &[&Outcomes]) -> Option<usize> {
    let n = runs.first()?.len();
    (n > 0 && runs.iter().all(|o| o.len() == n)).then_some(n)
}

/// Fills `sample` with `n` example indices drawn with replacement.
fn draw(rng: &mut StdRng, sample: &mut [usize], n: usize) {
    for s in sample.iter_mut() {
        *s = rng.random_range(0..n);
    }
}

/// The mean `metric` on `sample` over as many runs as `runs` has, drawn from it with replacement.
fn mean_over_drawn_runs(
    rng: &mut StdRng,
    runs: &[&Outcomes],
    metric: &str,
    sample: &[usize],
) -> Option<f64> {
    let mut sum = 0.0;
    for _ in 0..runs.len() {
        sum += runs[rng.random_range(0..runs.len())].metric(metric, sample)?;
    }
    Some(sum / runs.len() as f64)
}

/// The 97.5th percentile of Student's t with `df` degrees of freedom (the normal's 1.96 beyond 30).
fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => 1.96,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(correct: &[bool]) -> Outcomes {
        Outcomes::Classes {
            classes: 2,
            labels: vec![1; correct.len()],
            predictions: correct.iter().map(|&c| u32::from(c)).collect(),
            losses: vec![0.0; correct.len()],
        }
    }

    #[test]
    fn mcnemar_matches_the_binomial_by_hand() {
        // Two-sided exact binomial, p = 1/2: 2 * P(X <= 1 | n = 10) = 2 * 11 / 1024.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert!((mcnemar_exact(9, 1) - 22.0 / 1024.0).abs() < 1e-12);
        // 2 * P(X <= 0 | n = 5) = 2 / 32.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        // Balanced splits and no discordant pairs give 1.
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // scipy.stats.binomtest(40, 100).pvalue = 0.056887...
        assert!((mcnemar_exact(40, 60) - 0.056_887_933_640_8).abs() < 1e-9);
        // Large pooled counts stay finite: 2000 against 2100.
        let p = mcnemar_exact(2000, 2100);
        assert!(p > 0.0 && p < 0.2, "{p}");
    }

    #[test]
    fn t_interval_of_three_seeds() {
        // mean 2, sd 1, t(2) = 4.303: 2 -+ 4.303 / sqrt(3).
        let (lo, hi) = t_interval(&[1.0, 2.0, 3.0]).unwrap();
        let half = 4.303 / 3f64.sqrt();
        assert!((lo - (2.0 - half)).abs() < 1e-12 && (hi - (2.0 + half)).abs() < 1e-12);
        assert_eq!(t_interval(&[0.5]), None);
    }

    #[test]
    fn a_bootstrap_of_two_examples_spans_what_it_can_draw() {
        // One run, examples [right, wrong]: a resample's accuracy is 0 (1/4), 1/2 (1/2) or 1 (1/4), so with
        // 2000 draws the 2.5th and 97.5th percentiles are 0 and 1 exactly.
        let o = classes(&[true, false]);
        assert_eq!(
            bootstrap_interval(&[&o], "accuracy", 2000, 7),
            Some((0.0, 1.0))
        );
        // Every example right in every run: nothing can move.
        let all = classes(&[true; 20]);
        assert_eq!(
            bootstrap_interval(&[&all, &all], "accuracy", 500, 1),
            Some((1.0, 1.0))
        );
    }

    #[test]
    fn a_bootstrap_of_one_run_agrees_with_the_normal_approximation() {
        // 872 examples, 80% right: 1.96 * sqrt(0.8 * 0.2 / 872) = 0.02655 on either side of 0.8.
        let correct: Vec<bool> = (0..872).map(|i| i % 5 != 0).collect();
        let o = classes(&correct);
        let acc = o.metric("accuracy", &(0..872).collect::<Vec<_>>()).unwrap();
        let (lo, hi) = bootstrap_interval(&[&o], "accuracy", RESAMPLES, BOOTSTRAP_SEED).unwrap();
        let half = 1.96 * (acc * (1.0 - acc) / 872.0).sqrt();
        assert!((acc - lo - half).abs() < 0.004, "{lo} {acc} {half}");
        assert!((hi - acc - half).abs() < 0.004, "{hi} {acc} {half}");
        // The same seed draws the same interval.
        assert_eq!(
            bootstrap_interval(&[&o], "accuracy", RESAMPLES, BOOTSTRAP_SEED),
            Some((lo, hi))
        );
    }

    #[test]
    fn seeds_that_disagree_widen_the_interval() {
        let correct: Vec<bool> = (0..400).map(|i| i % 4 != 0).collect();
        let a = classes(&correct);
        let worse: Vec<bool> = (0..400).map(|i| i % 2 == 0).collect();
        let b = classes(&worse);
        let one = bootstrap_interval(&[&a], "accuracy", 1000, 3).unwrap();
        let two = bootstrap_interval(&[&a, &b], "accuracy", 1000, 3).unwrap();
        assert!(two.1 - two.0 > 2.0 * (one.1 - one.0), "{one:?} {two:?}");
        let i = interval(&[0.75, 0.5], &[&a, &b], "accuracy").unwrap();
        assert_eq!(i.kind, IntervalKind::Bootstrap);
        // Without outcomes: Student's t over the two values.
        let t = interval(&[0.75, 0.5], &[], "accuracy").unwrap();
        assert_eq!(t.kind, IntervalKind::StudentT);
    }

    #[test]
    fn paired_tests_see_a_consistent_gain_and_no_gain() {
        // B right on 70 of 100; A right on those and 15 more.
        let b = classes(&(0..100).map(|i| i < 70).collect::<Vec<_>>());
        let a = classes(&(0..100).map(|i| i < 85).collect::<Vec<_>>());
        let p = paired(&[&a], &[&b], "accuracy").unwrap();
        assert!((p.difference - 0.15).abs() < 1e-12);
        assert!(p.significant() && p.lo > 0.05 && p.p < 0.01, "{p:?}");
        // McNemar: 15 discordant pairs all one way: 2 / 2^15.
        assert!((p.mcnemar_p.unwrap() - 2.0 / 32768.0).abs() < 1e-15);
        // A row against itself: no difference, p = 1.
        let same = paired(&[&a], &[&a], "accuracy").unwrap();
        assert_eq!((same.difference, same.p), (0.0, 1.0));
        assert!(!same.significant());
        // Different dev sets cannot be paired.
        let short = classes(&[true; 10]);
        assert!(paired(&[&a], &[&short], "accuracy").is_none());
        // Perplexity has no McNemar.
        let lm = Outcomes::Tokens {
            loss_sums: vec![1.0, 2.0, 3.0],
            tokens: vec![1, 1, 1],
        };
        let q = paired(&[&lm], &[&lm], "perplexity").unwrap();
        assert_eq!(q.mcnemar_p, None);
    }

    #[test]
    fn discordant_pairs_pool_over_seeds_and_reuse_a_single_baseline() {
        let zero = classes(&[true, false, false]);
        let s1 = classes(&[true, true, false]);
        let s2 = classes(&[false, true, true]);
        // s1 vs zero: only s1 right on example 1; s2 vs zero: only s2 on 1 and 2, only zero on 0.
        assert_eq!(pooled_discordant(&[&s1, &s2], &[&zero]), Some((3, 1)));
    }
}
