//! The language-model loss fused with its frozen output projection: mean cross-entropy of `hidden W^T`
//! against class indices, without the `[rows, vocabulary]` logits (103 MB for GPT-2 on 4 x 128 tokens, plus
//! about three more such buffers in the composed backward). Each task takes a chunk of rows and a segment of
//! the vocabulary and walks it in blocks of a few hundred words: a block's logits come from one product and
//! fold into an online log-sum-exp per row (rescaled where a row's maximum grows); when a backward will come,
//! their exponentials at once multiply the same weight block, still in cache, into a running hidden gradient.
//! The segments are then combined per row, and the backward only scales the kept `[rows, features]` gradient.
//! The weight is read from memory once per chunk of rows; the largest buffers are one logits block per task
//! and one `[rows, features]` partial gradient per segment. A head kept quantized is dequantized one block at a
//! time as the tasks reach it, so no f32 copy of it exists; a head kept in bf16 (mixed precision) is
//! multiplied block by block on the bf16 units.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! let dev = Device::Cpu;
//! let w = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &dev).unwrap(); // [vocabulary 3, hidden 2]
//! let h = Var::new(&[[2f32, 0.], [0., 0.]], &dev).unwrap();
//! let loss = peft_kernels::linear_cross_entropy(h.as_tensor(), &w, &[0, 2]).unwrap();
//! let logits = h.as_tensor().matmul(&w.t().unwrap()).unwrap();
//! let expected = peft_kernels::cross_entropy(&logits, &[0, 2]).unwrap();
//! let (a, b) = (loss.to_scalar::<f32>().unwrap(), expected.to_scalar::<f32>().unwrap());
//! assert!((a - b).abs() < 1e-6);
//! let grads = loss.backward().unwrap();
//! assert_eq!(grads.get(h.as_tensor()).unwrap().dims(), &[2, 2]);
//! assert!(grads.get(&w).is_none()); // the head is frozen
//! ```

use std::borrow::Cow;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use peft_core::quantized::QuantizedWeight;
use rayon::prelude::*;

use super::bf16::{input_product, product, Bf16Kernel};
use super::cpu::{self, Mat, Threads};
use peft_core::Result;

/// Mean over rows of the cross-entropy of `hidden W^T` (`hidden` `[n, h]`, `weight` `[vocabulary, h]`, no
/// bias) against `targets` (one class index per row), a scalar: the value of
/// `cross_entropy(&hidden.matmul(&weight.t()?)?, targets)` without the full logits.
///
/// Runs one fused CPU op when `hidden` is f32 on the CPU, `weight` is f32 or bf16 on the CPU and frozen (does
/// not track a gradient); its backward yields the gradient of `hidden` only. With a bf16 head both products
/// run on the bf16 units ([`crate::bf16`]): `hidden` is rounded to bf16 for the logits, and the softmax's
/// exponentials for the gradient, with f32 sums and an f32 softmax (`torch.autocast` also keeps the logits in
/// bf16). Otherwise (another device or dtype, a trained weight, no rows or no features) it runs that composed
/// form, which then also trains the weight.
/// Fails, on either path, when the shapes do not fit or when `targets` does not have one entry per row or an
/// entry is not below the vocabulary size.
pub fn linear_cross_entropy(hidden: &Tensor, weight: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, features, _) = check(hidden, weight, targets)?;
    let bf16_head = crate::bf16::is_bf16_on_cpu(weight);
    if !cpu::covers(hidden)
        || !(cpu::covers(weight) || bf16_head)
        || weight.track_op()
        || n == 0
        || features == 0
    {
        return composed(hidden, weight, targets);
    }
    let head = weight.detach().contiguous()?;
    let op = LinearCrossEntropy {
        weight: if bf16_head {
            Head::Bf16(head)
        } else {
            Head::Dense(head)
        },
        targets: targets.to_vec(),
        want_grad: hidden.track_op(),
        dh: OnceLock::new(),
    };
    Ok(hidden.contiguous()?.apply_op1(op)?)
}

