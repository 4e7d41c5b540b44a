//! Scaled dot-product attention as one fused op: for each (batch, head) pair the scores `scale * q k^T + bias`,
//! their row softmax and the product with the values are computed in a `[T, K]` scratch and written straight
//! into the `[B, T, H * D]` output; the backward recomputes the probabilities per pair instead of keeping those
//! of every layer alive. Grouped-query attention reads each key/value head for its group of query heads
//! without repeating it.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! let q = Tensor::ones((1, 2, 3, 4), candle_core::DType::F32, &dev).unwrap(); // [B, H, T, D]
//! let k = Tensor::zeros((1, 1, 3, 4), candle_core::DType::F32, &dev).unwrap(); // one key/value head
//! let v = Tensor::arange(0f32, 12., &dev).unwrap().reshape((1, 1, 3, 4)).unwrap();
//! let bias = Tensor::zeros((1, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
//! let out = peft_kernels::scaled_dot_product_attention(&q, &k, &v, &bias, 0.5).unwrap();
//! assert_eq!(out.dims(), &[1, 3, 8]); // [B, T, H * D]
//! // Equal scores: every query averages the three value rows.
//! let first = out.get(0).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap();
//! assert!(first[..4].iter().zip([4., 5., 6., 7.]).all(|(a, b)| (a - b).abs() < 1e-5));
//! ```

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::cpu::{self, Mat, SharedOut, Threads};
use peft_core::Result;

/// `softmax(q k^T * scale + bias) v` for queries `[B, H, T, D]`, keys and values `[B, KVH, K, D]` (`H` a
/// multiple of `KVH`: query head `h` reads key/value head `h / (H / KVH)`) and an additive `bias` broadcast
/// to `[B, H, T, K]` (`[B, 1, T, K]` from the models' masks). Returns `[B, T, H * D]`.
///
/// Runs one fused CPU op when `q`, `k`, `v` and `bias` are f32 on the CPU and `bias` is not trained (its
/// backward yields the gradients of `q`, `k` and `v`, each only where that argument is trained); otherwise it
/// runs the composed form from candle's primitives, which computes the same function. `q`, `k` and `v` may be
/// strided views (a transposed `[B, T, H, D]`, say) as long as their last dimension is contiguous. A query row
/// whose keys are all at `-inf` yields zeros (the composed form yields NaN); the models' masks use a large
/// finite negative, which both forms treat alike.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let geometry = check(q, k, v, bias)?;
    let fused = [q, k, v, bias].into_iter().all(cpu::covers) && !bias.track_op();
    if !fused {
        return super::composed::scaled_dot_product_attention(q, k, v, bias, scale);
    }
    let op = Attention {
        bias: full_bias(bias, &geometry)?,
        scale: scale as f32,
        geometry,
    };
    Ok(inner_contiguous(q)?.apply_op3(&inner_contiguous(k)?, &inner_contiguous(v)?, op)?)
}

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    queries: usize,
    keys: usize,
    head_dim: usize,
}

