//! HF PEFT's `PromptEncoder`, the network P-tuning trains: an embedding of the virtual tokens reparameterised
//! by an MLP (`Linear ReLU Linear ReLU Linear`) or by a bidirectional LSTM followed by `Linear ReLU Linear`.
//! Built from differentiable candle ops (candle-nn's LSTM is one-directional and single-layer), initialised as
//! PyTorch initialises these modules, with parameters named as the torch module's state dict names them
//! (`embedding.weight`, `mlp_head.0.weight`, `lstm_head.weight_ih_l0_reverse`, ...).

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use peft_core::grad::param;
use peft_core::{PeftError, Result};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// How the prompt encoder reparameterises the virtual-token embeddings (HF PEFT's
/// `PromptEncoderReparameterizationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PromptEncoderReparameterizationType {
    /// `Linear(d, h) ReLU Linear(h, h) ReLU Linear(h, d)` (HF PEFT's default and recommendation).
    #[default]
    #[serde(rename = "MLP")]
    Mlp,
    /// A bidirectional LSTM (`encoder_num_layers` layers, hidden `h`), then `Linear(2h, 2h) ReLU Linear(2h, d)`.
    #[serde(rename = "LSTM")]
    Lstm,
}

/// Values uniform in `[-bound, bound)`, PyTorch's init of `Linear` and `LSTM` parameters.
fn uniform(shape: &[usize], bound: f64, rng: &mut StdRng, device: &Device) -> Result<Var> {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Ok(Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?)
}

/// `torch.nn.Linear`: `y = x W^T + b`, both trainable.
#[derive(Debug)]
struct Dense {
    weight: Var,
    bias: Var,
}

impl Dense {
    /// PyTorch's default init: weight and bias uniform in `±1/sqrt(in)`.
    fn new(input: usize, output: usize, rng: &mut StdRng, device: &Device) -> Result<Self> {
        let bound = 1.0 / (input as f64).sqrt();
        Ok(Dense {
            weight: uniform(&[output, input], bound, rng, device)?,
            bias: uniform(&[output], bound, rng, device)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&param(&self.weight).t()?)?
            .broadcast_add(&param(&self.bias))?)
    }

    fn named(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        out.push((format!("{prefix}.weight"), self.weight.clone()));
        out.push((format!("{prefix}.bias"), self.bias.clone()));
    }
}

/// One direction of one LSTM layer, with torch's gate order (input, forget, cell, output).
#[derive(Debug)]
struct LstmCell {
    /// `[4h, in]`.
    weight_ih: Var,
    /// `[4h, h]`.
    weight_hh: Var,
    /// `[4h]`.
    bias_ih: Var,
    /// `[4h]`.
    bias_hh: Var,
}

/// `sigmoid(x) = (tanh(x / 2) + 1) / 2`: exact, and built from ops that all have a backward.
fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(((x * 0.5)?.tanh()? * 0.5)?.affine(1.0, 0.5)?)
}

impl LstmCell {
    fn new(input: usize, hidden: usize, rng: &mut StdRng, device: &Device) -> Result<Self> {
        // torch.nn.LSTM initialises every parameter uniform in ±1/sqrt(hidden).
        let bound = 1.0 / (hidden as f64).sqrt();
        Ok(LstmCell {
            weight_ih: uniform(&[4 * hidden, input], bound, rng, device)?,
            weight_hh: uniform(&[4 * hidden, hidden], bound, rng, device)?,
            bias_ih: uniform(&[4 * hidden], bound, rng, device)?,
            bias_hh: uniform(&[4 * hidden], bound, rng, device)?,
        })
    }