/// The argument checks shared by the fused and the composed paths: `(rows, features, vocabulary)`.
fn check(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[u32],
) -> candle_core::Result<(usize, usize, usize)> {
    let &[n, features] = hidden.dims() else {
        candle_core::bail!(
            "linear_cross_entropy: hidden must be [rows, features], got shape {:?}",
            hidden.dims()
        );
    };
    let &[vocab, wf] = weight.dims() else {
        candle_core::bail!(
            "linear_cross_entropy: weight must be [vocabulary, features], got shape {:?}",
            weight.dims()
        );
    };
    if wf != features {
        candle_core::bail!(
            "linear_cross_entropy: hidden has {features} features, the weight [{vocab}, {wf}] expects {wf}"
        );
    }
    check_targets(targets, n, vocab)?;
    Ok((n, features, vocab))
}

/// One target per row, each a class of the vocabulary.
fn check_targets(targets: &[u32], n: usize, vocab: usize) -> candle_core::Result<()> {
    if targets.len() != n {
        candle_core::bail!(
            "linear_cross_entropy: {} targets for {n} rows of hidden states (one class index per row)",
            targets.len()
        );
    }
    if let Some((row, &t)) = targets
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= vocab)
    {
        candle_core::bail!(
            "linear_cross_entropy: target {t} of row {row} is out of range for {vocab} classes"
        );
    }
    Ok(())
}

/// The composed form: the full logits, then the cross-entropy.
fn composed(hidden: &Tensor, weight: &Tensor, targets: &[u32]) -> Result<Tensor> {
    super::cross_entropy(&hidden.matmul(&weight.t()?)?, targets)
}

/// [`linear_cross_entropy`] with the head kept quantized (a GGUF base loaded with its blocks): the vocabulary
/// is dequantized block by block as the tasks walk it, each block once per forward, so no f32 copy of the
/// head exists (671 MB for Gemma-3's 262,144 x 640). Inputs other than f32 on the CPU run the composed form
/// on the dequantized head.
pub fn linear_cross_entropy_quantized(
    hidden: &Tensor,
    weight: &QuantizedWeight,
    targets: &[u32],
) -> Result<Tensor> {
    let (vocab, wf) = weight.dims();
    let (n, features) = hidden.dims2()?;
    if !cpu::covers(hidden) || n == 0 || features == 0 {
        return linear_cross_entropy(hidden, &weight.dequantize()?, targets);
    }
    if wf != features {
        return Err(candle_core::Error::Msg(format!(
            "linear_cross_entropy: hidden has {features} features, the weight [{vocab}, {wf}] expects {wf}"
        ))
        .into());
    }
    check_targets(targets, n, vocab)?;
    let op = LinearCrossEntropy {
        weight: Head::Quantized(weight.clone()),
        targets: targets.to_vec(),
        want_grad: hidden.track_op(),
        dh: OnceLock::new(),
    };
    Ok(hidden.contiguous()?.apply_op1(op)?)
}

/// The head the fused op reads: f32 values, or bf16 values or quantized blocks widened as they are reached.
enum Head {
    Dense(Tensor),
    Quantized(QuantizedWeight),
    Bf16(Tensor),
}

/// Rows of a `[vocabulary, features]` head, as the tasks read them.
trait HeadRows: Sync {
    /// Rows `v0..v0 + width`, row-major.
    fn rows(&self, v0: usize, width: usize, features: usize)
        -> candle_core::Result<Cow<'_, [f32]>>;

    /// The same rows in bf16, for a head the products multiply on the bf16 units; `None` for an f32 or
    /// quantized head, whose rows the f32 products take.
    fn bf16_rows(&self, _v0: usize, _width: usize, _features: usize) -> Option<&[half::bf16]> {
        None
    }
}

impl HeadRows for [f32] {
    fn rows(
        &self,
        v0: usize,
        width: usize,
        features: usize,
    ) -> candle_core::Result<Cow<'_, [f32]>> {
        Ok(Cow::Borrowed(&self[v0 * features..(v0 + width) * features]))
    }
}

impl HeadRows for [half::bf16] {
    fn rows(
        &self,
        v0: usize,
        width: usize,
        features: usize,
    ) -> candle_core::Result<Cow<'_, [f32]>> {
        let rows = &self[v0 * features..(v0 + width) * features];
        Ok(Cow::Owned(crate::bf16::widened_here(rows)))
    }

    fn bf16_rows(&self, v0: usize, width: usize, features: usize) -> Option<&[half::bf16]> {
        Some(&self[v0 * features..(v0 + width) * features])
    }
}

