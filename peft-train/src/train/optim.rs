//! AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW` update), global-norm gradient clipping,
//! and a state that can be saved and restored for resuming.
//!
//! Biases and normalisation weights get no weight decay by default, as transformers' Trainer does.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use peft_train::train::optim::{AdamW, AdamWConfig};
//! let w = Var::new(&[1f32, -1.], &Device::Cpu).unwrap();
//! let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default());
//! let grad = Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap();
//! opt.step(&[grad], 0.1).unwrap();
//! // Adam's first step moves each weight by about lr against the sign of its gradient.
//! let v = w.as_tensor().to_vec1::<f32>().unwrap();
//! assert!((v[0] - 0.9).abs() < 1e-4 && (v[1] + 0.9).abs() < 1e-4);
//! ```

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use peft_core::error::{PeftError, Result};
use peft_core::method::Adapter;

/// AdamW hyperparameters (PyTorch defaults, weight decay 0 as transformers' Trainer).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// First-moment decay (default 0.9).
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Second-moment decay (default 0.999).
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Denominator epsilon (default 1e-8).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay for parameters that take it (default 0.0).
    #[serde(default)]
    pub weight_decay: f64,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: 0.0,
        }
    }
}

/// Whether a parameter named `name` takes weight decay: biases and norm weights do not.
pub fn takes_weight_decay(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !(lower.ends_with(".bias")
        || lower == "bias"
        || lower.contains("norm")
        || lower.contains(".ln_")
        || lower.starts_with("ln_"))
}

/// The gradient of `loss` for each of `vars`, in order, detached; an error names a variable the loss does not
/// reach.
///
/// Detached because candle leaves a variable's gradient tracked when the backward pass built it from tracked
/// tensors (LoHa's `grad ⊙ (w2_a w2_b)`, for one): AdamW's moments would then keep every step's graph alive,
/// about 150 MB a step for LoHa on SmolLM2 until a 100-step run peaked at 18.5 GB.
pub fn gradients(loss: &Tensor, vars: &[(String, Var)]) -> Result<Vec<Tensor>> {
    gradients_of(&loss.backward()?, vars)
}

/// Each of `vars`' gradient in `grads`, in order, detached (see [`gradients`]); an error names a variable
/// that has none.
pub fn gradients_of(grads: &GradStore, vars: &[(String, Var)]) -> Result<Vec<Tensor>> {
    vars.iter()
        .map(|(name, var)| {
            grads.get(var.as_tensor()).map(Tensor::detach).ok_or_else(|| {
                PeftError::Unsupported(format!(
                    "trainable parameter `{name}` received no gradient: the forward pass does not use it \
                     or an op without backward cut the graph"
                ))
            })
        })
        .collect()
}

/// The task's `loss` plus the method's own training term ([`Adapter::training_loss_term`]), if it has one;
/// weighed with the loss, so that over ranks and micro-batches the step adds it once, as HF PEFT adds it to
/// each forward's loss.
pub fn with_method_term(loss: Tensor, adapter: &dyn Adapter) -> Result<Tensor> {
    let Some(term) = adapter.training_loss_term()? else {
        return Ok(loss);
    };
    if term.rank() != 0 {
        return Err(PeftError::Unsupported(format!(
            "the {} adapter's training loss term has shape {:?}; it must be a scalar",
            adapter.config().typetag_name(),
            term.dims()
        )));
    }
    let term = term.to_dtype(loss.dtype())?;
    Ok((loss + term)?)
}

/// One parameter under optimisation with its moments.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// The AdamW optimiser over named variables.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    steps: usize,
}

impl AdamW {
    /// An optimiser over `vars`, moments at zero.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Self {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like().expect("zeros like a variable");
                Slot {
                    decay: takes_weight_decay(&name),
                    name,
                    m: zeros.clone(),
                    v: zeros,
                    var,
                }
            })
            .collect();
        AdamW {
            config,
            slots,
            steps: 0,
        }
    }

    /// Bytes allocated for the optimiser's state: both moments of every variable.
    pub fn state_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| (s.m.elem_count() + s.v.elem_count()) * s.m.dtype().size_in_bytes())
            .sum()
    }

    /// Optimiser steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Names of the optimised variables, in order.
    pub fn names(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.name.clone()).collect()
    }

    /// Applies one update with `grads` (one per variable, in order) at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(PeftError::Unsupported(format!(
                "AdamW got {} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let m = ((&slot.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((&v / bias2)?.sqrt()? + c.eps)?;
            let update = ((&m / bias1)? / denom)?;
            let mut p = slot.var.as_tensor().clone();
            if slot.decay && c.weight_decay > 0.0 {
                p = (p * (1.0 - lr * c.weight_decay))?;
            }
            slot.var.set(&(p - (update * lr)?)?)?;
            slot.m = m;
            slot.v = v;
        }
        Ok(())
    }

    /// The moments and step count, for a checkpoint: tensors `exp_avg.<name>` and `exp_avg_sq.<name>`.
    pub fn state(&self) -> (Vec<(String, Tensor)>, usize) {
        let mut tensors = Vec::with_capacity(self.slots.len() * 2);
        for s in &self.slots {
            tensors.push((format!("exp_avg.{}", s.name), s.m.clone()));
            tensors.push((format!("exp_avg_sq.{}", s.name), s.v.clone()));
        }
        (tensors, self.steps)
    }

    /// Restores moments and step count saved by [`AdamW::state`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for s in &mut self.slots {
            for (prefix, target) in [("exp_avg", &mut s.m), ("exp_avg_sq", &mut s.v)] {
                let key = format!("{prefix}.{}", s.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    PeftError::Config(format!("checkpoint lacks optimiser state `{key}`"))
                })?;
                if t.dims() != s.var.dims() {
                    return Err(PeftError::ShapeMismatch {
                        what: key,
                        expected_from: "the adapter".into(),
                        expected: s.var.dims().to_vec(),
                        got_from: "the checkpoint".into(),
                        got: t.dims().to_vec(),
                    });
                }
                *target = t.to_dtype(s.var.dtype())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Global L2 norm of `grads`.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// Scales `grads` so that their global norm is at most `max_norm` (no-op when `max_norm <= 0`); returns the
