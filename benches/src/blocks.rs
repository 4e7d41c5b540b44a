//! The building blocks every method's time is made of: the frozen projection op, scaled dot-product attention,
//! and one transformer block (a one-layer small model) forward and backward.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use peft_core::frozen::FrozenLinear;
use peft_core::grad::no_grad;
use peft_core::hooks::{Ctx, Hooks};
use peft_core::model::{BaseModel, Batch};
use peft_core::quantized::QuantizedWeight;
use peft_core::PeftError;
use peft_models::attention::{attend, causal_bias};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::models::{random_ids, small_gpt2, small_llama, SMALL_HIDDEN, SMALL_VOCAB};

/// A seeded N(0, 1) tensor (candle's own `randn` is not seeded).
fn seeded(shape: &[usize], seed: u64) -> peft_core::Result<Tensor> {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = rand_distr::StandardNormal;
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.sample::<f32, _>(normal)).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// A frozen projection `[out, in]` with a bias, and an input `[rows, in]` to run through it.
pub struct FrozenLinearCase {
    name: &'static str,
    layer: FrozenLinear,
    x: Var,
}

impl FrozenLinearCase {
    /// GPT-2 small's fused query/key/value projection on a batch of 4 x 128 tokens:
    /// x `[512, 768]` @ W `[2304, 768]`^T + b.
    pub fn gpt2_small() -> peft_core::Result<Self> {
        Self::new("gpt2-small-c_attn", 4 * 128, 768, 3 * 768)
    }

    /// The small bench model's query/key/value projection on its batch of 4 x 64 tokens:
    /// x `[256, 256]` @ W `[768, 256]`^T + b.
    pub fn small() -> peft_core::Result<Self> {
        Self::new("small-c_attn", 4 * 64, SMALL_HIDDEN, 3 * SMALL_HIDDEN)
    }

    /// SmolLM2-135M's MLP up projection on the batch users train, 8 x 128 tokens: x `[1024, 576]` @ W
    /// `[1536, 576]`^T, the weight in f32 (`quantized` `None`) or kept in a GGUF block format, as a base loaded
    /// with `quantized = true` holds it (`smollm2-up_proj-q4_1`).
    pub fn smollm2_up_proj(quantized: Option<GgmlDType>) -> peft_core::Result<Self> {
        let name = match quantized {
            None => "smollm2-up_proj",
            Some(GgmlDType::Q4_1) => "smollm2-up_proj-q4_1",
            Some(GgmlDType::Q8_0) => "smollm2-up_proj-q8_0",
            Some(other) => {
                return Err(PeftError::Unsupported(format!(
                    "no bench case for {other:?}"
                )))
            }
        };
        let mut case = Self::new(name, 8 * 128, 576, 1536)?;
        if let Some(dtype) = quantized {
            let w = QuantizedWeight::new(QTensor::quantize(&case.layer.weight()?, dtype)?)?;
            case.layer = FrozenLinear::quantized(
                w,
                case.layer.bias().cloned(),
                &peft_kernels::frozen::FrozenGemm,
            );
        }
        Ok(case)
    }

    fn new(name: &'static str, rows: usize, d_in: usize, d_out: usize) -> peft_core::Result<Self> {
        let w = (seeded(&[d_out, d_in], 1)? * 0.02)?;
        let b = (seeded(&[d_out], 2)? * 0.02)?;
        Ok(FrozenLinearCase {
            name,
            layer: FrozenLinear::new(w, Some(b), &peft_kernels::frozen::FrozenGemm),
            x: Var::from_tensor(&seeded(&[rows, d_in], 3)?)?,
        })
    }

    /// The name in bench ids.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `x W^T + b` through the frozen op, on an input that tracks no gradient.
    pub fn forward(&self) -> peft_core::Result<Tensor> {
        self.layer.forward(&self.x.as_tensor().detach())
    }

