//! HF PEFT's `PrefixEncoder`: the trainable values behind the flat prefix rows, in one of two forms.
//!
//! *Folded*: an embedding `[num_virtual_tokens, num_layers * 2 * token_dim]` that is the prefix itself (P-tuning
//! v2, and every prefix loaded for inference). *Projected* (`prefix_projection = true` while training): an
//! embedding `[num_virtual_tokens, token_dim]` through `Linear(token_dim, encoder_hidden_size) -> Tanh ->
//! Linear(encoder_hidden_size, num_layers * 2 * token_dim)`. HF PEFT saves the projected form's output for all
//! virtual tokens (folding the MLP away), so a saved prefix always has the folded shape.

use candle_core::{DType, Device, Tensor, Var};
use peft_core::grad::param;
use peft_core::Result;
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// The saved key of the (folded) prefix, as HF PEFT names it.
pub const PROMPT_KEY: &str = "prompt_embeddings";

/// Trainable names of the projected form: HF PEFT's parameter names inside `prompt_encoder` (without the
/// adapter name), in the order HF PEFT creates them.
pub const PROJECTED_NAMES: [&str; 5] = [
    "prompt_encoder.embedding.weight",
    "prompt_encoder.transform.0.weight",
    "prompt_encoder.transform.0.bias",
    "prompt_encoder.transform.2.weight",
    "prompt_encoder.transform.2.bias",
];

/// A linear layer `y = x W^T + b` with trainable `W [out, in]` and `b [out]`.
#[derive(Debug, Clone)]
pub struct Dense {
    /// `[out, in]`.
    pub weight: Var,
    /// `[out]`.
    pub bias: Var,
}

impl Dense {
    /// `torch.nn.Linear`'s default initialisation: weight and bias uniform in `+-1/sqrt(in)` (the weight's
    /// `kaiming_uniform_(a = sqrt(5))` reduces to that bound).
    fn torch_default(
        rng: &mut StdRng,
        input: usize,
        output: usize,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (input as f32).sqrt();
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        let weight = Tensor::from_vec(uniform(output * input), (output, input), device)?;
        let bias = Tensor::from_vec(uniform(output), output, device)?;
        Ok(Dense {
            weight: Var::from_tensor(&weight)?,
            bias: Var::from_tensor(&bias)?,
        })
    }

    /// Zero weight and bias (HF PEFT's `init_weights = "zero"` for the last layer).
    fn zeros(input: usize, output: usize, device: &Device) -> Result<Self> {
        Ok(Dense {
            weight: Var::zeros((output, input), DType::F32, device)?,
            bias: Var::zeros(output, DType::F32, device)?,
        })
    }

    /// `x W^T + b` over rows `[n, in]`, using output rows `start..start + len` only.
    fn forward_rows(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let w = param(&self.weight).narrow(0, start, len)?;
        let b = param(&self.bias).narrow(0, start, len)?;
        Ok(x.matmul(&w.t()?)?.broadcast_add(&b)?)
    }
}

/// The prefix encoder in its folded or projected form.
#[derive(Debug, Clone)]
pub enum PrefixEncoder {
    /// The prefix rows themselves, `[num_virtual_tokens, num_layers * 2 * token_dim]`.
    Folded {
        /// The flat prefix rows.
        embedding: Var,
    },
    /// Embedding `[num_virtual_tokens, token_dim]` -> dense -> tanh -> output.
    Projected {
        /// `[num_virtual_tokens, token_dim]`.
        embedding: Var,
        /// `Linear(token_dim, encoder_hidden_size)`.
        dense: Dense,
        /// `Linear(encoder_hidden_size, num_layers * 2 * token_dim)`.
        output: Dense,
    },
}

/// How the encoder starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// As PyTorch initialises: embeddings N(0, 1), linear layers uniform in `+-1/sqrt(fan_in)`.
    Random,
    /// HF PEFT's `init_weights = "zero"`: the prefix (or the last projection) is zero.
    Zero,
    /// Zeros, to be overwritten by saved tensors (HF PEFT does not initialise for inference either).
    ForLoading,
}

/// Sizes of an encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderShape {
    /// Virtual tokens.
    pub num_virtual_tokens: usize,
    /// Key/value width per layer (`kv_heads * head_dim`).
    pub token_dim: usize,
    /// Transformer layers.
    pub num_layers: usize,
    /// Hidden size of the projection MLP.
    pub encoder_hidden_size: usize,
}

