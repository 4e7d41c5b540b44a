//! Starting values of `lora_A` `[r, in]` and `lora_B` `[out, r]`, as HF PEFT draws them (the distributions,
//! not torch's random stream): `nn.Linear`'s default is kaiming-uniform with `a = sqrt(5)`, which is
//! U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

use candle_core::{Device, Tensor};
use peft_core::Result;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::config::LoraInit;

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
    };
    let b = match init {
        LoraInit::Random => linear_default(out_features, r, rng, device)?,
        LoraInit::KaimingUniform | LoraInit::Gaussian => {
            Tensor::zeros((out_features, r), candle_core::DType::F32, device)?
        }
    };
    Ok((a, b))
}