/// norm before clipping.
pub fn clip_global_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 && norm > max_norm {
        // Same factor as torch.nn.utils.clip_grad_norm_.
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn decay_exemptions_follow_transformers() {
        assert!(!takes_weight_decay("transformer.h.0.attn.c_attn.bias"));
        assert!(!takes_weight_decay("model.layers.0.input_layernorm.weight"));
        assert!(!takes_weight_decay("transformer.h.0.ln_1.weight"));
        assert!(takes_weight_decay("prompt_embeddings"));
        assert!(takes_weight_decay(
            "model.layers.0.self_attn.q_proj.lora_A.weight"
        ));
    }

    #[test]
    fn matches_a_hand_computed_adamw_trajectory() {
        // Two steps of PyTorch's AdamW on one scalar, computed by hand.
        let dev = Device::Cpu;
        let w = Var::new(&[1f64], &dev).unwrap();
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg);
        let (lr, g1, g2) = (0.01, 0.3, -0.2);
        opt.step(&[Tensor::new(&[g1], &dev).unwrap()], lr).unwrap();
        opt.step(&[Tensor::new(&[g2], &dev).unwrap()], lr).unwrap();
        let mut p = 1f64;
        let (mut m, mut v) = (0f64, 0f64);
        for (t, g) in [(1, g1), (2, g2)] {
            p *= 1.0 - lr * 0.1;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let mh = m / (1.0 - 0.9f64.powi(t));
            let vh = v / (1.0 - 0.999f64.powi(t));
            p -= lr * mh / (vh.sqrt() + 1e-8);
        }
        let got = w.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((got - p).abs() < 1e-12, "{got} vs {p}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let dev = Device::Cpu;
        let mut g = vec![
            Tensor::new(&[3f64], &dev).unwrap(),
            Tensor::new(&[4f64], &dev).unwrap(),
        ];
        let before = clip_global_norm(&mut g, 1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-12);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-5);
        let mut small = vec![Tensor::new(&[0.3f64], &dev).unwrap()];
        clip_global_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].to_vec1::<f64>().unwrap(), vec![0.3]);
    }

    #[test]
    fn state_round_trips() {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, 2.], &dev).unwrap();
        let mut a = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default());
        a.step(&[Tensor::new(&[0.1f32, 0.2], &dev).unwrap()], 0.1)
            .unwrap();
        let (tensors, steps) = a.state();
        let map: HashMap<_, _> = tensors.into_iter().collect();
        let w2 = Var::new(&[1f32, 2.], &dev).unwrap();
        let mut b = AdamW::new(vec![("w".into(), w2)], AdamWConfig::default());
        b.load_state(&map, steps).unwrap();
        assert_eq!(b.steps(), 1);
        let (t2, _) = b.state();
        assert_eq!(
            t2[0].1.to_vec1::<f32>().unwrap(),
            map["exp_avg.w"].to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn gradients_carry_no_graph_even_where_candle_leaves_one() {
        // LoHa's shape of update: a Hadamard product of two low-rank products.
        let dev = Device::Cpu;
        let var = |seed: f32, rows, cols| {
            let data: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * seed).sin()).collect();
            Var::from_tensor(&Tensor::from_vec(data, (rows, cols), &dev).unwrap()).unwrap()
        };
        let vars: Vec<(String, Var)> = [(0.3, 4, 2), (0.7, 2, 3), (1.1, 4, 2), (1.3, 2, 3)]
            .iter()
            .enumerate()
            .map(|(i, &(s, r, c))| (format!("w{i}"), var(s, r, c)))
            .collect();
        let t = |i: usize| vars[i].1.as_tensor();
        let w = (t(0).matmul(t(1)).unwrap() * t(2).matmul(t(3)).unwrap()).unwrap();
        let loss = w.sqr().unwrap().sum_all().unwrap();
        // The premise: candle's own gradient of a factor is tracked here.
        let raw = loss.backward().unwrap();
        assert!(raw.get(t(0)).unwrap().track_op());
        let grads = gradients(&loss, &vars).unwrap();
        assert_eq!(grads.len(), 4);
        for (g, (name, v)) in grads.iter().zip(&vars) {
            assert!(!g.track_op(), "the gradient of {name} keeps a graph");
            assert_eq!(g.dims(), v.dims());
        }
        // Detaching changes nothing in the values.
        let a = raw.get(t(0)).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(grads[0].to_vec2::<f32>().unwrap(), a);
    }
}