impl HeadRows for QuantizedWeight {
    fn rows(&self, v0: usize, width: usize, _: usize) -> candle_core::Result<Cow<'_, [f32]>> {
        crate::quantized::dequantized_here(self, v0, v0 + width).map(Cow::Owned)
    }
}

/// The fused op on `hidden`; holds the frozen `[vocabulary, features]` weight, the targets, whether a backward
/// will come, and then the hidden gradient of the mean loss (the backward's incoming gradient not applied).
struct LinearCrossEntropy {
    weight: Head,
    targets: Vec<u32>,
    want_grad: bool,
    dh: OnceLock<Vec<f32>>,
}

/// Rows of hidden states per task: each task reads its vocabulary segment of the weight once, so fewer, taller
/// chunks stream the weight fewer times (and give the products more rows).
const ROWS: usize = 256;
/// Vocabulary rows per product: a `[ROWS, BLOCK]` logits block and a `[BLOCK, features]` weight block stay in
/// the core's cache between the logits product and the gradient product that reuses them.
const BLOCK: usize = 256;
/// Vocabulary segments, each a task with partial statistics of its own, so that few rows still spread over
/// the threads. A constant (not the thread count), so that results do not depend on the thread count.
const SEGMENTS: usize = 4;

/// What one task (a chunk of rows, a vocabulary segment) knows about each of its rows.
struct Partial {
    /// The largest logit in the segment.
    max: Vec<f32>,
    /// `sum_v e^(x_v - max)` over the segment.
    sum: Vec<f32>,
    /// The target's logit, for rows whose target is in the segment.
    target: Vec<f32>,
    /// `sum_v e^(x_v - max) W_v` over the segment without the target (`[rows, features]`; empty without
    /// gradient): leaving the target out keeps `p_t - 1` exact-ish, as the composed form computes it.
    dh: Vec<f32>,
}

cpu::simd_fn! {
    /// Folds one logits block (`rows x width`, vocabulary ids from `v0`) into the running statistics; where
    /// `dh` is not empty, rescales it where a row's maximum grew and leaves `e^(x - max)` in the block, with 0
    /// at the target, for the gradient product.
    fn fold_block(
        logits: &mut [f32],
        width: usize,
        v0: usize,
        targets: &[u32],
        part: &mut Partial,
        features: usize,
    ) {
        let grad = !part.dh.is_empty();
        for (r, row) in logits.chunks_mut(width).enumerate() {
            let block_max = cpu::max(row);
            if block_max > part.max[r] {
                // An online log-sum-exp: what was summed against the old maximum is rescaled to the new one.
                if part.max[r] > f32::NEG_INFINITY {
                    let f = cpu::exp(part.max[r] - block_max);
                    part.sum[r] *= f;
                    if grad {
                        for d in &mut part.dh[r * features..(r + 1) * features] {
                            *d *= f;
                        }
                    }
                }
                part.max[r] = block_max;
            }
            let t = (targets[r] as usize).wrapping_sub(v0);
            if t < width {
                part.target[r] = row[t];
            }
            if grad {
                part.sum[r] += cpu::exp_in_place(row, part.max[r]);
                if t < width {
                    row[t] = 0.0;
                }
            } else {
                part.sum[r] += cpu::sum_exp(row, part.max[r]);
            }
        }
    }
}

