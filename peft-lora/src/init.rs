//! Starting values of `lora_A` `[r, in]` and `lora_B` `[out, r]`, as HF PEFT draws them (the distributions,
//! not torch's random stream): `nn.Linear`'s default is kaiming-uniform with `a = sqrt(5)`, which is
//! U(-1/sqrt(fan_in), 1/sqrt(fan_in)). PiSSA and OLoRA instead take them from the frozen weight
//! ([`factors_from_base`]).

use candle_core::{Device, Tensor};
use peft_core::Result;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::config::LoraInit;
use crate::decompose::{randomized_top_singular, thin_qr, top_singular};
use crate::targets::Target;

/// `[rows, cols]` values drawn from U(-1/sqrt(cols), 1/sqrt(cols)): `nn.Linear(cols, rows)`'s weight init.
pub fn linear_default(
    rows: usize,
    cols: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Tensor> {
    let bound = 1.0 / (cols as f32).sqrt();
    let dist = Uniform::new(-bound, bound).expect("a finite, non-empty range");
    let values: Vec<f32> = (0..rows * cols).map(|_| dist.sample(rng)).collect();
    Ok(Tensor::from_vec(values, (rows, cols), device)?)
}

/// `[rows, cols]` values drawn from N(0, std^2).
pub fn normal(
    rows: usize,
    cols: usize,
    std: f32,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Tensor> {
    let dist = Normal::new(0.0, std).expect("a finite, positive standard deviation");
    let values: Vec<f32> = (0..rows * cols).map(|_| dist.sample(rng)).collect();
    Ok(Tensor::from_vec(values, (rows, cols), device)?)
}

/// `(A [r, in], B [out, r])` for one adapted module.
pub fn initial_pair(
    init: LoraInit,
    r: usize,
    in_features: usize,
    out_features: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let a = match init {
        LoraInit::KaimingUniform | LoraInit::Random => linear_default(r, in_features, rng, device)?,
        LoraInit::Gaussian => normal(r, in_features, 1.0 / r as f32, rng, device)?,
        LoraInit::Pissa { .. } | LoraInit::Olora => {
            return Err(peft_core::PeftError::Config(format!(
                "{init:?} takes its factors from the base weight (factors_from_base), not at random"
            )))
        }
    };
    let b = match init {
        LoraInit::Random => linear_default(out_features, r, rng, device)?,
        _ => Tensor::zeros((out_features, r), candle_core::DType::F32, device)?,
    };
    Ok((a, b))
}

/// `(A0 [r, in], B0 [out, r])` taken from the frozen weight `w` `[out, in]` of `target` by PiSSA or OLoRA
/// (HF PEFT's `pissa_init` / `olora_init`), for the update's `scale`:
/// - PiSSA: `A0 = sqrt(S/scale) V^T`, `B0 = U sqrt(S/scale)` over the top `r` singular triplets, so that
///   `scale B0 A0` is W's best rank-r part. `pissa_niter_K` draws its random test matrix from a seed fixed by
///   the module's name, so that the same base gives the same factors when a saved adapter is loaded again.
/// - OLoRA: `B0 = Q[:, :r]`, `A0 = R[:r]` of W's QR. HF PEFT factors the stored weight, which for GPT-2's
///   Conv1D is `[in, out]` (and then fails unless square); here it is always W `[out, in]`.
pub fn factors_from_base(
    init: LoraInit,
    w: &Tensor,
    target: &Target,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let expected = [target.out_features, target.in_features];
    if w.dims() != expected {
        return Err(peft_core::PeftError::ShapeMismatch {
            what: format!("`{}` weight", target.name),
            expected_from: "its LoRA target".into(),
            expected: expected.to_vec(),
            got_from: "the model".into(),
            got: w.dims().to_vec(),
        });
    }
    let w = w.to_dtype(candle_core::DType::F32)?;
    let r = target.r;
    match init {
        LoraInit::Pissa { niter } => {
            let top = match niter {
                None => top_singular(&w, r)?,
                Some(niter) => randomized_top_singular(&w, r, niter, name_seed(&target.name))?,
            };
            let root = (top.s / scale)?.sqrt()?;
            let a = top.vt.broadcast_mul(&root.unsqueeze(1)?)?;
            let b = top.u.broadcast_mul(&root.unsqueeze(0)?)?;
            Ok((a, b))
        }
        LoraInit::Olora => {
            let (q, r) = thin_qr(&w, r)?;
            Ok((r, q))
        }
        other => Err(peft_core::PeftError::Config(format!(
            "{other:?} draws its factors at random; only PiSSA and OLoRA take them from the base weight"
        ))),
    }
}

/// A seed fixed by a module's name (FNV-1a): the same on every run and machine.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, byte| {
        (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
