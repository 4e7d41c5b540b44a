//! OFT's orthogonal blocks from their trained parameters, as HF PEFT's `OFTRotationModule` computes them: each
//! row of `oft_R.weight` `[blocks, b (b - 1) / 2]` is the upper triangle (row-major, diagonal excluded, as
//! `torch.triu_indices(b, b, 1)` orders it) of a skew-symmetric block `Q` (`Q^T = -Q`), turned into a rotation
//! by the Cayley transform:
//!
//! - exact (`use_cayley_neumann = false`): `R = (I - Q)(I + Q)^-1`, HF PEFT's `linalg.solve(I + Q, I - Q,
//!   left=False)`, orthogonal for every `Q`;
//! - Cayley-Neumann (`use_cayley_neumann = true`, HF's default): `(I + Q)(I - Q)^-1` with the inverse cut to a
//!   Neumann series, which with `k = num_cayley_neumann_terms` is HF's `I + 2Q + 2Q^2 + ... + 2Q^(k-2) + Q^(k-1)`
//!   (`I` for `k <= 1`, `I + 2Q` for `k = 2`; `k = 3` and `4` both give `I + 2Q + 2Q^2 + Q^3`), orthogonal only
//!   up to the series' error.
//!
//! The two are transposes of each other for a small `Q` (HF PEFT's series expands the inverse Cayley map), so the
//! same `oft_R` rotates the other way under the other setting: an adapter must be used with the setting it was
//! trained with.
//!
//! Everything a forward pass uses is built from candle ops (index selection, batched products, and a batched
//! Gauss-Jordan elimination for the exact inverse), so gradients reach `oft_R`. `I + Q` needs no pivoting: its
//! symmetric part is `I`, so every leading block is invertible and its eigenvalues are `1 ± i s` (`|.| >= 1`).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use peft_oft::{cayley_exact, cayley_neumann, Skew};
//! let skew = Skew::new(3, &Device::Cpu).unwrap();
//! // One block of size 3: Q's upper triangle (q01, q02, q12).
//! let q = skew.matrices(&Tensor::new(&[[0.01f32, -0.02, 0.03]], &Device::Cpu).unwrap()).unwrap();
//! let exact = cayley_exact(&q).unwrap();
//! let series = cayley_neumann(&q, 5).unwrap();
//! // R R^T = I for the exact transform; the series is close to its transpose.
//! let rrt = exact.matmul(&exact.transpose(1, 2).unwrap()).unwrap();
//! let eye = Tensor::eye(3, DType::F32, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
//! let off = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
//! assert!(off(&rrt, &eye) < 1e-6);
//! assert!(off(&series, &exact.transpose(1, 2).unwrap()) < 1e-5); // Q^4 ~ 3e-6 away
//! ```

use candle_core::{DType, Device, Tensor};
use peft_core::Result;

/// The index maps that turn `[blocks, b (b - 1) / 2]` upper-triangle vectors into `[blocks, b, b]`
/// skew-symmetric matrices (and back) for one block size `b`.
#[derive(Debug, Clone)]
pub struct Skew {
    b: usize,
    /// Per matrix entry (row-major), 1 + the vector index of an entry above the diagonal, else 0 (a zero column
    /// is put first).
    upper: Tensor,
    /// Per matrix entry, 1 + the vector index of the mirrored entry below the diagonal, else 0.
    lower: Tensor,
    /// The vector index's matrix entry (row-major), for reading a matrix back into vectors.
    entries: Tensor,
}

/// The number of free parameters of one skew-symmetric block of size `b`: `b (b - 1) / 2`.
pub fn skew_len(b: usize) -> usize {
    b * b.saturating_sub(1) / 2
}

impl Skew {
    /// The maps for blocks of size `b`, on `device`.
    pub fn new(b: usize, device: &Device) -> Result<Self> {
        let mut upper = vec![0u32; b * b];
        let mut lower = vec![0u32; b * b];
        let mut entries = Vec::with_capacity(skew_len(b));
        // torch.triu_indices(b, b, 1): row by row, columns ascending.
        for i in 0..b {
            for j in i + 1..b {
                let k = entries.len() as u32;
                upper[i * b + j] = k + 1;
                lower[j * b + i] = k + 1;
                entries.push((i * b + j) as u32);
            }
        }
        let n = entries.len();
        Ok(Skew {
            b,
            upper: Tensor::from_vec(upper, b * b, device)?,
            lower: Tensor::from_vec(lower, b * b, device)?,
            entries: Tensor::from_vec(entries, n, device)?,
        })
    }

    /// The block size.
    pub fn block_size(&self) -> usize {
        self.b
    }

    /// The skew-symmetric matrices `[blocks, b, b]` of the upper-triangle vectors `vectors`
    /// `[blocks, b (b - 1) / 2]` (differentiable).
    pub fn matrices(&self, vectors: &Tensor) -> Result<Tensor> {
        let blocks = vectors.dim(0)?;
        let b = self.b;
        if skew_len(b) == 0 {
            return Ok(Tensor::zeros(
                (blocks, b, b),
                vectors.dtype(),
                vectors.device(),
            )?);
        }
        let zero = Tensor::zeros((blocks, 1), vectors.dtype(), vectors.device())?;
        let padded = Tensor::cat(&[&zero, vectors], 1)?;
        let above = padded.index_select(&self.upper, 1)?;
        let below = padded.index_select(&self.lower, 1)?;
        Ok((above - below)?.reshape((blocks, b, b))?)
    }