impl EncoderShape {
    /// Width of one flat prefix row: `num_layers * 2 * token_dim`.
    pub fn flat_width(&self) -> usize {
        self.num_layers * 2 * self.token_dim
    }

    /// Shape of the folded prefix (and of the saved tensor).
    pub fn folded_dims(&self) -> [usize; 2] {
        [self.num_virtual_tokens, self.flat_width()]
    }
}

fn normal(rng: &mut StdRng, rows: usize, cols: usize, device: &Device) -> Result<Var> {
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| StandardNormal.sample(&mut *rng))
        .collect();
    Ok(Var::from_tensor(&Tensor::from_vec(
        values,
        (rows, cols),
        device,
    )?)?)
}

impl PrefixEncoder {
    /// A folded encoder (the prefix rows themselves).
    pub fn folded(
        shape: EncoderShape,
        start: Start,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        let [n, width] = shape.folded_dims();
        let embedding = match start {
            Start::Random => normal(rng, n, width, device)?,
            Start::Zero | Start::ForLoading => Var::zeros((n, width), DType::F32, device)?,
        };
        Ok(PrefixEncoder::Folded { embedding })
    }

    /// A projected encoder, drawn in HF PEFT's order: embedding, first linear layer, last linear layer.
    pub fn projected(
        shape: EncoderShape,
        start: Start,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        let (n, td, hidden) = (
            shape.num_virtual_tokens,
            shape.token_dim,
            shape.encoder_hidden_size,
        );
        if start == Start::ForLoading {
            return Ok(PrefixEncoder::Projected {
                embedding: Var::zeros((n, td), DType::F32, device)?,
                dense: Dense::zeros(td, hidden, device)?,
                output: Dense::zeros(hidden, shape.flat_width(), device)?,
            });
        }
        let embedding = normal(rng, n, td, device)?;
        let dense = Dense::torch_default(rng, td, hidden, device)?;
        let output = match start {
            Start::Zero => Dense::zeros(hidden, shape.flat_width(), device)?,
            _ => Dense::torch_default(rng, hidden, shape.flat_width(), device)?,
        };
        Ok(PrefixEncoder::Projected {
            embedding,
            dense,
            output,
        })
    }

    /// Whether this is the folded form.
    pub fn is_folded(&self) -> bool {
        matches!(self, PrefixEncoder::Folded { .. })
    }

    /// Columns `start..start + len` of the flat prefix rows, `[num_virtual_tokens, len]`: a slice of the
    /// folded rows, or the projection computed for those output columns only.
    pub fn columns(&self, start: usize, len: usize) -> Result<Tensor> {
        match self {
            PrefixEncoder::Folded { embedding } => Ok(param(embedding).narrow(1, start, len)?),
            PrefixEncoder::Projected {
                embedding,
                dense,
                output,
            } => {
                let e = param(embedding);
                let h = dense.forward_rows(&e, 0, dense.weight.dim(0)?)?.tanh()?;
                output.forward_rows(&h, start, len)
            }
        }
    }

    /// All flat prefix rows `[num_virtual_tokens, num_layers * 2 * token_dim]`: what HF PEFT saves.
    pub fn rows(&self) -> Result<Tensor> {
        match self {
            PrefixEncoder::Folded { embedding } => Ok(embedding.as_tensor().clone()),
            PrefixEncoder::Projected { output, .. } => {
                let width = output.weight.dim(0)?;
                Ok(peft_core::grad::no_grad(|| self.columns(0, width))?.detach())
            }
        }
    }

    /// Trainable variables by name: `prompt_embeddings` for the folded form (HF PEFT's saved key), HF PEFT's
    /// `prompt_encoder` parameter names for the projected form.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        match self {
            PrefixEncoder::Folded { embedding } => {
                vec![(PROMPT_KEY.to_string(), embedding.clone())]
            }
            PrefixEncoder::Projected {
                embedding,
                dense,
                output,
            } => {
                let vars = [
                    embedding,
                    &dense.weight,
                    &dense.bias,
                    &output.weight,
                    &output.bias,
                ];
                PROJECTED_NAMES
                    .iter()
                    .zip(vars)
                    .map(|(name, var)| (name.to_string(), var.clone()))
                    .collect()
            }
        }
    }
}
