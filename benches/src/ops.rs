//! Each fused op of `peft_kernels` against the composed form it replaced (`peft_kernels::composed`), forward
//! and backward on GPT-2 small's shapes at a batch of 4 x 128 tokens: the before / after of one lever each.
//!
//! ```
//! use peft_benches::ops::{OpCase, Form};
//! let case = OpCase::gelu(2, 8).unwrap();
//! let fused = case.forward_backward(Form::Fused).unwrap();
//! let composed = case.forward_backward(Form::Composed).unwrap();
//! assert!(peft_core::compare::max_abs_diff(&fused, &composed).unwrap() < 1e-5);
//! ```

use candle_core::{DType, Device, Tensor, Var};
use peft_core::PeftError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The one-node custom op with its own backward.
    Fused,
    /// candle's differentiable primitives.
    Composed,
}

impl Form {
    /// The name in bench ids.
    pub fn name(self) -> &'static str {
        match self {
            Form::Fused => "fused",
            Form::Composed => "composed",
        }
    }
}

/// The op under measurement and its fixed inputs.
enum Op {
    Gelu {
        x: Var,
    },
    LayerNorm {
        x: Var,
        weight: Tensor,
        bias: Tensor,
    },
    Attention {
        q: Var,
        k: Var,
        v: Var,
        bias: Tensor,
        scale: f64,
    },
    CrossEntropy {
        logits: Var,
        targets: Vec<u32>,
    },
    Rotary {
        x: Var,
        cos: Tensor,
        sin: Tensor,
    },
    FrozenLowRank {
        x: Var,
        weight: Tensor,
        a: Var,
        b: Var,
    },
    SplitHeadsRotary {
        x: Var,
        heads: usize,
        head_dim: usize,
        cos: Tensor,
        sin: Tensor,
    },
}

/// One op on seeded inputs.
pub struct OpCase {
    name: String,
    op: Op,
}

fn seeded(shape: &[usize], seed: u64, std: f32) -> peft_core::Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| std * rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

impl OpCase {
    /// `gelu_new` on the MLP's inner activations `[rows, inner]` (GPT-2 small: 512 x 3072).
    pub fn gelu(rows: usize, inner: usize) -> peft_core::Result<Self> {
        Ok(OpCase {
            name: format!("gelu/{rows}x{inner}"),
            op: Op::Gelu {
                x: Var::from_tensor(&seeded(&[rows, inner], 1, 1.0)?)?,
            },
        })
    }

    /// LayerNorm over `[rows, hidden]` (GPT-2 small: 512 x 768), weight and bias frozen.
    pub fn layer_norm(rows: usize, hidden: usize) -> peft_core::Result<Self> {
        Ok(OpCase {
            name: format!("layer_norm/{rows}x{hidden}"),
            op: Op::LayerNorm {
                x: Var::from_tensor(&seeded(&[rows, hidden], 2, 1.0)?)?,
                weight: (seeded(&[hidden], 3, 0.1)? + 1.0)?,
                bias: seeded(&[hidden], 4, 0.1)?,
            },
        })
    }

    /// Causal attention of `heads` heads of `head_dim` over `seq` tokens, batch `batch` (GPT-2 small:
    /// 4 x 12 x 128 x 64).
    pub fn attention(
        batch: usize,
        heads: usize,
        seq: usize,
        head_dim: usize,
    ) -> peft_core::Result<Self> {
        let mask = Tensor::ones((batch, seq), DType::F32, &Device::Cpu)?;
        let shape = [batch, heads, seq, head_dim];
        Ok(OpCase {
            name: format!("attention/{batch}x{heads}x{seq}x{head_dim}"),
            op: Op::Attention {
                q: Var::from_tensor(&seeded(&shape, 5, 1.0)?)?,
                k: Var::from_tensor(&seeded(&shape, 6, 1.0)?)?,
                v: Var::from_tensor(&seeded(&shape, 7, 1.0)?)?,
                bias: peft_models::attention::causal_bias(&mask, seq)?,
                scale: (head_dim as f64).powf(-0.5),
            },
        })
    }

    /// Mean cross-entropy over `[rows, vocab]` logits (GPT-2 small's causal-LM loss: 512 x 50257).
    pub fn cross_entropy(rows: usize, vocab: usize) -> peft_core::Result<Self> {
        let mut rng = StdRng::seed_from_u64(8);
        Ok(OpCase {
            name: format!("cross_entropy/{rows}x{vocab}"),
            op: Op::CrossEntropy {
                logits: Var::from_tensor(&seeded(&[rows, vocab], 9, 2.0)?)?,
                targets: (0..rows)
                    .map(|_| rng.random_range(0..vocab as u32))
                    .collect(),
            },
        })
    }

    /// Rotary embeddings of `x` `[batch, heads, seq, head_dim]` by tables shared over the batch (SmolLM2's
    /// queries on 8 x 128 tokens: 8 x 9 x 128 x 64).
    pub fn rotary(
        batch: usize,
        heads: usize,
        seq: usize,
        head_dim: usize,
    ) -> peft_core::Result<Self> {
        let table = [1, 1, seq, head_dim];
        Ok(OpCase {
            name: format!("rotary/{batch}x{heads}x{seq}x{head_dim}"),
            op: Op::Rotary {
                x: Var::from_tensor(&seeded(&[batch, heads, seq, head_dim], 10, 1.0)?)?,
                cos: seeded(&table, 11, 0.5)?,
                sin: seeded(&table, 12, 0.5)?,
            },
        })
    }