    /// The upper-triangle vectors `[blocks, b (b - 1) / 2]` of matrices `[blocks, b, b]`.
    pub fn vectors(&self, matrices: &Tensor) -> Result<Tensor> {
        let blocks = matrices.dim(0)?;
        let flat = matrices.reshape((blocks, self.b * self.b))?;
        Ok(flat.index_select(&self.entries, 1)?)
    }
}

/// `[blocks, b, b]` identity matrices like `like`.
fn identities(like: &Tensor) -> Result<Tensor> {
    let (blocks, b, _) = like.dims3()?;
    Ok(Tensor::eye(b, like.dtype(), like.device())?
        .unsqueeze(0)?
        .broadcast_as((blocks, b, b))?
        .contiguous()?)
}

/// The exact Cayley transform `(I - Q)(I + Q)^-1` of skew-symmetric blocks `q` `[blocks, b, b]`
/// (differentiable): Gauss-Jordan elimination of `[I + Q | I - Q]`, all blocks at once, which leaves
/// `(I + Q)^-1 (I - Q)`, the same matrix since the two factors commute.
pub fn cayley_exact(q: &Tensor) -> Result<Tensor> {
    let (_, b, _) = q.dims3()?;
    let eye = identities(q)?;
    let mut m = Tensor::cat(&[&(&eye + q)?, &(&eye - q)?], 2)?;
    let unit = Tensor::eye(b, q.dtype(), q.device())?;
    for k in 0..b {
        let row = m.narrow(1, k, 1)?;
        let pivot = row.narrow(2, k, 1)?;
        let scaled = row.broadcast_div(&pivot)?;
        // Row k becomes the scaled row, every other row loses its multiple of it: M - (c - e_k) p.
        let factors = m
            .narrow(2, k, 1)?
            .broadcast_sub(&unit.narrow(1, k, 1)?.unsqueeze(0)?)?;
        m = (m - factors.broadcast_mul(&scaled)?)?;
    }
    Ok(m.narrow(2, b, b)?.contiguous()?)
}

/// HF PEFT's Cayley-Neumann rotation of skew-symmetric blocks `q` `[blocks, b, b]` with `terms` =
/// `num_cayley_neumann_terms` (differentiable): `I + 2Q + 2Q^2 + ... + 2Q^(terms-2) + Q^(terms-1)`.
pub fn cayley_neumann(q: &Tensor, terms: usize) -> Result<Tensor> {
    let mut r = identities(q)?;
    if terms > 1 {
        r = (r + (q * 2.0)?)?;
        if terms > 2 {
            let mut power = q.matmul(q)?;
            r = (r + (&power * 2.0)?)?;
            for _ in 3..terms.saturating_sub(1) {
                power = power.matmul(q)?;
                r = (r + (&power * 2.0)?)?;
            }
            power = power.matmul(q)?;
            r = (r + power)?;
        }
    }
    Ok(r)
}

/// COFT's projection (HF PEFT's `_project_batch`): each row of `vectors` `[blocks, b (b - 1) / 2]` whose
/// skew-symmetric matrix has a Frobenius norm above `eps / sqrt(blocks)` is scaled down to that norm; the others
/// are kept. Not differentiable (HF PEFT runs it under `no_grad`).
pub fn project_coft(vectors: &Tensor, eps: f64) -> Result<Tensor> {
    let blocks = vectors.dim(0)?;
    // As HF PEFT: the radius in float32, eps * 1 / sqrt(blocks).
    let radius = eps as f32 * (1.0 / (blocks as f32).sqrt());
    let rows = vectors.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let projected: Vec<f32> = rows
        .into_iter()
        .flat_map(|row| {
            // Each vector entry appears twice in the matrix (q and -q).
            let norm = (2.0 * row.iter().map(|v| v * v).sum::<f32>()).sqrt();
            let keep = norm <= radius;
            row.into_iter()
                .map(move |v| if keep { v } else { radius * (v / norm) })
        })
        .collect();
    Ok(Tensor::from_vec(projected, vectors.dims(), vectors.device())?.to_dtype(vectors.dtype())?)
}