    /// The same product through candle's own `matmul` and `broadcast_add` (what the frozen op replaces),
    /// for comparison.
    pub fn candle_forward(&self) -> peft_core::Result<Tensor> {
        let x = self.x.as_tensor().detach();
        let y = x.matmul(&self.layer.weight()?.t()?)?;
        Ok(match self.layer.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The forward pass on a tracked input, then the backward pass of `sum(y)`: the input gradient `[rows, in]`
    /// (the only one the op computes).
    pub fn forward_backward(&self) -> peft_core::Result<Tensor> {
        let y = self.layer.forward(self.x.as_tensor())?;
        let grads = y.sum_all()?.backward()?;
        grads
            .get(self.x.as_tensor())
            .cloned()
            .ok_or_else(|| PeftError::Unsupported("the frozen op gave no input gradient".into()))
    }
}

/// LLaMA's MLP block, `x + down(silu(gate(n)) * up(n))` with `n = rms_norm(x)`, on SmolLM2-135M's shape at 8 x
/// 128 tokens (x `[1024, 576]`, width 1536): composed of ops, each keeping its inputs for the backward, or as
/// the one op of [`peft_core::recompute`] that keeps only `x` and recomputes the rest in its backward, or (bf16
/// weights) as [`peft_kernels::residual_kept_bf16`], which keeps `x` and the gate / up outputs in bf16.
pub struct MlpBlockCase {
    x: Var,
    norm: Tensor,
    gate: FrozenLinear,
    up: FrozenLinear,
    down: FrozenLinear,
}

impl MlpBlockCase {
    /// SmolLM2-135M's MLP on 8 x 128 tokens, its weights in f32 or (mixed precision) bf16.
    pub fn smollm2(dtype: DType) -> peft_core::Result<Self> {
        let (rows, hidden, width) = (8 * 128, 576, 1536);
        let gemm = &peft_kernels::frozen::FrozenGemm;
        let weight = |shape: &[usize], seed| -> peft_core::Result<Tensor> {
            Ok((seeded(shape, seed)? * 0.04)?.to_dtype(dtype)?)
        };
        Ok(MlpBlockCase {
            x: Var::from_tensor(&seeded(&[rows, hidden], 1)?)?,
            norm: (seeded(&[hidden], 2)?.abs()? + 0.5)?,
            gate: FrozenLinear::new(weight(&[width, hidden], 3)?, None, gemm),
            up: FrozenLinear::new(weight(&[width, hidden], 4)?, None, gemm),
            down: FrozenLinear::new(weight(&[hidden, width], 5)?, None, gemm),
        })
    }

    fn norm(&self) -> peft_core::recompute::Inner {
        let norm = self.norm.clone();
        std::sync::Arc::new(move |x: &Tensor| peft_kernels::rms_norm(x, &norm, 1e-5))
    }

    fn inner(&self) -> peft_core::recompute::Inner {
        let (norm, gate, up) = (self.norm(), self.gate.clone(), self.up.clone());
        std::sync::Arc::new(move |x: &Tensor| {
            let n = norm(x)?;
            peft_kernels::silu_mul(&gate.forward(&n)?, &up.forward(&n)?)
        })
    }

    /// Forward and backward of `sum(y)` in the given form; the gradient of `x`.
    pub fn forward_backward(&self, form: MlpForm) -> peft_core::Result<Tensor> {
        let x = self.x.as_tensor();
        let y = match form {
            MlpForm::Recomputed => {
                peft_core::recompute::residual_recomputed(x, self.inner(), &self.down)?
            }
            MlpForm::KeptBf16 => {
                let act: peft_kernels::Activation =
                    std::sync::Arc::new(|w: &[Tensor]| peft_kernels::silu_mul(&w[0], &w[1]));
                let wide = [self.gate.clone(), self.up.clone()];
                peft_kernels::residual_kept_bf16(x, self.norm(), &wide, act, &self.down)?
            }
            MlpForm::Composed => (x + self.down.forward(&self.inner()(x)?)?)?,
        };
        let grads = y.sum_all()?.backward()?;
        grads
            .get(x)
            .cloned()
            .ok_or_else(|| PeftError::Unsupported("the block gave no input gradient".into()))
    }
}

/// How [`MlpBlockCase`] runs its block.
#[derive(Debug, Clone, Copy)]
pub enum MlpForm {
    /// One op keeping only the input, everything but the down product run again in the backward.
    Recomputed,
    /// One op keeping the input and the gate / up outputs in bf16 (the mixed-precision form).
    KeptBf16,
    /// candle's graph of the block's ops, every activation kept.
    Composed,
}

/// Queries, keys and values `[batch, heads, seq, head_dim]` of one causal self-attention, as variables.
pub struct AttentionCase {
    name: &'static str,
    q: Var,
    k: Var,
    v: Var,
    bias: Tensor,
    scale: f64,
}

impl AttentionCase {
    /// GPT-2 small's attention on 4 x 128 tokens: 12 heads of 64.
    pub fn gpt2_small() -> peft_core::Result<Self> {
        Self::new("gpt2-small", 4, 12, 12, 128, 64)
    }

    /// The small LLaMA's attention on its batch of 4 x 64 tokens: 4 query heads of 64 sharing 2 key/value heads.
    pub fn small() -> peft_core::Result<Self> {
        Self::new("llama-small", 4, 4, 2, 64, 64)
    }

    fn new(
        name: &'static str,
        batch: usize,
        heads: usize,
        kv_heads: usize,
        seq: usize,
        head_dim: usize,
    ) -> peft_core::Result<Self> {
        let mask = Tensor::ones((batch, seq), DType::F32, &Device::Cpu)?;
        Ok(AttentionCase {
            name,
            q: Var::from_tensor(&seeded(&[batch, heads, seq, head_dim], 4)?)?,
            k: Var::from_tensor(&seeded(&[batch, kv_heads, seq, head_dim], 5)?)?,
            v: Var::from_tensor(&seeded(&[batch, kv_heads, seq, head_dim], 6)?)?,
            bias: causal_bias(&mask, seq)?,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// The name in bench ids.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The attention output `[batch, seq, heads * head_dim]`, tracking no gradient.
    pub fn forward(&self) -> peft_core::Result<Tensor> {
        let (q, k, v) = (
            self.q.as_tensor().detach(),
            self.k.as_tensor().detach(),
            self.v.as_tensor().detach(),
        );
        Ok(attend(&q, &k, &v, None, &self.bias, self.scale, 0)?)
    }

    /// The forward pass on tracked queries, keys and values, then the backward pass of `sum(out)`: the
    /// gradients of q, k and v.
    pub fn forward_backward(&self) -> peft_core::Result<[Tensor; 3]> {
        let out = attend(
            self.q.as_tensor(),
            self.k.as_tensor(),
            self.v.as_tensor(),
            None,
            &self.bias,
            self.scale,
            0,
        )?;
        let grads = out.sum_all()?.backward()?;
        let get = |v: &Var| {
            grads
                .get(v.as_tensor())
                .cloned()
                .ok_or_else(|| PeftError::Unsupported("attention lost a gradient".into()))
        };
        Ok([get(&self.q)?, get(&self.k)?, get(&self.v)?])
    }
}

/// Adds a trainable `[hidden]` vector to every token embedding: the cheapest hook through which the loss's
/// gradient has to cross every layer (the input gradients of all frozen projections, attention and norms).
struct EmbeddingShift {
    shift: Var,
}

impl Hooks for EmbeddingShift {
    fn embeddings(&self, x: Tensor, _ctx: &mut Ctx) -> peft_core::Result<Tensor> {
        Ok(x.broadcast_add(&peft_core::grad::param(&self.shift))?)
    }
}

/// A one-layer small model (one transformer block between the embeddings and the final norm) on a batch of
/// 4 x 64 tokens.
pub struct BlockCase {
    name: &'static str,
    model: Box<dyn BaseModel>,
    batch: Batch,
    hooks: EmbeddingShift,
    probe: Tensor,
}

impl BlockCase {
    /// The small GPT-2's block (LayerNorm, fused QKV, GELU MLP).
    pub fn gpt2_small() -> peft_core::Result<Self> {
        Self::new("gpt2-small-1layer", Box::new(small_gpt2(1, 31)?))
    }

    /// The small LLaMA's block (RMSNorm, RoPE, grouped-query attention, SwiGLU).
    pub fn llama_small() -> peft_core::Result<Self> {
        Self::new("llama-small-1layer", Box::new(small_llama(1, 32)?))
    }

    fn new(name: &'static str, model: Box<dyn BaseModel>) -> peft_core::Result<Self> {
        let mut rng = StdRng::seed_from_u64(42);
        let ids: Vec<u32> = random_ids(&mut rng, 4 * 64, 3, SMALL_VOCAB);
        let ids = Tensor::from_vec(ids, (4, 64), &Device::Cpu)?;
        let mask = Tensor::ones((4, 64), DType::F32, &Device::Cpu)?;
        let shift = Var::zeros(SMALL_HIDDEN, DType::F32, &Device::Cpu)?;
        Ok(BlockCase {
            name,
            model,
            batch: Batch::new(ids, mask)?,
            hooks: EmbeddingShift { shift },
            probe: seeded(&[4, 64, SMALL_HIDDEN], 7)?,
        })
    }

    /// The name in bench ids.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The final hidden states `[4, 64, hidden]`, tracking no gradient.
    pub fn forward(&self) -> peft_core::Result<Tensor> {
        no_grad(|| Ok(self.model.forward(&self.batch, &self.hooks)?.hidden))
    }

    /// The forward pass, then the backward pass of `sum(hidden * probe)` (a fixed random weighting: the
    /// plain sum of normalised states has a zero gradient) down to the embeddings: the gradient of the
    /// embedding shift.
    pub fn forward_backward(&self) -> peft_core::Result<Tensor> {
        let hidden = self.model.forward(&self.batch, &self.hooks)?.hidden;
        let grads = (hidden * &self.probe)?.sum_all()?.backward()?;
        grads
            .get(self.hooks.shift.as_tensor())
            .cloned()
            .ok_or_else(|| PeftError::Unsupported("the block cut the gradient".into()))
    }
}