impl Geometry {
    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// Checks the shapes (for both paths) and returns the sizes.
fn check(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> candle_core::Result<Geometry> {
    let name = "scaled_dot_product_attention";
    let (&[batch, heads, queries, head_dim], &[kb, kv_heads, keys, kd]) = (q.dims(), k.dims())
    else {
        candle_core::bail!(
            "{name}: q must be [B, H, T, D] and k [B, KVH, K, D], got {:?} and {:?}",
            q.dims(),
            k.dims()
        );
    };
    if v.dims() != k.dims() {
        candle_core::bail!(
            "{name}: v {:?} must have the shape of k {:?}",
            v.dims(),
            k.dims()
        );
    }
    if kb != batch || kd != head_dim {
        candle_core::bail!(
            "{name}: k {:?} does not match q {:?} in batch or head size",
            k.dims(),
            q.dims()
        );
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        candle_core::bail!("{name}: {heads} query heads cannot share {kv_heads} key/value heads");
    }
    let full = [batch, heads, queries, keys];
    let bd = bias.dims();
    let fits = bd.len() <= 4
        && bd
            .iter()
            .rev()
            .zip(full.iter().rev())
            .all(|(&b, &f)| b == f || b == 1);
    if !fits {
        candle_core::bail!("{name}: bias {bd:?} does not broadcast to [B, H, T, K] = {full:?}");
    }
    Ok(Geometry {
        batch,
        heads,
        kv_heads,
        queries,
        keys,
        head_dim,
    })
}

/// `t` itself where its last dimension is contiguous (the kernel reads any other strides), else a copy.
fn inner_contiguous(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.stride().last() == Some(&1) || t.dims().last() == Some(&1) {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// The bias as a contiguous `[BB, BH, T, K]` tensor (`BB` in {1, B}, `BH` in {1, H}): broadcasting over
/// batch and heads is left to the kernel, a broadcast over queries or keys (rare) is materialised.
fn full_bias(bias: &Tensor, g: &Geometry) -> candle_core::Result<Tensor> {
    let mut dims = vec![1; 4 - bias.rank()];
    dims.extend_from_slice(bias.dims());
    let mut bias = bias.reshape(dims.as_slice())?;
    if dims[2] != g.queries || dims[3] != g.keys {
        bias = bias.broadcast_as((dims[0], dims[1], g.queries, g.keys))?;
    }
    Ok(bias.contiguous()?.detach())
}

/// The fused op over `(q, k, v)`; holds the bias (`[BB, BH, T, K]`, see [`full_bias`]) and the scale.
struct Attention {
    bias: Tensor,
    scale: f32,
    geometry: Geometry,
}

/// A `[.., rows, cols]` f32 tensor read in place: element `(i0, i1, r, c)` at
/// `offset + i0 * s0 + i1 * s1 + r * row_stride + c` (the last dimension contiguous).
#[derive(Clone, Copy)]
struct View<'a> {
    values: &'a [f32],
    offset: usize,
    s0: usize,
    s1: usize,
    row_stride: usize,
}

impl<'a> View<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<Self> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!(
                "scaled_dot_product_attention: {what} must be f32, got {:?}",
                storage.dtype()
            );
        };
        let (dims, stride) = (layout.dims(), layout.stride());
        if dims.len() != 4 || (stride[3] != 1 && dims[3] > 1) {
            candle_core::bail!(
                "scaled_dot_product_attention: {what} must be 4-d with a contiguous last dimension"
            );
        }
        Ok(View {
            values,
            offset: layout.start_offset(),
            s0: stride[0],
            s1: stride[1],
            row_stride: stride[2],
        })
    }

    /// Matrix `(i0, i1)` (`[rows, cols]`), or its transpose.
    fn mat(&self, i0: usize, i1: usize, transposed: bool) -> Mat<'a> {
        let values = &self.values[self.offset + i0 * self.s0 + i1 * self.s1..];
        if transposed {
            Mat::strided(values, 1, self.row_stride)
        } else {
            Mat::strided(values, self.row_stride, 1)
        }
    }
}

/// The gradient slices one backward task owns (`None` where that argument needs none).
struct Grads<'a> {
    /// `[group, T, D]`: the query heads of the group.
    dq: Option<&'a mut [f32]>,
    /// `[K, D]`.
    dk: Option<&'a mut [f32]>,
    /// `[K, D]`.
    dv: Option<&'a mut [f32]>,
}