/// The statistics of rows `h` (`[rows, features]`) over vocabulary ids `vocab` of `w`.
fn segment(
    h: &[f32],
    w: &(impl HeadRows + ?Sized),
    features: usize,
    vocab: std::ops::Range<usize>,
    targets: &[u32],
    grad: bool,
    block: usize,
) -> candle_core::Result<Partial> {
    let rows = targets.len();
    let mut part = Partial {
        max: vec![f32::NEG_INFINITY; rows],
        sum: vec![0.0; rows],
        target: vec![0.0; rows],
        dh: if grad {
            vec![0.0; rows * features]
        } else {
            Vec::new()
        },
    };
    let mut buf = vec![0f32; rows * block.min(vocab.len())];
    for v0 in vocab.clone().step_by(block) {
        let width = block.min(vocab.end - v0);
        if let Some(wb) = w.bf16_rows(v0, width, features) {
            // Mixed precision: both products on the bf16 units (`h` and the exponentials rounded to bf16,
            // f32 sums), as `torch.autocast` runs the head's linear and its gradient in bf16.
            let kernel = Bf16Kernel::detect();
            let logits = &mut buf[..rows * width];
            logits.fill(0.0);
            product(kernel, h, wb, logits, (rows, width, features), Threads::One);
            fold_block(logits, width, v0, targets, &mut part, features);
            if grad {
                let shape = (rows, width, features);
                input_product(kernel, logits, wb, &mut part.dh, shape, Threads::One);
            }
            continue;
        }
        let wb = w.rows(v0, width, features)?;
        let logits = &mut buf[..rows * width];
        cpu::matmul(
            Mat::rows(h, features),
            Mat::transposed(&wb, features),
            logits,
            (rows, width, features),
            false,
            Threads::One,
        );
        fold_block(logits, width, v0, targets, &mut part, features);
        if grad {
            cpu::matmul(
                Mat::rows(logits, width),
                Mat::rows(&wb, features),
                &mut part.dh,
                (rows, features, width),
                true,
                Threads::One,
            );
        }
    }
    Ok(part)
}

/// Per-row losses of `h` `[n, features]` against `w` `[vocabulary, features]`, and where `dh` is not empty,
/// the hidden gradient of the mean loss into it (`[n, features]`).
fn run(
    h: &[f32],
    w: &(impl HeadRows + ?Sized),
    (n, features, vocab): (usize, usize, usize),
    targets: &[u32],
    losses: &mut [f32],
    dh: &mut [f32],
    rows_per: usize,
) -> candle_core::Result<()> {
    let block = BLOCK;
    let grad = !dh.is_empty();
    let coef = 1.0 / n as f32;
    let blocks = vocab.div_ceil(block);
    let segments = SEGMENTS.min(blocks);
    let bounds = |s: usize| (s * blocks / segments * block).min(vocab);
    let chunks = n.div_ceil(rows_per);
    let parts: Vec<Partial> = (0..chunks * segments)
        .into_par_iter()
        .map(|u| {
            let (c, s) = (u / segments, u % segments);
            let rows = c * rows_per..((c + 1) * rows_per).min(n);
            segment(
                &h[rows.start * features..rows.end * features],
                w,
                features,
                bounds(s)..bounds(s + 1),
                &targets[rows],
                grad,
                block,
            )
        })
        .collect::<candle_core::Result<_>>()?;
    let segment_of = |t: usize| (0..segments).rfind(|&s| bounds(s) <= t).unwrap_or(0);
    // Each row's target row of the head, read before the rows are combined (a quantized head dequantizes it).
    let target_rows: Vec<Cow<'_, [f32]>> = if grad {
        targets
            .par_iter()
            .map(|&t| w.rows(t as usize, 1, features))
            .collect::<candle_core::Result<_>>()?
    } else {
        Vec::new()
    };
    // Combines the segments of each row in segment order: the same bits for any thread count.
    let mut dh_rows: Vec<&mut [f32]> = if grad {
        dh.chunks_mut(features).collect()
    } else {
        (0..n).map(|_| &mut [][..]).collect()
    };
    dh_rows.truncate(n);
    losses
        .par_iter_mut()
        .zip(dh_rows.into_par_iter())
        .enumerate()
        .for_each(|(i, (loss, dh))| {
            let (c, r) = (i / rows_per, i % rows_per);
            let parts = &parts[c * segments..(c + 1) * segments];
            let max = parts.iter().fold(f32::NEG_INFINITY, |m, p| m.max(p.max[r]));
            let factor = |p: &Partial| cpu::exp(p.max[r] - max);
            let sum: f32 = parts.iter().map(|p| p.sum[r] * factor(p)).sum();
            let t = targets[i] as usize;
            let target = parts[segment_of(t)].target[r];
            *loss = max + sum.ln() - target;
            if grad {
                let scale = coef / sum;
                // d loss / d logit_t = p_t - 1, the rest of the row is p_v (all over n).
                let gt = scale * cpu::exp(target - max) - coef;
                dh.iter_mut()
                    .zip(target_rows[i].iter())
                    .for_each(|(d, &x)| *d = gt * x);
                for p in parts {
                    let f = scale * factor(p);
                    let src = &p.dh[r * features..(r + 1) * features];
                    dh.iter_mut().zip(src).for_each(|(d, &x)| *d += f * x);
                }
            }
        });
    Ok(())
}

