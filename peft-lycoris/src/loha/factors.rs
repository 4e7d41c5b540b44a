//! LoHa's factors of one linear module and their product, HF PEFT's `make_weight` without the scale:
//! `(w1_a w1_b) ⊙ (w2_a w2_b)`.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use peft_lycoris::{Factors, HadaFactors};
//! let v = |rows: &[[f32; 2]; 2]| Var::from_tensor(&Tensor::new(rows, &Device::Cpu).unwrap()).unwrap();
//! let f = HadaFactors { w1_a: v(&[[1., 0.], [0., 1.]]), w1_b: v(&[[2., 3.], [4., 5.]]),
//!                       w2_a: v(&[[1., 1.], [0., 1.]]), w2_b: v(&[[1., 0.], [0., 2.]]) };
//! let w = f.product(&|v: &Var| v.as_tensor().clone()).unwrap();
//! assert_eq!(w.to_vec2::<f32>().unwrap(), [[2., 6.], [0., 10.]]); // [[2,3],[4,5]] ⊙ [[1,2],[0,2]]
//! ```

use candle_core::{Device, Tensor, Var};
use peft_core::Result;
use rand::rngs::StdRng;

use crate::shared::adapter::Factors;
use crate::shared::init::factor;

/// The four trainable factors of one module, with HF PEFT's shapes for a linear layer.
#[derive(Debug)]
pub struct HadaFactors {
    /// `hada_w1_a`, `[out, r]`.
    pub w1_a: Var,
    /// `hada_w1_b`, `[r, in]`.
    pub w1_b: Var,
    /// `hada_w2_a`, `[out, r]`.
    pub w2_a: Var,
    /// `hada_w2_b`, `[r, in]`.
    pub w2_b: Var,
}

/// How LoHa's factors start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HadaInit {
    /// HF's `init_weights = true`: kaiming-uniform, except `hada_w2_b` zero, so the update starts at zero.
    NoOp,
    /// `init_weights = false`: all four kaiming-uniform (the update starts non-zero).
    Random,
    /// All zeros: a saved adapter, whose values come from its file.
    Zeros,
}

impl HadaFactors {
    /// Factors for an `out x in` module at rank `r`.
    pub(crate) fn new(
        out: usize,
        inp: usize,
        r: usize,
        how: HadaInit,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        let drawn = how != HadaInit::Zeros;
        // HF's order: w1_a, w1_b, w2_a, w2_b.
        let w1_a = factor(out, r, drawn, rng, device)?;
        let w1_b = factor(r, inp, drawn, rng, device)?;
        let w2_a = factor(out, r, drawn, rng, device)?;
        let w2_b = factor(r, inp, how == HadaInit::Random, rng, device)?;
        Ok(HadaFactors {
            w1_a: Var::from_tensor(&w1_a)?,
            w1_b: Var::from_tensor(&w1_b)?,
            w2_a: Var::from_tensor(&w2_a)?,
            w2_b: Var::from_tensor(&w2_b)?,
        })
    }
}

impl Factors for HadaFactors {
    fn named(&self) -> Vec<(&'static str, &Var)> {
        vec![
            ("hada_w1_a", &self.w1_a),
            ("hada_w1_b", &self.w1_b),
            ("hada_w2_a", &self.w2_a),
            ("hada_w2_b", &self.w2_b),
        ]
    }

    fn product(&self, read: &dyn Fn(&Var) -> Tensor) -> Result<Tensor> {
        let w1 = read(&self.w1_a).matmul(&read(&self.w1_b))?;
        let w2 = read(&self.w2_a).matmul(&read(&self.w2_b))?;
        Ok((w1 * w2)?)
    }
}