impl Attention {
    /// The `[T, K]` bias of pair `(b, h)`.
    fn bias_of<'a>(&self, bias: &'a [f32], b: usize, h: usize) -> &'a [f32] {
        let g = &self.geometry;
        let dims = self.bias.dims();
        let (bb, bh) = (dims[0], dims[1]);
        let plane = g.queries * g.keys;
        let index = if bb == 1 { 0 } else { b } * bh + if bh == 1 { 0 } else { h };
        &bias[index * plane..(index + 1) * plane]
    }

    /// `p = softmax(scale * q_bh k_bh^T + bias_bh)` into `p` (`[T, K]`).
    fn probabilities(
        &self,
        q: &View<'_>,
        k: &View<'_>,
        bias: &[f32],
        b: usize,
        h: usize,
        p: &mut [f32],
    ) {
        let g = &self.geometry;
        let kv = h / g.group();
        cpu::matmul(
            q.mat(b, h, false),
            k.mat(b, kv, true),
            p,
            (g.queries, g.keys, g.head_dim),
            false,
            Threads::One,
        );
        softmax_rows(p, self.bias_of(bias, b, h), g.keys, self.scale);
    }

    /// The gradients from key/value head `kv` of batch `b` and its group of query heads, the probabilities
    /// recomputed per head into `p` (`dp` is scratch of the same size).
    #[allow(clippy::too_many_arguments)]
    fn backward_group(
        &self,
        [q, k, v]: &[View<'_>; 3],
        dout: &[f32],
        bias: &[f32],
        (b, kv): (usize, usize),
        mut grads: Grads<'_>,
        p: &mut [f32],
        dp: &mut [f32],
    ) {
        let g = &self.geometry;
        let (t, keys, d) = (g.queries, g.keys, g.head_dim);
        let width = g.heads * d;
        let group = g.group();
        for (j, h) in (kv * group..(kv + 1) * group).enumerate() {
            self.probabilities(q, k, bias, b, h, p);
            // dO of (b, h): [T, D], its rows `width` apart in [B, T, H * D].
            let d_out = Mat::strided(&dout[b * t * width + h * d..], width, 1);
            // Over the group's heads, dk and dv accumulate (the first head overwrites).
            let accumulate = j > 0;
            if let Some(dv) = grads.dv.as_deref_mut() {
                // dV += P^T dO
                let pt = Mat::transposed(p, keys);
                cpu::matmul(pt, d_out, dv, (keys, d, t), accumulate, Threads::One);
            }
            if grads.dq.is_none() && grads.dk.is_none() {
                continue;
            }
            // dP = dO V^T, then dS = scale * P * (dP - rowsum(dP * P)) in its place.
            cpu::matmul(
                d_out,
                v.mat(b, kv, true),
                dp,
                (t, keys, d),
                false,
                Threads::One,
            );
            softmax_backward_rows(dp, p, keys, self.scale);
            if let Some(dq) = grads.dq.as_deref_mut() {
                // dQ = dS K
                let dq = &mut dq[j * t * d..(j + 1) * t * d];
                cpu::matmul(
                    Mat::rows(dp, keys),
                    k.mat(b, kv, false),
                    dq,
                    (t, d, keys),
                    false,
                    Threads::One,
                );
            }
            if let Some(dk) = grads.dk.as_deref_mut() {
                // dK += dS^T Q
                let dst = Mat::transposed(dp, keys);
                cpu::matmul(
                    dst,
                    q.mat(b, h, false),
                    dk,
                    (keys, d, t),
                    accumulate,
                    Threads::One,
                );
            }
        }
    }
}