impl Head {
    /// `(vocabulary, features)`.
    fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Head::Dense(w) | Head::Bf16(w) => w.dims2(),
            Head::Quantized(q) => Ok(q.dims()),
        }
    }
}

impl LinearCrossEntropy {
    /// Per-row losses of `h` and, where `grad`, the hidden gradient of the mean loss.
    fn compute(
        &self,
        h: &[f32],
        n: usize,
        grad: bool,
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let (vocab, features) = self.weight.dims()?;
        let mut losses = vec![0f32; n];
        let mut dh = if grad {
            vec![0f32; n * features]
        } else {
            Vec::new()
        };
        let shape = (n, features, vocab);
        match &self.weight {
            Head::Dense(weight) => cpu::with_values(weight, |w| {
                run(h, w, shape, &self.targets, &mut losses, &mut dh, ROWS)
            })?,
            Head::Bf16(weight) => crate::bf16::with_bf16_values(weight, |w| {
                run(h, w, shape, &self.targets, &mut losses, &mut dh, ROWS)
            })?,
            // One chunk of all the rows: each vocabulary block is dequantized once per forward.
            Head::Quantized(q) => run(h, q, shape, &self.targets, &mut losses, &mut dh, n.max(1))?,
        }
        Ok((losses, dh))
    }
}