    /// A projection's output `[batch, seq, heads * head_dim]` split into heads and rotated (SmolLM2's queries
    /// on 8 x 128 tokens: 8 x 128 x 9 x 64). Its composed form is the one it replaced: reshape, transpose and
    /// copy, then the rotary op.
    pub fn split_heads_rotary(
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
    ) -> peft_core::Result<Self> {
        let table = [1, 1, seq, head_dim];
        Ok(OpCase {
            name: format!("split_heads_rotary/{batch}x{seq}x{heads}x{head_dim}"),
            op: Op::SplitHeadsRotary {
                x: Var::from_tensor(&seeded(&[batch, seq, heads * head_dim], 13, 1.0)?)?,
                heads,
                head_dim,
                cos: seeded(&table, 14, 0.5)?,
                sin: seeded(&table, 15, 0.5)?,
            },
        })
    }

    /// A frozen projection with LoRA's update (rank 8, scale 2) inside, `x W^T + 2 x A^T B^T` (SmolLM2's
    /// query projection on 8 x 128 tokens: 1024 x 576 -> 576). Its composed form is the one it replaced: the
    /// frozen product op, the low-rank op and their sum.
    pub fn frozen_low_rank(rows: usize, d_in: usize, d_out: usize) -> peft_core::Result<Self> {
        Ok(OpCase {
            name: format!("frozen_low_rank/{rows}x{d_in}x{d_out}"),
            op: Op::FrozenLowRank {
                x: Var::from_tensor(&seeded(&[rows, d_in], 16, 1.0)?)?,
                weight: seeded(&[d_out, d_in], 17, 0.05)?,
                a: Var::from_tensor(&seeded(&[8, d_in], 18, 0.05)?)?,
                b: Var::from_tensor(&seeded(&[d_out, 8], 19, 0.05)?)?,
            },
        })
    }

    /// The op and its shape, as in bench ids.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn forward(&self, form: Form) -> peft_core::Result<(Tensor, Vec<&Var>)> {
        let fused = form == Form::Fused;
        Ok(match &self.op {
            Op::Gelu { x } => {
                let y = if fused {
                    peft_kernels::gelu_tanh(x.as_tensor())?
                } else {
                    x.as_tensor().gelu()?
                };
                (y, vec![x])
            }
            Op::LayerNorm { x, weight, bias } => {
                let f = if fused {
                    peft_kernels::layer_norm
                } else {
                    peft_kernels::composed::layer_norm
                };
                (f(x.as_tensor(), weight, Some(bias), 1e-5)?, vec![x])
            }
            Op::Attention {
                q,
                k,
                v,
                bias,
                scale,
            } => {
                let f = if fused {
                    peft_kernels::scaled_dot_product_attention
                } else {
                    peft_kernels::composed::scaled_dot_product_attention
                };
                let out = f(q.as_tensor(), k.as_tensor(), v.as_tensor(), bias, *scale)?;
                (out, vec![q, k, v])
            }
            Op::Rotary { x, cos, sin } => {
                let f = if fused {
                    peft_kernels::rotary
                } else {
                    peft_kernels::composed::rotary
                };
                (f(x.as_tensor(), cos, sin)?, vec![x])
            }
            Op::FrozenLowRank { x, weight, a, b } => {
                let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
                let y = if fused {
                    peft_kernels::frozen_low_rank(xt, weight, None, at, bt, 2.0)?.ok_or_else(
                        || PeftError::Unsupported("frozen_low_rank: not covered".into()),
                    )?
                } else {
                    (peft_kernels::frozen::frozen_affine(xt, weight, None)?
                        + peft_kernels::low_rank(xt, at, bt, 2.0)?)?
                };
                (y, vec![x, a, b])
            }
            Op::SplitHeadsRotary {
                x,
                heads,
                head_dim,
                cos,
                sin,
            } => {
                let x_ = x.as_tensor();
                let y = if fused {
                    peft_kernels::split_heads_rotary(x_, *heads, *head_dim, cos, sin)?
                } else {
                    let (b, t, _) = x_.dims3()?;
                    let split = x_
                        .reshape((b, t, *heads, *head_dim))?
                        .transpose(1, 2)?
                        .contiguous()?;
                    peft_kernels::rotary(&split, cos, sin)?
                };
                (y, vec![x])
            }
            Op::CrossEntropy { logits, targets } => {
                let f = if fused {
                    peft_kernels::cross_entropy
                } else {
                    peft_kernels::composed::cross_entropy
                };
                (f(logits.as_tensor(), targets)?, vec![logits])
            }
        })
    }

    /// The forward pass, then the backward pass of the sum of the output; returns the first input's gradient.
    pub fn forward_backward(&self, form: Form) -> peft_core::Result<Tensor> {
        let (y, inputs) = self.forward(form)?;
        let grads = y.sum_all()?.backward()?;
        grads
            .get(inputs[0].as_tensor())
            .cloned()
            .ok_or_else(|| PeftError::Unsupported(format!("{} lost its gradient", self.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_and_composed_agree_on_every_case() {
        for case in [
            OpCase::gelu(3, 40).unwrap(),
            OpCase::layer_norm(3, 40).unwrap(),
            OpCase::attention(2, 3, 5, 8).unwrap(),
            OpCase::cross_entropy(3, 40).unwrap(),
            OpCase::rotary(2, 3, 5, 8).unwrap(),
            OpCase::split_heads_rotary(2, 5, 3, 8).unwrap(),
            OpCase::frozen_low_rank(6, 10, 7).unwrap(),
        ] {
            let a = case.forward_backward(Form::Fused).unwrap();
            let b = case.forward_backward(Form::Composed).unwrap();
            let diff = peft_core::compare::max_abs_diff(&a, &b).unwrap();
            assert!(diff < 1e-4, "{}: gradients differ by {diff}", case.name());
        }
    }
}