cpu::simd_fn! {
    /// Each `[keys]` row of `s` becomes `softmax(scale * s + bias)`, shifted by its maximum; a row whose
    /// entries are all `-inf` becomes zeros.
    fn softmax_rows(s: &mut [f32], bias: &[f32], keys: usize, scale: f32) {
        if keys == 0 {
            return;
        }
        for (row, bias) in s.chunks_mut(keys).zip(bias.chunks(keys)) {
            for (x, &c) in row.iter_mut().zip(bias) {
                *x = *x * scale + c;
            }
            let max = cpu::max(row);
            if max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            let inv = 1.0 / cpu::exp_in_place(row, max);
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

cpu::simd_fn! {
    /// The softmax backward in place: `dp := scale * p * (dp - rowsum(dp * p))`, per `[keys]` row (the
    /// scale of the scores folded in, so that `dq = dp k` and `dk = dp^T q`).
    fn softmax_backward_rows(dp: &mut [f32], p: &[f32], keys: usize, scale: f32) {
        if keys == 0 {
            return;
        }
        for (dp, p) in dp.chunks_mut(keys).zip(p.chunks(keys)) {
            let dot = cpu::dot(dp, p);
            for (d, &p) in dp.iter_mut().zip(p) {
                *d = scale * p * (*d - dot);
            }
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "scaled-dot-product-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.geometry;
        let (q, k, v) = (
            View::new(s1, l1, "q")?,
            View::new(s2, l2, "k")?,
            View::new(s3, l3, "v")?,
        );
        let width = g.heads * g.head_dim;
        let mut out = vec![0f32; g.batch * g.queries * width];
        cpu::with_values(&self.bias, |bias| {
            let shared = SharedOut::new(&mut out);
            (0..g.batch * g.heads).into_par_iter().for_each_init(
                || vec![0f32; g.queries * g.keys],
                |p, pair| {
                    let (b, h) = (pair / g.heads, pair % g.heads);
                    self.probabilities(&q, &k, bias, b, h, p);
                    // out[b, t, h * D..(h + 1) * D] = p v_bh
                    // SAFETY: pair (b, h) alone writes these columns of these rows.
                    unsafe {
                        cpu::matmul_to(
                            Mat::rows(p, g.keys),
                            v.mat(b, h / g.group(), false),
                            shared,
                            b * g.queries * width + h * g.head_dim,
                            width,
                            (g.queries, g.head_dim, g.keys),
                            false,
                            Threads::One,
                        );
                    }
                },
            );
            Ok(())
        })?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((g.batch, g.queries, width)),
        ))
    }

    fn bwd(
        &self,
        q_arg: &Tensor,
        k_arg: &Tensor,
        v_arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry;
        let (need_q, need_k, need_v) = (q_arg.track_op(), k_arg.track_op(), v_arg.track_op());
        if !(need_q || need_k || need_v) {
            return Ok((None, None, None));
        }
        let group = g.group();
        let head = g.queries * g.head_dim;
        let kv_head = g.keys * g.head_dim;
        let pairs = g.batch * g.kv_heads;
        let alloc = |need: bool, len: usize| if need { vec![0f32; len] } else { Vec::new() };
        let mut dq = alloc(need_q, pairs * group * head);
        let mut dk = alloc(need_k, pairs * kv_head);
        let mut dv = alloc(need_v, pairs * kv_head);
        let (qs, ql) = q_arg.storage_and_layout();
        let (ks, kl) = k_arg.storage_and_layout();
        let (vs, vl) = v_arg.storage_and_layout();
        let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*qs, &*ks, &*vs) else {
            candle_core::bail!("scaled_dot_product_attention: q, k and v must be on the CPU");
        };
        let views = [
            View::new(qs, ql, "q")?,
            View::new(ks, kl, "k")?,
            View::new(vs, vl, "v")?,
        ];
        cpu::with_values(grad_res, |dout| {
            cpu::with_values(&self.bias, |bias| {
                // One task per (batch, key/value head): it owns dq of the group's query heads and dk, dv of
                // its key/value head, so no two tasks write the same values.
                let tasks = chunks(&mut dq, group * head, pairs)
                    .into_iter()
                    .zip(chunks(&mut dk, kv_head, pairs))
                    .zip(chunks(&mut dv, kv_head, pairs))
                    .enumerate()
                    .collect::<Vec<_>>();
                let scratch = || {
                    [
                        vec![0f32; g.queries * g.keys],
                        vec![0f32; g.queries * g.keys],
                    ]
                };
                tasks
                    .into_par_iter()
                    .for_each_init(scratch, |[p, dp], (pair, ((dq, dk), dv))| {
                        let (b, kv) = (pair / g.kv_heads, pair % g.kv_heads);
                        let grads = Grads { dq, dk, dv };
                        self.backward_group(&views, dout, bias, (b, kv), grads, p, dp);
                    });
                Ok(())
            })
        })?;
        let grad =
            |need: bool, values: Vec<f32>, kv: bool| -> candle_core::Result<Option<Tensor>> {
                if !need {
                    return Ok(None);
                }
                let (heads, rows) = if kv {
                    (g.kv_heads, g.keys)
                } else {
                    (g.heads, g.queries)
                };
                Ok(Some(cpu::tensor(
                    values,
                    &[g.batch, heads, rows, g.head_dim],
                )?))
            };
        Ok((
            grad(need_q, dq, false)?,
            grad(need_k, dk, true)?,
            grad(need_v, dv, true)?,
        ))
    }
}

/// `count` chunks of `len` values of `buf`, or `count` times `None` where `buf` is empty (not needed).
fn chunks(buf: &mut [f32], len: usize, count: usize) -> Vec<Option<&mut [f32]>> {
    if buf.is_empty() || len == 0 {
        return (0..count).map(|_| None).collect();
    }
    buf.chunks_mut(len).map(Some).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::composed::scaled_dot_product_attention as composed;
    use candle_core::{DType, Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    const MASKED: f32 = -1e9;

    /// Seeded normal values times `spread`.
    fn random(dims: &[usize], seed: u64, spread: f32) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| rng.sample::<f32, _>(StandardNormal) * spread)
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    /// A `[B, 1, T, K]` mask as the models build it: a prefix of `K - T` keys visible to all, causal over
    /// the rest, the last key of every batch but the first padded, and query 0 of batch 0 sees nothing.
    fn mask(b: usize, t: usize, k: usize) -> Tensor {
        let prefix = k - t;
        let mut values = vec![0f32; b * t * k];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..k {
                    let hidden = j > prefix + i || (bi > 0 && j == k - 1) || (bi == 0 && i == 0);
                    if hidden {
                        values[(bi * t + i) * k + j] = MASKED;
                    }
                }
            }
        }
        Tensor::from_vec(values, (b, 1, t, k), &Device::Cpu).unwrap()
    }

    /// `max |a - b| / max |b|`.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        peft_core::compare::max_rel_diff(a, b).unwrap()
    }

    struct Case {
        b: usize,
        heads: usize,
        kv_heads: usize,
        t: usize,
        k: usize,
        d: usize,
        bias: Tensor,
        scale: f64,
    }

    fn cases() -> Vec<Case> {
        let case = |b, heads, kv_heads, t, k, d, bias, scale| Case {
            b,
            heads,
            kv_heads,
            t,
            k,
            d,
            bias,
            scale,
        };
        vec![
            // GQA (2 query heads per kv head), a prefix of 2 keys, the models' mask with a fully hidden row.
            case(2, 4, 2, 5, 7, 3, mask(2, 5, 7), 0.5),
            // Every size 1.
            case(1, 1, 1, 1, 1, 1, mask(1, 1, 1).zeros_like().unwrap(), 1.0),
            // T5: a [1, H, T, K] relative-position bias, scale 1, 3 pairs per batch (odd task count).
            case(3, 3, 3, 4, 4, 8, random(&[1, 3, 4, 4], 11, 2.0), 1.0),
            // Multi-query attention, a per-batch per-head bias.
            case(2, 6, 1, 3, 5, 4, random(&[2, 6, 3, 5], 12, 1.0), 0.3),
            // A bias broadcast over queries ([1, 1, 1, K]) and one of rank 2 ([T, K]).
            case(1, 2, 2, 6, 6, 2, random(&[1, 1, 1, 6], 13, 1.0), 0.7),
            case(2, 2, 1, 3, 9, 5, random(&[3, 9], 14, 1.0), 0.7),
            // Head size and length of a real model (GPT-2: D = 64), causal mask.
            case(1, 2, 2, 33, 33, 64, mask(1, 33, 33), 0.125),
        ]
    }

    /// Output and gradients of q, k, v (all trained) under `f`, for the loss `sum(out * w)`.
    fn run(
        f: fn(&Tensor, &Tensor, &Tensor, &Tensor, f64) -> Result<Tensor>,
        c: &Case,
        vars: &[Var; 3],
        w: &Tensor,
    ) -> (Tensor, Vec<Tensor>) {
        let out = f(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            &c.bias,
            c.scale,
        )
        .unwrap();
        let grads = (&out * w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).expect("a gradient").clone())
            .collect();
        (out, g)
    }

    fn vars(c: &Case, seed: u64) -> [Var; 3] {
        let q = random(&[c.b, c.heads, c.t, c.d], seed, 1.0);
        let k = random(&[c.b, c.kv_heads, c.k, c.d], seed + 1, 1.0);
        let v = random(&[c.b, c.kv_heads, c.k, c.d], seed + 2, 1.0);
        [q, k, v].map(|t| Var::from_tensor(&t).unwrap())
    }

    #[test]
    fn output_and_gradients_match_the_composed_form() {
        for (i, c) in cases().iter().enumerate() {
            let vars = vars(c, 10 * i as u64);
            let w = random(&[c.b, c.t, c.heads * c.d], 100 + i as u64, 1.0);
            let (out, grads) = run(scaled_dot_product_attention, c, &vars, &w);
            let (reference, ref_grads) = run(composed, c, &vars, &w);
            assert_eq!(out.dims(), &[c.b, c.t, c.heads * c.d]);
            let d = rel_diff(&out, &reference);
            assert!(d < 1e-5, "case {i}: output differs by {d} (relative)");
            for (name, (g, r)) in ["q", "k", "v"].iter().zip(grads.iter().zip(&ref_grads)) {
                assert_eq!(g.dims(), r.dims(), "case {i}: d{name}");
                let d = rel_diff(g, r);
                assert!(d < 1e-5, "case {i}: d{name} differs by {d} (relative)");
            }
        }
    }

    #[test]
    fn fully_masked_rows_stay_finite() {
        let c = &cases()[0];
        let vars = vars(c, 1);
        let out = scaled_dot_product_attention(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            &c.bias,
            c.scale,
        )
        .unwrap();
        let values = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()));
        // With -1e9 everywhere the row attends uniformly: query 0 of batch 0, head 0, is the mean of v rows.
        let mean = vars[2]
            .as_tensor()
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .mean(0)
            .unwrap();
        let row = out
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .narrow(0, 0, c.d)
            .unwrap();
        assert!(peft_core::compare::max_abs_diff(&row, &mean).unwrap() < 1e-5);
        // With -inf the row is zeros, and so are its gradients.
        let bias = Tensor::from_vec(
            vec![f32::NEG_INFINITY, f32::NEG_INFINITY, 0., 0.],
            (1, 1, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let q = Var::from_tensor(&random(&[1, 1, 2, 3], 2, 1.0)).unwrap();
        let kv = random(&[1, 1, 2, 3], 3, 1.0);
        let out = scaled_dot_product_attention(q.as_tensor(), &kv, &kv, &bias, 1.0).unwrap();
        assert_eq!(
            out.get(0)
                .unwrap()
                .get(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![0.; 3]
        );
        let g = out.sum_all().unwrap().backward().unwrap();
        let g = g
            .get(q.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(g.iter().all(|v| v.is_finite()) && g[..3] == [0.; 3]);
    }

    #[test]
    fn strided_inputs_read_in_place() {
        // q, k, v as the models make them: [B, T, H, D] transposed to [B, H, T, D], not copied.
        let c = &cases()[0];
        let (q, k, v) = (
            random(&[c.b, c.t, c.heads, c.d], 1, 1.0),
            random(&[c.b, c.k, c.kv_heads, c.d], 2, 1.0),
            random(&[c.b, c.k, c.kv_heads, c.d], 3, 1.0),
        );
        let [q, k, v] = [q, k, v].map(|t| Var::from_tensor(&t).unwrap());
        let views = [&q, &k, &v].map(|t| t.transpose(1, 2).unwrap());
        assert!(!views[0].is_contiguous());
        let out = scaled_dot_product_attention(&views[0], &views[1], &views[2], &c.bias, c.scale)
            .unwrap();
        let reference = composed(&views[0], &views[1], &views[2], &c.bias, c.scale).unwrap();
        assert!(rel_diff(&out, &reference) < 1e-5);
        let w = random(out.dims(), 4, 1.0);
        let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let ref_grads = (&reference * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for t in [&q, &k, &v] {
            let (g, r) = (grads.get(t).unwrap(), ref_grads.get(t).unwrap());
            assert!(rel_diff(g, r) < 1e-5);
        }
    }

    #[test]
    fn frozen_arguments_get_no_gradient() {
        let c = &cases()[0];
        let [q, k, v] = vars(c, 5);
        let (q, v) = (q.as_tensor().detach(), v.as_tensor().detach());
        // Prefix tuning: only the key/value prefix is trained; here the keys' prefix, concatenated.
        let prefix = Var::from_tensor(&random(&[c.b, c.kv_heads, 2, c.d], 6, 1.0)).unwrap();
        let keys = Tensor::cat(
            &[
                prefix.as_tensor(),
                &k.as_tensor().narrow(2, 2, c.k - 2).unwrap().detach(),
            ],
            2,
        )
        .unwrap();
        let w = random(&[c.b, c.t, c.heads * c.d], 7, 1.0);
        let loss = |f: fn(&Tensor, &Tensor, &Tensor, &Tensor, f64) -> Result<Tensor>| {
            let out = f(&q, &keys, &v, &c.bias, c.scale).unwrap();
            (out * &w).unwrap().sum_all().unwrap().backward().unwrap()
        };
        let (grads, ref_grads) = (loss(scaled_dot_product_attention), loss(composed));
        assert!(grads.get(&q).is_none() && grads.get(&v).is_none());
        let (g, r) = (
            grads.get(prefix.as_tensor()).unwrap(),
            ref_grads.get(prefix.as_tensor()).unwrap(),
        );
        assert!(
            rel_diff(g, r) < 1e-5,
            "prefix gradient differs by {}",
            rel_diff(g, r)
        );
        // LoRA on the query projection: only q is trained.
        let qv = Var::from_tensor(&q).unwrap();
        let out =
            scaled_dot_product_attention(qv.as_tensor(), &keys.detach(), &v, &c.bias, c.scale)
                .unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(qv.as_tensor()).is_some() && grads.get(&v).is_none());
    }

    #[test]
    fn fallbacks_give_the_same_values() {
        let c = &cases()[3];
        let [q, k, v] = vars(c, 8);
        let fused = scaled_dot_product_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            &c.bias,
            c.scale,
        )
        .unwrap();
        // f64 inputs run the composed form.
        let [q64, k64, v64, b64] = [q.as_tensor(), k.as_tensor(), v.as_tensor(), &c.bias]
            .map(|t| t.to_dtype(DType::F64).unwrap());
        let out64 = scaled_dot_product_attention(&q64, &k64, &v64, &b64, c.scale).unwrap();
        assert_eq!(out64.dtype(), DType::F64);
        let d = rel_diff(&fused, &out64.to_dtype(DType::F32).unwrap());
        assert!(d < 1e-5, "f64 fallback differs by {d}");
        // A trained bias runs the composed form too, and receives its gradient.
        let bias = Var::from_tensor(&c.bias).unwrap();
        let out = scaled_dot_product_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            bias.as_tensor(),
            c.scale,
        )
        .unwrap();
        assert!(rel_diff(&out, &fused) < 1e-5);
        let grads = out.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(bias.as_tensor()).is_some());
    }

    #[test]
    fn results_are_identical_run_to_run_and_across_thread_counts() {
        let c = &cases()[6];
        let vars = vars(c, 9);
        let w = random(&[c.b, c.t, c.heads * c.d], 10, 1.0);
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        // Each (batch, head) pair is computed whole by one task: the thread count changes nothing.
        let pool = crate::cpu::test_pool;
        let (o1, g1) = pool(1).install(|| run(scaled_dot_product_attention, c, &vars, &w));
        let (o2, g2) = pool(3).install(|| run(scaled_dot_product_attention, c, &vars, &w));
        assert_eq!(bits(&o1), bits(&o2));
        for (a, b) in g1.iter().zip(&g2) {
            assert_eq!(bits(a), bits(b));
        }
    }

    #[test]
    fn bad_shapes_are_named() {
        let dev = Device::Cpu;
        let z = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &dev).unwrap();
        let err = |q: &[usize], k: &[usize], bias: &[usize]| {
            scaled_dot_product_attention(&z(q), &z(k), &z(k), &z(bias), 1.0)
                .unwrap_err()
                .to_string()
        };
        let e = err(&[1, 3, 2, 4], &[1, 2, 2, 4], &[1, 1, 2, 2]);
        assert!(e.contains("3 query heads cannot share 2"), "{e}");
        let e = err(&[1, 2, 2, 4], &[1, 2, 2, 4], &[1, 1, 3, 2]);
        assert!(e.contains("bias [1, 1, 3, 2] does not broadcast"), "{e}");
        let e = err(&[1, 2, 2, 4], &[1, 2, 2, 5], &[1, 1, 2, 2]);
        assert!(
            e.contains("scaled_dot_product_attention") && e.contains("head size"),
            "{e}"
        );
        let e = err(&[2, 2, 4], &[1, 2, 2, 4], &[1, 1, 2, 2]);
        assert!(e.contains("[B, H, T, D]"), "{e}");
    }
}