/// The inverses of the blocks `r` `[blocks, b, b]` (Gauss-Jordan with partial pivoting in f64; no gradient),
/// for unmerging, as HF PEFT takes `linalg.inv` of the rotation (the series is only nearly orthogonal). An error
/// names a block that cannot be inverted.
pub fn invert_blocks(r: &Tensor) -> Result<Tensor> {
    let (blocks, b, _) = r.dims3()?;
    let values = r.to_dtype(DType::F64)?.to_vec3::<f64>()?;
    let mut out = Vec::with_capacity(blocks * b * b);
    for (index, block) in values.into_iter().enumerate() {
        let mut a: Vec<Vec<f64>> = block;
        let mut inv: Vec<Vec<f64>> = (0..b)
            .map(|i| (0..b).map(|j| f64::from(u8::from(i == j))).collect())
            .collect();
        for k in 0..b {
            let p = (k..b)
                .max_by(|&x, &y| a[x][k].abs().total_cmp(&a[y][k].abs()))
                .expect("k < b");
            if a[p][k].abs() < 1e-12 {
                return Err(peft_core::PeftError::Unsupported(format!(
                    "OFT block {index} of the rotation is singular, so the merged weight cannot be restored"
                )));
            }
            a.swap(k, p);
            inv.swap(k, p);
            let pivot = a[k][k];
            for j in 0..b {
                a[k][j] /= pivot;
                inv[k][j] /= pivot;
            }
            for i in (0..b).filter(|&i| i != k) {
                let f = a[i][k];
                if f != 0.0 {
                    for j in 0..b {
                        a[i][j] -= f * a[k][j];
                        inv[i][j] -= f * inv[k][j];
                    }
                }
            }
        }
        out.extend(inv.into_iter().flatten());
    }
    Ok(Tensor::from_vec(out, (blocks, b, b), r.device())?.to_dtype(r.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn skew_matrices_follow_torch_triu_order_and_read_back() {
        let dev = Device::Cpu;
        let skew = Skew::new(3, &dev).unwrap();
        let v = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
        let m = skew.matrices(&v).unwrap();
        assert_eq!(
            m.get(0).unwrap().to_vec2::<f32>().unwrap(),
            [[0., 1., 2.], [-1., 0., 3.], [-2., -3., 0.]]
        );
        assert_eq!(
            skew.vectors(&m).unwrap().to_vec2::<f32>().unwrap(),
            v.to_vec2::<f32>().unwrap()
        );
        // Blocks of size 1 have no parameters and no rotation.
        let one = Skew::new(1, &dev).unwrap();
        let empty = Tensor::zeros((4, 0), DType::F32, &dev).unwrap();
        assert_eq!(one.matrices(&empty).unwrap().dims(), [4, 1, 1]);
    }

    #[test]
    fn the_series_terms_are_hf_peft_s() {
        let dev = Device::Cpu;
        let skew = Skew::new(2, &dev).unwrap();
        // Q = [[0, a], [-a, 0]]: Q^2 = -a^2 I, Q^3 = -a^2 Q, Q^4 = a^4 I.
        let a = 0.5f32;
        let q = skew.matrices(&Tensor::new(&[[a]], &dev).unwrap()).unwrap();
        let at = |t: Tensor| t.get(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(at(cayley_neumann(&q, 1).unwrap()), [[1., 0.], [0., 1.]]);
        assert_eq!(
            at(cayley_neumann(&q, 2).unwrap()),
            [[1., 2. * a], [-2. * a, 1.]]
        );
        let three = at(cayley_neumann(&q, 3).unwrap());
        assert_eq!(three, at(cayley_neumann(&q, 4).unwrap()));
        // I + 2Q + 2Q^2 + Q^3.
        let d = 1. - 2. * a * a;
        let o = 2. * a - a * a * a;
        assert_eq!(three, [[d, o], [-o, d]]);
        // I + 2Q + 2Q^2 + 2Q^3 + Q^4.
        let d5 = 1. - 2. * a * a + a.powi(4);
        let o5 = 2. * a - 2. * a.powi(3);
        let five = at(cayley_neumann(&q, 5).unwrap());
        assert!(
            (five[0][0] - d5).abs() < 1e-6 && (five[0][1] - o5).abs() < 1e-6,
            "{five:?}"
        );
    }

    #[test]
    fn exact_blocks_are_orthogonal_and_inverted_back() {
        let dev = Device::Cpu;
        let b = 6;
        let skew = Skew::new(b, &dev).unwrap();
        let v = (Tensor::arange(0f32, (3 * skew_len(b)) as f32, &dev).unwrap() * 0.37)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((3, skew_len(b)))
            .unwrap();
        let r = cayley_exact(&skew.matrices(&v).unwrap()).unwrap();
        let eye = identities(&r).unwrap();
        let rrt = r.matmul(&r.transpose(1, 2).unwrap()).unwrap();
        assert!(max_abs(&(rrt - &eye).unwrap()) < 1e-5);
        let inv = invert_blocks(&r).unwrap();
        assert!(max_abs(&(r.matmul(&inv).unwrap() - &eye).unwrap()) < 1e-5);
        assert!(max_abs(&(inv - r.transpose(1, 2).unwrap()).unwrap()) < 1e-5);
    }

    #[test]
    fn coft_scales_large_blocks_to_the_radius_and_keeps_small_ones() {
        let dev = Device::Cpu;
        // Two blocks of size 2 (one parameter each): radius 1 / sqrt(2); Frobenius norm sqrt(2) |q|.
        let v = Tensor::new(&[[0.1f32], [3.0]], &dev).unwrap();
        let p = project_coft(&v, 1.0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(p[0], [0.1]);
        assert!((p[1][0] - 0.5).abs() < 1e-6, "{p:?}");
    }
}