    /// Hidden states `[seq, h]` of a `[seq, in]` sequence read forwards, or backwards when `reverse` (the
    /// output row `t` is always the state after reading position `t`), from zero initial states.
    fn run(&self, x: &Tensor, reverse: bool) -> Result<Tensor> {
        let seq = x.dim(0)?;
        let hidden = self.weight_hh.dim(1)?;
        // The input projections of every position at once; only the recurrent part is sequential.
        let projected = x
            .matmul(&param(&self.weight_ih).t()?)?
            .broadcast_add(&(param(&self.bias_ih) + param(&self.bias_hh))?)?;
        let w_hh_t = param(&self.weight_hh).t()?;
        let mut h = Tensor::zeros((1, hidden), DType::F32, x.device())?;
        let mut c = h.clone();
        let mut outputs = vec![None; seq];
        let order: Vec<usize> = if reverse {
            (0..seq).rev().collect()
        } else {
            (0..seq).collect()
        };
        for t in order {
            let gates = (projected.i(t..t + 1)? + h.matmul(&w_hh_t)?)?;
            let input_gate = sigmoid(&gates.narrow(1, 0, hidden)?)?;
            let forget_gate = sigmoid(&gates.narrow(1, hidden, hidden)?)?;
            let cell_gate = gates.narrow(1, 2 * hidden, hidden)?.tanh()?;
            let output_gate = sigmoid(&gates.narrow(1, 3 * hidden, hidden)?)?;
            c = ((forget_gate * &c)? + (input_gate * cell_gate)?)?;
            h = (output_gate * c.tanh()?)?;
            outputs[t] = Some(h.clone());
        }
        let outputs: Vec<Tensor> = outputs.into_iter().flatten().collect();
        Ok(Tensor::cat(&outputs, 0)?)
    }

    fn named(&self, layer: usize, suffix: &str, out: &mut Vec<(String, Var)>) {
        let p = "lstm_head";
        for (name, var) in [
            ("weight_ih", &self.weight_ih),
            ("weight_hh", &self.weight_hh),
            ("bias_ih", &self.bias_ih),
            ("bias_hh", &self.bias_hh),
        ] {
            out.push((format!("{p}.{name}_l{layer}{suffix}"), var.clone()));
        }
    }
}

/// `torch.nn.LSTM(bidirectional=True, batch_first=True)` over one sequence, without dropout between layers.
#[derive(Debug)]
struct BiLstm {
    /// `(forward, backward)` cells per layer; layer `k > 0` reads the `2h` outputs of layer `k - 1`.
    layers: Vec<(LstmCell, LstmCell)>,
}

impl BiLstm {
    fn new(
        input: usize,
        hidden: usize,
        num_layers: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|k| {
                let input = if k == 0 { input } else { 2 * hidden };
                Ok((
                    LstmCell::new(input, hidden, rng, device)?,
                    LstmCell::new(input, hidden, rng, device)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(BiLstm { layers })
    }

    /// `[seq, 2h]`: forward and backward hidden states side by side, as torch returns them.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (forward, backward) in &self.layers {
            x = Tensor::cat(&[forward.run(&x, false)?, backward.run(&x, true)?], 1)?;
        }
        Ok(x)
    }

    fn named(&self, out: &mut Vec<(String, Var)>) {
        // torch lists each layer's forward direction, then its `_reverse` twin.
        for (k, (forward, backward)) in self.layers.iter().enumerate() {
            forward.named(k, "", out);
            backward.named(k, "_reverse", out);
        }
    }
}

/// What follows the embedding.
#[derive(Debug)]
enum Head {
    /// `mlp_head.{0,2,4}` with ReLUs between.
    Mlp([Dense; 3]),
    /// `lstm_head`, then `mlp_head.{0,2}` with a ReLU between.
    Lstm { lstm: BiLstm, mlp: [Dense; 2] },
}

/// The prompt encoder of P-tuning: `embedding` `[virtual_tokens, token_dim]` and its reparameterisation.
///
/// ```
/// use candle_core::Device;
/// use peft_prompt::{PromptEncoder, PromptEncoderReparameterizationType};
/// use rand::SeedableRng;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let kind = PromptEncoderReparameterizationType::Lstm;
/// let encoder = PromptEncoder::new(kind, 4, 8, 6, 2, &mut rng, &Device::Cpu).unwrap();
/// assert_eq!(encoder.forward().unwrap().dims(), &[4, 8]);
/// // embedding 4x8, two bidirectional layers, then Linear(12, 12) and Linear(12, 8).
/// let lstm = 2 * (4 * 6 * (8 + 6) + 8 * 6) + 2 * (4 * 6 * (12 + 6) + 8 * 6);
/// assert_eq!(encoder.num_parameters(), 4 * 8 + lstm + (12 * 12 + 12) + (12 * 8 + 8));
/// ```
#[derive(Debug)]
pub struct PromptEncoder {
    /// `[virtual_tokens, token_dim]`, standard normal at init (`torch.nn.Embedding`).
    embedding: Var,
    head: Head,
}

impl PromptEncoder {
    /// A freshly initialised encoder for `virtual_tokens` tokens of `token_dim` features, with `hidden`
    /// encoder features; `num_layers` is the LSTM's depth (the MLP always has three layers, as in HF PEFT).
    pub fn new(
        kind: PromptEncoderReparameterizationType,
        virtual_tokens: usize,
        token_dim: usize,
        hidden: usize,
        num_layers: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        let values: Vec<f32> = (0..virtual_tokens * token_dim)
            .map(|_| StandardNormal.sample(rng))
            .collect();
        let embedding = Var::from_tensor(&Tensor::from_vec(
            values,
            (virtual_tokens, token_dim),
            device,
        )?)?;
        let head = match kind {
            PromptEncoderReparameterizationType::Mlp => Head::Mlp([
                Dense::new(token_dim, hidden, rng, device)?,
                Dense::new(hidden, hidden, rng, device)?,
                Dense::new(hidden, token_dim, rng, device)?,
            ]),
            PromptEncoderReparameterizationType::Lstm => {
                if num_layers == 0 {
                    return Err(PeftError::Config(
                        "encoder_num_layers must be at least 1 for an LSTM prompt encoder".into(),
                    ));
                }
                Head::Lstm {
                    lstm: BiLstm::new(token_dim, hidden, num_layers, rng, device)?,
                    mlp: [
                        Dense::new(2 * hidden, 2 * hidden, rng, device)?,
                        Dense::new(2 * hidden, token_dim, rng, device)?,
                    ],
                }
            }
        };
        Ok(PromptEncoder { embedding, head })
    }

