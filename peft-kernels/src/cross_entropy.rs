//! Mean cross-entropy of logits against class indices, as one fused op: the forward reads each row of logits
//! twice (maximum, then the sum of exponentials, both cache-resident after the first), the backward writes
//! `softmax - one_hot` in one pass. The language-model loss runs it on `[tokens, vocabulary]` logits (50,257
//! classes for GPT-2), where the composed log-softmax would make four full-size temporaries and their
//! gradients.
//!
//! ```
//! use candle_core::{Device, Var};
//! let logits = Var::new(&[[2f32, 0., 0.], [0., 0., 0.]], &Device::Cpu).unwrap();
//! let loss = peft_kernels::cross_entropy(logits.as_tensor(), &[0, 2]).unwrap();
//! let expected = ((1. + 2. * (-2f32).exp()).ln() + 3f32.ln()) / 2.;
//! assert!((loss.to_scalar::<f32>().unwrap() - expected).abs() < 1e-6);
//! let grad = loss.backward().unwrap().get(logits.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
//! assert!((grad[1][2] - (1. / 3. - 1.) / 2.).abs() < 1e-6); // (softmax - 1) / rows at the target
//! ```

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;
use peft_core::Result;

/// Mean cross-entropy of `logits` `[n, classes]` against `targets` (one class index per row), a scalar.
///
/// Runs one fused CPU op for f32 logits on the CPU (its backward yields `(softmax - one_hot) / n` in one pass);
/// on any other device or dtype it runs the composed log-softmax + gather form, which computes the same
/// function. Fails, on either path, when `targets` does not have one entry per row or an entry is not below
/// `classes`.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    check(logits, targets)?;
    if !cpu::covers(logits) {
        return super::composed::cross_entropy(logits, targets);
    }
    let op = CrossEntropy {
        targets: targets.to_vec(),
        rows: OnceLock::new(),
    };
    Ok(logits.contiguous()?.apply_op1(op)?)
}

/// The argument checks shared by the fused and the composed paths.
fn check(logits: &Tensor, targets: &[u32]) -> candle_core::Result<()> {
    let &[n, classes] = logits.dims() else {
        candle_core::bail!(
            "cross_entropy: logits must be [rows, classes], got shape {:?}",
            logits.dims()
        );
    };
    if targets.len() != n {
        candle_core::bail!(
            "cross_entropy: {} targets for {n} rows of logits (one class index per row)",
            targets.len()
        );
    }
    if let Some((row, &t)) = targets
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= classes)
    {
        candle_core::bail!(
            "cross_entropy: target {t} of row {row} is out of range for {classes} classes"
        );
    }
    Ok(())
}

/// Per-row statistics of the forward: the maximum and `sum_j e^(x_j - max)`.
#[derive(Clone, Copy, Default)]
struct RowStats {
    max: f32,
    sum: f32,
}

/// The fused op; holds the targets and, once the forward ran, each row's statistics, so that the backward
/// recomputes the softmax in a single pass over the logits (two floats per row kept, not the probabilities).
struct CrossEntropy {
    targets: Vec<u32>,
    rows: OnceLock<Vec<RowStats>>,
}

/// Rows per rayon task: enough work per task for narrow logits, one row for vocabulary-size ones.
fn rows_per_task(classes: usize) -> usize {
    (16_384 / classes.max(1)).max(1)
}

/// Maximum and sum of exponentials of each row of `x` (`classes` wide), into `stats`.
fn row_stats(x: &[f32], classes: usize, stats: &mut [RowStats]) {
    let per = rows_per_task(classes);
    let width = classes.max(1);
    stats
        .par_chunks_mut(per)
        .zip(x.par_chunks(per * width))
        .for_each(|(stats, x)| stats_of_rows(x, width, stats));
}

cpu::simd_fn! {
    /// [`row_stats`] of one task's rows.
    fn stats_of_rows(x: &[f32], width: usize, stats: &mut [RowStats]) {
        for (s, row) in stats.iter_mut().zip(x.chunks(width)) {
            let max = cpu::max(row);
            *s = RowStats {
                max,
                sum: cpu::sum_exp(row, max),
            };
        }
    }
}