impl CustomOp1 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, features) = layout.shape().dims2()?;
        let (_, wf) = self.weight.dims()?;
        if n != self.targets.len() || features != wf {
            candle_core::bail!(
                "linear_cross_entropy: hidden [{n}, {features}] does not fit {} targets and a weight of {wf} features",
                self.targets.len()
            );
        }
        let h = cpu::slice(storage, layout)?;
        let (losses, dh) = self.compute(h, n, self.want_grad)?;
        if self.want_grad {
            // A second forward through the same op (never done by candle) keeps the first gradient: the same.
            let _ = self.dh.set(dh);
        }
        // Summed in row order, in f64 (n terms, negligible): the same for any thread count.
        let total: f64 = losses.iter().map(|&l| l as f64).sum();
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
        let (n, features) = arg.dims2()?;
        let g = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let &[g] = g.as_slice() else {
            candle_core::bail!(
                "linear_cross_entropy: the loss gradient must be a scalar, got shape {:?}",
                grad_res.dims()
            );
        };
        let scaled = |dh: &[f32]| dh.iter().map(|&d| g * d).collect::<Vec<f32>>();
        let grad = match self.dh.get() {
            Some(dh) if dh.len() == n * features => scaled(dh),
            // Only if the forward did not expect a backward: recompute from the hidden states.
            _ => cpu::with_values(arg, |h| Ok(scaled(&self.compute(h, n, true)?.1)))?,
        };
        Ok(Some(cpu::tensor(grad, &[n, features])?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    /// Seeded normal hidden states `[n, features]`, a weight `[vocab, features]` times `spread`, and targets.
    fn inputs(
        n: usize,
        features: usize,
        vocab: usize,
        spread: f32,
        seed: u64,
    ) -> (Tensor, Tensor, Vec<u32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut normal = |len: usize, scale: f32| -> Vec<f32> {
            (0..len)
                .map(|_| rng.sample::<f32, _>(StandardNormal) * scale)
                .collect()
        };
        let h = normal(n * features, 1.0);
        let w = normal(vocab * features, spread);
        let targets = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
        (
            Tensor::from_vec(h, (n, features), &Device::Cpu).unwrap(),
            Tensor::from_vec(w, (vocab, features), &Device::Cpu).unwrap(),
            targets,
        )
    }

    /// `max |a - b| / max |b|`.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        peft_core::compare::max_rel_diff(a, b).unwrap()
    }

    /// The loss through the full logits and the fused cross-entropy.
    fn reference(h: &Tensor, w: &Tensor, targets: &[u32]) -> Tensor {
        super::super::cross_entropy(&h.matmul(&w.t().unwrap()).unwrap(), targets).unwrap()
    }

    #[test]
    fn loss_and_hidden_gradient_match_the_composed_form() {
        // Rows not a multiple of the chunk (300 = 256 + 44), a single row, a vocabulary smaller than a block
        // and than the segment count (3), vocabularies not a multiple of a block, peaked and flat softmaxes.
        for (i, &(n, features, vocab, spread)) in [
            (300, 16, 5000, 0.5),
            (1, 8, 5000, 1.0),
            (7, 5, 3, 1.0),
            (1, 1, 3, 2.0),
            (33, 24, 1031, 2.0),
            (64, 32, 700, 0.05),
        ]
        .iter()
        .enumerate()
        {
            let (h, w, targets) = inputs(n, features, vocab, spread, i as u64);
            let h = Var::from_tensor(&h).unwrap();
            let fused = linear_cross_entropy(h.as_tensor(), &w, &targets).unwrap();
            let expected = reference(h.as_tensor(), &w, &targets);
            assert_eq!(fused.dims(), &[] as &[usize], "a scalar");
            let (f, r) = (
                fused.to_scalar::<f32>().unwrap(),
                expected.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (f - r).abs() <= 1e-5 * r.abs().max(1e-3),
                "[{n}, {features}] x [{vocab}]: loss {f} vs {r}"
            );
            // A gradient other than 1 reaches the op: the loss scaled by 3.
            let g_fused = (fused * 3.0).unwrap().backward().unwrap();
            let g_ref = (expected * 3.0).unwrap().backward().unwrap();
            let (a, b) = (
                g_fused.get(h.as_tensor()).expect("fused gradient"),
                g_ref.get(h.as_tensor()).expect("composed gradient"),
            );
            assert_eq!(a.dims(), &[n, features]);
            let d = rel_diff(a, b);
            assert!(
                d < 1e-5,
                "[{n}, {features}] x [{vocab}]: gradient differs by {d} (relative)"
            );
            assert!(g_fused.get(&w).is_none(), "the frozen head got a gradient");
        }
    }

    #[test]
    fn confident_rows_keep_a_precise_gradient() {
        // p_t close to 1: the gradient (p - one_hot) W is small and must not drown in the rounding of W_t (as
        // it would if p_t W_t and -W_t were summed apart). Against an f64 reference, the fused gradient must be
        // at least as precise as the composed f32 one.
        let (h, w, _) = inputs(4, 64, 600, 0.1, 11);
        let targets = vec![5u32, 17, 300, 599];
        let mut rows = vec![vec![0f32; 64]; 600];
        let hv = h.to_vec2::<f32>().unwrap();
        for (r, &t) in targets.iter().enumerate() {
            // Row t of the weight gains a multiple of h_r: its logit leads by about 16.
            let norm2: f32 = hv[r].iter().map(|x| x * x).sum();
            for (j, x) in hv[r].iter().enumerate() {
                rows[t as usize][j] += 16.0 * x / norm2;
            }
        }
        let w = (w + Tensor::new(rows, &Device::Cpu).unwrap()).unwrap();
        let grad = |loss: Tensor, h: &Var| {
            let g = loss.backward().unwrap();
            let g = g.get(h.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
            (
                loss.to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap(),
                g,
            )
        };
        let h32 = Var::from_tensor(&h).unwrap();
        let h64 = Var::from_tensor(&h.to_dtype(DType::F64).unwrap()).unwrap();
        let w64 = w.to_dtype(DType::F64).unwrap();
        let (exact_loss, exact) = grad(
            linear_cross_entropy(h64.as_tensor(), &w64, &targets).unwrap(),
            &h64,
        );
        let (fused_loss, fused) = grad(
            linear_cross_entropy(h32.as_tensor(), &w, &targets).unwrap(),
            &h32,
        );
        let (_, composed) = grad(reference(h32.as_tensor(), &w, &targets), &h32);
        assert!(
            exact_loss < 1e-3,
            "the rows are confident: loss {exact_loss}"
        );
        assert!(
            (fused_loss - exact_loss).abs() <= 1e-2 * exact_loss,
            "loss {fused_loss} vs {exact_loss}"
        );
        let err = |g: &Tensor| {
            let d = (g - &exact).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f64>().unwrap()
        };
        let scale = exact
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let (e_fused, e_composed) = (err(&fused), err(&composed));
        // (Measured: the fused error is 0.4 times the composed one; summing p_t W_t and -W_t apart gives 1.7.)
        assert!(
            e_fused <= e_composed,
            "fused error {e_fused:e}, composed error {e_composed:e}, gradient scale {scale:e}"
        );
    }

    #[test]
    fn untracked_hidden_states_get_no_gradient() {
        let (h, w, targets) = inputs(5, 6, 40, 1.0, 3);
        let loss = linear_cross_entropy(&h, &w, &targets).unwrap();
        let expected = reference(&h, &w, &targets).to_scalar::<f32>().unwrap();
        let v = loss.to_scalar::<f32>().unwrap();
        assert!(
            (v - expected).abs() < 1e-5 * expected.abs(),
            "{v} vs {expected}"
        );
        assert!(!loss.track_op());
        let grads = loss.backward().unwrap();
        assert!(grads.get(&h).is_none() && grads.get(&w).is_none());
    }

    #[test]
    fn the_gradient_is_kept_only_when_a_backward_will_come() {
        let (h, w, targets) = inputs(5, 6, 40, 1.0, 4);
        let grad_of = |h: &Tensor| {
            let op = LinearCrossEntropy {
                weight: Head::Dense(w.clone()),
                targets: targets.clone(),
                want_grad: h.track_op(),
                dh: OnceLock::new(),
            };
            let (storage, layout) = h.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                unreachable!()
            };
            op.cpu_fwd(cpu, layout).unwrap();
            op.dh.get().map(Vec::len)
        };
        assert_eq!(grad_of(&h), None);
        let v = Var::from_tensor(&h).unwrap();
        assert_eq!(grad_of(v.as_tensor()), Some(5 * 6));
    }

    #[test]
    fn a_trained_weight_runs_the_composed_form_and_gets_its_gradient() {
        let (h, w, targets) = inputs(3, 4, 9, 1.0, 5);
        let h = Var::from_tensor(&h).unwrap();
        let w = Var::from_tensor(&w).unwrap();
        let loss = linear_cross_entropy(h.as_tensor(), w.as_tensor(), &targets).unwrap();
        let grads = loss.backward().unwrap();
        let expected = reference(h.as_tensor(), w.as_tensor(), &targets)
            .backward()
            .unwrap();
        for t in [h.as_tensor(), w.as_tensor()] {
            let d = rel_diff(grads.get(t).unwrap(), expected.get(t).unwrap());
            assert!(d < 1e-6, "gradient differs by {d}");
        }
    }

    #[test]
    fn fallback_on_f64_gives_the_same_loss() {
        let (h, w, targets) = inputs(6, 5, 11, 2.0, 6);
        let fused = linear_cross_entropy(&h, &w, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let (h64, w64) = (
            h.to_dtype(DType::F64).unwrap(),
            w.to_dtype(DType::F64).unwrap(),
        );
        let fallback = linear_cross_entropy(&h64, &w64, &targets).unwrap();
        assert_eq!(fallback.dtype(), DType::F64);
        let fallback = fallback.to_scalar::<f64>().unwrap();
        assert!(
            (fused as f64 - fallback).abs() < 1e-5 * fallback.abs(),
            "{fused} vs {fallback}"
        );
    }

    #[test]
    fn bad_arguments_are_named() {
        let (h, w, _) = inputs(3, 2, 4, 1.0, 7);
        for (h, w) in [
            (h.clone(), w.clone()),
            (
                h.to_dtype(DType::F64).unwrap(),
                w.to_dtype(DType::F64).unwrap(),
            ),
        ] {
            let err = linear_cross_entropy(&h, &w, &[0, 4, 1])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("linear_cross_entropy")
                    && err.contains("target 4 of row 1")
                    && err.contains("4 classes"),
                "{err}"
            );
            let err = linear_cross_entropy(&h, &w, &[0, 1])
                .unwrap_err()
                .to_string();
            assert!(err.contains("2 targets for 3 rows"), "{err}");
        }
        let err = linear_cross_entropy(&h, &w.t().unwrap(), &[0, 0, 0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden has 2 features"), "{err}");
        let err = linear_cross_entropy(&h.flatten_all().unwrap(), &w, &[0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[rows, features]"), "{err}");
    }

    #[test]
    fn a_quantized_head_gives_the_loss_and_gradient_of_its_dequantized_weight() {
        use candle_core::quantized::{GgmlDType, QTensor};
        // More rows than one chunk of the dense path and a vocabulary of several blocks and segments.
        let (h, w, targets) = inputs(ROWS + 37, 64, 2 * SEGMENTS * BLOCK + 77, 1.0, 21);
        let q = QuantizedWeight::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        let dense = q.dequantize().unwrap();
        let h = Var::from_tensor(&h).unwrap();
        let loss_q = linear_cross_entropy_quantized(h.as_tensor(), &q, &targets).unwrap();
        let loss_d = linear_cross_entropy(h.as_tensor(), &dense, &targets).unwrap();
        let (a, b) = (
            loss_q.to_scalar::<f32>().unwrap(),
            loss_d.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "loss {a} vs {b}");
        let gq = loss_q.backward().unwrap();
        let gd = loss_d.backward().unwrap();
        let diff = rel_diff(
            gq.get(h.as_tensor()).unwrap(),
            gd.get(h.as_tensor()).unwrap(),
        );
        assert!(diff < 1e-4, "hidden gradient differs by {diff} (relative)");
        assert!(linear_cross_entropy_quantized(h.as_tensor(), &q, &targets[1..]).is_err());
    }

    /// A bf16 head multiplies on the bf16 units: the loss is that of the hidden states rounded to bf16 against
    /// the head's values (a product of two bf16 numbers is exact in f32, so only the order of the sums
    /// differs), the hidden gradient is within bf16's rounding of the softmax of the f32 one, and the head
    /// gets none.
    #[test]
    fn a_bf16_head_multiplies_in_bf16() {
        // Rows past a chunk, a vocabulary of several segments and a partial block.
        let (h, w, targets) = inputs(300, 24, 1100, 0.5, 31);
        let w16 = w.to_dtype(DType::BF16).unwrap();
        let w32 = w16.to_dtype(DType::F32).unwrap();
        let h = Var::from_tensor(&h).unwrap();
        let rounded = Var::from_tensor(
            &h.as_tensor()
                .to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        )
        .unwrap();
        let loss = linear_cross_entropy(h.as_tensor(), &w16, &targets).unwrap();
        let expected = reference(rounded.as_tensor(), &w32, &targets);
        assert!(rel_diff(&loss, &expected) < 1e-5);
        let unrounded = reference(h.as_tensor(), &w32, &targets);
        assert_ne!(
            loss.to_scalar::<f32>().unwrap(),
            unrounded.to_scalar::<f32>().unwrap(),
            "the hidden states were not rounded: the bf16 products did not run"
        );
        let g = loss.backward().unwrap();
        let g_expected = expected.backward().unwrap();
        let diff = rel_diff(
            g.get(h.as_tensor()).unwrap(),
            g_expected.get(rounded.as_tensor()).unwrap(),
        );
        // The exponentials rounded to bf16 (relative 2^-9) before the gradient product.
        assert!(
            diff < 1e-2 && diff > 0.0,
            "hidden gradient differs by {diff}"
        );
        assert!(g.get(&w16).is_none());
    }

    #[test]
    fn results_are_identical_across_thread_counts() {
        // Two chunks of rows and every segment: the thread count must change no bit.
        let (h, w, targets) = inputs(ROWS + 37, 12, 2 * SEGMENTS * BLOCK + 77, 1.0, 8);
        let h = Var::from_tensor(&h).unwrap();
        for w in [w.clone(), w.to_dtype(DType::BF16).unwrap()] {
            same_bits_on_one_and_three_threads(&h, &w, &targets);
        }
    }

    fn same_bits_on_one_and_three_threads(h: &Var, w: &Tensor, targets: &[u32]) {
        let run = || {
            let loss = linear_cross_entropy(h.as_tensor(), w, targets).unwrap();
            let g = loss.backward().unwrap();
            let g = g.get(h.as_tensor()).unwrap().flatten_all().unwrap();
            (
                loss.to_scalar::<f32>().unwrap(),
                g.to_vec1::<f32>().unwrap(),
            )
        };
        let pool = crate::cpu::test_pool;
        let (l1, g1) = pool(1).install(run);
        let (l3, g3) = pool(3).install(run);
        assert_eq!(l1.to_bits(), l3.to_bits());
        assert!(g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()));
        let (l, g) = run();
        assert_eq!(l.to_bits(), l1.to_bits());
        assert_eq!(g, g1);
    }
}