    /// The virtual-token embeddings `[virtual_tokens, token_dim]` the encoder produces (what HF PEFT saves as
    /// `prompt_embeddings`).
    pub fn forward(&self) -> Result<Tensor> {
        let x = param(&self.embedding);
        match &self.head {
            Head::Mlp([a, b, c]) => c.forward(&b.forward(&a.forward(&x)?.relu()?)?.relu()?),
            Head::Lstm { lstm, mlp: [a, b] } => b.forward(&a.forward(&lstm.forward(&x)?)?.relu()?),
        }
    }

    /// Every parameter under its name in the torch module's state dict, in torch's order.
    pub fn named_parameters(&self) -> Vec<(String, Var)> {
        let mut out = vec![("embedding.weight".to_string(), self.embedding.clone())];
        match &self.head {
            Head::Mlp(layers) => {
                for (layer, i) in layers.iter().zip([0, 2, 4]) {
                    layer.named(&format!("mlp_head.{i}"), &mut out);
                }
            }
            Head::Lstm { lstm, mlp } => {
                lstm.named(&mut out);
                for (layer, i) in mlp.iter().zip([0, 2]) {
                    layer.named(&format!("mlp_head.{i}"), &mut out);
                }
            }
        }
        out
    }

    /// Parameter count (embedding and head), as HF PEFT counts the encoder's trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.named_parameters()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Replaces every parameter by the tensor of the same name in `state` (a torch state dict of the same
    /// encoder); a missing name or a different shape is an error naming it.
    pub fn load_state(&self, state: &HashMap<String, Tensor>) -> Result<()> {
        let params = self.named_parameters();
        // Check everything before changing anything, so that a bad file leaves the encoder as it was.
        for (name, var) in &params {
            let t = state.get(name).ok_or_else(|| {
                PeftError::Config(format!(
                    "the prompt encoder's state lacks `{name}` (it has {} tensors: {:?}...)",
                    state.len(),
                    state.keys().take(4).collect::<Vec<_>>()
                ))
            })?;
            if t.dims() != var.dims() {
                return Err(PeftError::ShapeMismatch {
                    what: name.clone(),
                    expected_from: "the prompt encoder".into(),
                    expected: var.dims().to_vec(),
                    got_from: "the given state".into(),
                    got: t.dims().to_vec(),
                });
            }
        }
        for (name, var) in &params {
            var.set(&state[name].to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}