cpu::simd_fn! {
    /// The gradient of one task's rows: `coef * (e^(x_ij - max_i) / sum_i - [j == t_i])`.
    fn grad_of_rows(
        grad: &mut [f32],
        x: &[f32],
        width: usize,
        stats: &[RowStats],
        targets: &[u32],
        coef: f32,
    ) {
        let rows = grad.chunks_mut(width).zip(x.chunks(width));
        for ((grad, x), (s, &t)) in rows.zip(stats.iter().zip(targets)) {
            let scale = coef / s.sum;
            for (d, &v) in grad.iter_mut().zip(x) {
                *d = scale * cpu::exp(v - s.max);
            }
            grad[t as usize] -= coef;
        }
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, classes) = layout.shape().dims2()?;
        if n != self.targets.len() {
            candle_core::bail!(
                "cross_entropy: {} targets for {n} rows of logits",
                self.targets.len()
            );
        }
        let x = cpu::slice(storage, layout)?;
        let mut stats = vec![RowStats::default(); n];
        row_stats(x, classes, &mut stats);
        // loss_i = log-sum-exp_i - x[i, t_i]; summed in a fixed order, in f64 (n terms, negligible).
        let total: f64 = stats
            .iter()
            .zip(&self.targets)
            .enumerate()
            .map(|(i, (s, &t))| {
                let lse = s.max + s.sum.ln();
                (lse - x[i * classes + t as usize]) as f64
            })
            .sum();
        // A second forward through the same op (never done by candle) keeps the first statistics: the same.
        let _ = self.rows.set(stats);
        let mean = (total / n as f64) as f32;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let (n, classes) = arg.dims2()?;
        let g = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let &[g] = g.as_slice() else {
            candle_core::bail!(
                "cross_entropy: the loss gradient must be a scalar, got shape {:?}",
                grad_res.dims()
            );
        };
        let coef = g / n as f32;
        let grad = cpu::with_values(arg, |x| {
            let recomputed;
            let stats = match self.rows.get() {
                Some(s) if s.len() == n => s,
                _ => {
                    let mut s = vec![RowStats::default(); n];
                    row_stats(x, classes, &mut s);
                    recomputed = s;
                    &recomputed
                }
            };
            let mut grad = vec![0f32; n * classes];
            let per = rows_per_task(classes);
            let width = classes.max(1);
            grad.par_chunks_mut(per * width)
                .zip(x.par_chunks(per * width))
                .zip(stats.par_chunks(per))
                .zip(self.targets.par_chunks(per))
                .for_each(|(((grad, x), stats), targets)| {
                    grad_of_rows(grad, x, width, stats, targets, coef)
                });
            Ok(grad)
        })?;
        Ok(Some(cpu::tensor(grad, &[n, classes])?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::composed::cross_entropy as composed;
    use candle_core::{DType, Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    /// Seeded normal logits times `spread`, and targets in range.
    fn inputs(n: usize, classes: usize, spread: f32, seed: u64) -> (Tensor, Vec<u32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let values: Vec<f32> = (0..n * classes)
            .map(|_| rng.sample::<f32, _>(StandardNormal) * spread)
            .collect();
        let targets = (0..n)
            .map(|_| rng.random_range(0..classes as u32))
            .collect();
        (
            Tensor::from_vec(values, (n, classes), &Device::Cpu).unwrap(),
            targets,
        )
    }

    /// `max |a - b| / max |b|`.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        peft_core::compare::max_rel_diff(a, b).unwrap()
    }

    #[test]
    fn loss_and_gradient_match_the_composed_form() {
        // Rows not a multiple of the thread count, a single row, a single class, vocabulary-like widths.
        for (i, &(n, classes, spread)) in [
            (5, 7, 1.0),
            (1, 3, 2.0),
            (4, 1, 1.0),
            (7, 5000, 4.0),
            (33, 37, 10.0),
            (3, 20_000, 1.0),
        ]
        .iter()
        .enumerate()
        {
            let (x, targets) = inputs(n, classes, spread, i as u64);
            let x = Var::from_tensor(&x).unwrap();
            let fused = cross_entropy(x.as_tensor(), &targets).unwrap();
            let reference = composed(x.as_tensor(), &targets).unwrap();
            assert_eq!(fused.dims(), reference.dims(), "a scalar");
            let (f, r) = (
                fused.to_scalar::<f32>().unwrap(),
                reference.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (f - r).abs() <= 1e-5 * r.abs().max(1e-3),
                "[{n}, {classes}]: loss {f} vs {r}"
            );
            // A gradient other than 1 reaches the op: the loss scaled by 3.
            let g_fused = (fused * 3.0).unwrap().backward().unwrap();
            let g_ref = (reference * 3.0).unwrap().backward().unwrap();
            let (a, b) = (
                g_fused.get(x.as_tensor()).expect("fused gradient"),
                g_ref.get(x.as_tensor()).expect("composed gradient"),
            );
            assert_eq!(a.dims(), &[n, classes]);
            let d = rel_diff(a, b);
            assert!(
                d < 1e-5,
                "[{n}, {classes}]: gradient differs by {d} (relative)"
            );
        }
    }

    #[test]
    fn results_are_identical_run_to_run_and_across_thread_counts() {
        let (x, targets) = inputs(19, 3001, 3.0, 9);
        let x = Var::from_tensor(&x).unwrap();
        let run = || {
            let loss = cross_entropy(x.as_tensor(), &targets).unwrap();
            let g = loss.backward().unwrap();
            let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
            (
                loss.to_scalar::<f32>().unwrap(),
                g.to_vec1::<f32>().unwrap(),
            )
        };
        // Rows are independent and the mean is summed in row order: the thread count changes nothing.
        let pool = crate::cpu::test_pool;
        let (l1, g1) = pool(1).install(run);
        let (l2, g2) = pool(3).install(run);
        assert_eq!(l1.to_bits(), l2.to_bits());
        assert!(g1.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn extreme_logits_stay_finite() {
        // Huge logits would overflow a softmax without the max shift; -1e30 entries underflow to 0.
        let x = Var::new(&[[1e30f32, -1e30, 0.], [50., 60., 70.]], &Device::Cpu).unwrap();
        let loss = cross_entropy(x.as_tensor(), &[0, 1]).unwrap();
        let v = loss.to_scalar::<f32>().unwrap();
        let expected = (0. + ((-10f32).exp() + 1. + (-20f32).exp()).ln() + 10.) / 2.;
        assert!((v - expected).abs() < 1e-5, "{v} vs {expected}");
        let g = loss.backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!(g.iter().flatten().all(|v| v.is_finite()));
        assert!(
            g[0].iter().all(|v| v.abs() < 1e-6),
            "row 0 is already certain"
        );
    }

    #[test]
    fn frozen_logits_get_no_gradient() {
        let (x, targets) = inputs(3, 4, 1.0, 3);
        let loss = cross_entropy(&x, &targets).unwrap();
        assert!(!loss.track_op());
        assert!(loss.backward().unwrap().get(&x).is_none());
    }

    #[test]
    fn fallback_on_f64_gives_the_same_loss() {
        let (x, targets) = inputs(6, 11, 2.0, 4);
        let fused = cross_entropy(&x, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        let fallback = cross_entropy(&x64, &targets).unwrap();
        assert_eq!(fallback.dtype(), DType::F64);
        let fallback = fallback.to_scalar::<f64>().unwrap();
        assert!(
            (fused as f64 - fallback).abs() < 1e-5 * fallback.abs(),
            "{fused} vs {fallback}"
        );
    }

    #[test]
    fn bad_targets_are_named() {
        let (x, _) = inputs(3, 4, 1.0, 5);
        for x in [x.clone(), x.to_dtype(DType::F64).unwrap()] {
            let err = cross_entropy(&x, &[0, 4, 1]).unwrap_err().to_string();
            assert!(
                err.contains("cross_entropy")
                    && err.contains("target 4 of row 1")
                    && err.contains("4 classes"),
                "{err}"
            );
            let err = cross_entropy(&x, &[0, 1]).unwrap_err().to_string();
            assert!(err.contains("2 targets for 3 rows"), "{err}");
        }
        let err = cross_entropy(&Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(), &[0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[rows, classes]"), "{err}");
    }
}
