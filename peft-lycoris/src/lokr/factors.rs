//! LoKr's factors of one linear module and their product, HF PEFT's `make_kron` without the scale:
//! `kron(w1, w2)`, where `w1` (`[out_l, in_m]`) and `w2` (`[out_k, in_n]`) are each a full matrix
//! (`lokr_w1`, `lokr_w2`) or a rank-`r` product (`lokr_w1_a @ lokr_w1_b`, `lokr_w2_a @ lokr_w2_b`).
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use peft_lycoris::{Factors, KronFactor, KronFactors};
//! let v = |t: Tensor| Var::from_tensor(&t).unwrap();
//! let f = KronFactors {
//!     w1: KronFactor::Full(v(Tensor::new(&[[1f32, 2.]], &Device::Cpu).unwrap())),   // [1, 2]
//!     w2: KronFactor::Full(v(Tensor::new(&[[1f32], [10.]], &Device::Cpu).unwrap())), // [2, 1]
//! };
//! let w = f.product(&|v: &Var| v.as_tensor().clone()).unwrap();
//! assert_eq!(w.to_vec2::<f32>().unwrap(), [[1., 2.], [10., 20.]]); // [2, 2]: w1[i, k] * w2[j, l]
//! ```

use candle_core::{Device, Tensor, Var};
use peft_core::Result;
use rand::rngs::StdRng;

use crate::shared::adapter::Factors;
use crate::shared::init::factor;

/// One side of the Kronecker product.
#[derive(Debug)]
pub enum KronFactor {
    /// A full matrix (`lokr_w1` / `lokr_w2`).
    Full(Var),
    /// A rank-`r` product `a @ b` (`lokr_w1_a` `[rows, r]`, `lokr_w1_b` `[r, cols]`, or the `w2` pair).
    Decomposed {
        /// `[rows, r]`.
        a: Var,
        /// `[r, cols]`.
        b: Var,
    },
}

impl KronFactor {
    fn matrix(&self, read: &dyn Fn(&Var) -> Tensor) -> Result<Tensor> {
        Ok(match self {
            KronFactor::Full(w) => read(w),
            KronFactor::Decomposed { a, b } => read(a).matmul(&read(b))?,
        })
    }

    fn named(
        &self,
        full: &'static str,
        a: &'static str,
        b: &'static str,
    ) -> Vec<(&'static str, &Var)> {
        match self {
            KronFactor::Full(w) => vec![(full, w)],
            KronFactor::Decomposed { a: va, b: vb } => vec![(a, va), (b, vb)],
        }
    }
}

/// The two sides of one module's update.
#[derive(Debug)]
pub struct KronFactors {
    /// The left side, `[out_l, in_m]`.
    pub w1: KronFactor,
    /// The right side, `[out_k, in_n]`.
    pub w2: KronFactor,
}

/// How each side starts, as HF PEFT's `init_weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KronInit {
    /// `true`: `w1` (or `w1_a`) zero, the rest kaiming-uniform, so the update starts at zero.
    NoOp,
    /// `"lycoris"`: `w2` (or `w2_b`) zero, the rest kaiming-uniform (the LyCORIS repository's way).
    Lycoris,
    /// `false`: every factor kaiming-uniform (the update starts non-zero).
    Random,
    /// All zeros: a saved adapter, whose values come from its file.
    Zeros,
}

/// The shape of one side and whether it is decomposed at rank `r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Side {
    pub rows: usize,
    pub cols: usize,
    pub decomposed: bool,
}

impl KronFactors {
    /// Factors with sides `w1` and `w2` at rank `r`.
    pub(crate) fn new(
        w1: Side,
        w2: Side,
        r: usize,
        how: KronInit,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        use KronInit::*;
        // Which factor of each side starts at zero: (full, a, b).
        let zero_w1 = (how == NoOp, how == NoOp, false);
        let zero_w2 = (how == Lycoris, false, how == Lycoris);
        let mut side = |s: Side, zero: (bool, bool, bool)| -> Result<KronFactor> {
            let drawn = |z: bool| how != Zeros && !z;
            Ok(if s.decomposed {
                let a = factor(s.rows, r, drawn(zero.1), rng, device)?;
                let b = factor(r, s.cols, drawn(zero.2), rng, device)?;
                KronFactor::Decomposed {
                    a: Var::from_tensor(&a)?,
                    b: Var::from_tensor(&b)?,
                }
            } else {
                KronFactor::Full(Var::from_tensor(&factor(
                    s.rows,
                    s.cols,
                    drawn(zero.0),
                    rng,
                    device,
                )?)?)
            })
        };
        let w1 = side(w1, zero_w1)?;
        let w2 = side(w2, zero_w2)?;
        Ok(KronFactors { w1, w2 })
    }
}

/// `kron(a, b)` for matrices: `[a_rows * b_rows, a_cols * b_cols]`, element `(i b_rows + j, k b_cols + l)` =
/// `a[i, k] b[j, l]` (differentiable: a broadcast product and reshapes).
pub fn kron(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ar, ac) = a.dims2()?;
    let (br, bc) = b.dims2()?;
    let outer = a
        .reshape((ar, 1, ac, 1))?
        .broadcast_mul(&b.reshape((1, br, 1, bc))?)?;
    Ok(outer.reshape((ar * br, ac * bc))?)
}

impl Factors for KronFactors {
    fn named(&self) -> Vec<(&'static str, &Var)> {
        let mut named = self.w1.named("lokr_w1", "lokr_w1_a", "lokr_w1_b");
        named.extend(self.w2.named("lokr_w2", "lokr_w2_a", "lokr_w2_b"));
        named
    }

    fn product(&self, read: &dyn Fn(&Var) -> Tensor) -> Result<Tensor> {
        kron(&self.w1.matrix(read)?, &self.w2.matrix(read)?.contiguous()?)
    }
}
