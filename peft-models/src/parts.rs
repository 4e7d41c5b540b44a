//! The building blocks every architecture of the zoo shares: a frozen projection and norms that run
//! through the hooks, the MLP activations checkpoints name, and a loader that collects tensors under their
//! Hugging Face names while registering each module as an injection site.
//!
//! ```
//! use peft_models::parts::Activation;
//! assert_eq!(Activation::parse("gelu_new").unwrap(), Activation::GeluTanh);
//! assert!(Activation::parse("swiglu").unwrap_err().to_string().contains("swiglu"));
//! ```

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Tensor;
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::Hooks;
use peft_core::quantized::QuantizedWeight;
use peft_core::spec::{ModelSpec, Role, Site, SiteId, WeightStorage};
use peft_kernels::frozen::FrozenGemm;

use crate::embedding::TokenTable;
use crate::error::{ModelError, Result};
use crate::tensor_usage::{check_all_used, Allowed};
use crate::weights::WeightMap;

/// The MLP activations checkpoints name (`activation_function`, `hidden_act`, `dense_act_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact (erf) form.
    GeluErf,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    /// The activation a config names.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(ModelError::Config(format!(
                    "activation `{other}` is not supported (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, \
                     gelu, relu, silu)"
                )))
            }
        })
    }

    /// Applies the activation elementwise.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::GeluTanh => peft_kernels::gelu_tanh(x)?,
            Activation::GeluErf => peft_kernels::gelu_erf(x)?,
            Activation::Relu => x.relu()?,
            Activation::Silu => peft_kernels::silu(x)?,
        })
    }
}

/// A frozen projection and the site it is reported under.
#[derive(Debug, Clone)]
pub struct Projection {
    /// The injection site.
    pub site: SiteId,
    /// The frozen weight and bias.
    pub linear: FrozenLinear,
}

impl Projection {
    /// The projection of `x` through the hooks (LoRA, IA3, BitFit's bias).
    pub fn forward(&self, x: &Tensor, hooks: &dyn Hooks) -> Result<Tensor> {
        Ok(peft_core::hooks::apply_linear(
            hooks,
            self.site,
            x,
            &self.linear,
        )?)
    }
}

/// The frozen weight of the projection registered as `site` among `projections`: how a model answers
/// [`BaseModel::frozen_linear`](peft_core::model::BaseModel::frozen_linear) from the list of its projections.
pub fn linear_at<'a>(
    projections: impl IntoIterator<Item = &'a Projection>,
    site: SiteId,
) -> Option<&'a FrozenLinear> {
    projections
        .into_iter()
        .find(|p| p.site == site)
        .map(|p| &p.linear)
}

/// [`linear_at`] for [`BaseModel::frozen_linear_mut`](peft_core::model::BaseModel::frozen_linear_mut).
pub fn linear_at_mut<'a>(
    projections: impl IntoIterator<Item = &'a mut Projection>,
    site: SiteId,
) -> Option<&'a mut FrozenLinear> {
    projections
        .into_iter()
        .find(|p| p.site == site)
        .map(|p| &mut p.linear)
}

/// Gives a struct of [`Projection`] fields `projections()` and `projections_mut()`, iterators over the named
/// fields in the order given, so that a layer lists its projections once for both mutabilities:
/// `projection_fields!(Layer: [q_proj, k_proj, v_proj, o_proj]);`.
macro_rules! projection_fields {
    ($layer:ty: [$($field:ident),+ $(,)?]) => {
        impl $layer {
            /// The layer's projections, in the order they were listed.
            fn projections(&self) -> impl Iterator<Item = &$crate::parts::Projection> {
                [$(&self.$field),+].into_iter()
            }

            /// The layer's projections, mutably.
            fn projections_mut(&mut self) -> impl Iterator<Item = &mut $crate::parts::Projection> {
                [$(&mut self.$field),+].into_iter()
            }
        }
    };
}
pub(crate) use projection_fields;

/// A LayerNorm (with or without a bias in the checkpoint) whose bias a hook may replace or add (BitFit) and
/// whose weight a hook may replace (LayerNorm tuning).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// The injection site.
    pub site: SiteId,
    /// Scale.
    pub weight: Tensor,
    /// Shift, where the checkpoint has one.
    pub bias: Option<Tensor>,
    /// Epsilon.
    pub eps: f64,
}

impl LayerNorm {
    /// The normalised `x`.
    pub fn forward(&self, x: &Tensor, hooks: &dyn Hooks) -> Result<Tensor> {
        let frozen = |x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>| {
            peft_kernels::layer_norm(
                x,
                weight.unwrap_or(&self.weight),
                bias.or(self.bias.as_ref()),
                self.eps,
            )
        };
        Ok(hooks.norm(self.site, x, &frozen)?)
    }
}

/// An RMS norm (LLaMA's, T5's); it has no bias in the checkpoint, but a hook may add one (BitFit), and a hook
/// may replace its weight (LayerNorm tuning).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// The injection site.
    pub site: SiteId,
    /// Scale.
    pub weight: Tensor,
    /// Epsilon.
    pub eps: f64,
}

impl RmsNorm {
    /// The normalised `x`.
    pub fn forward(&self, x: &Tensor, hooks: &dyn Hooks) -> Result<Tensor> {
        let frozen = |x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>| {
            let y = peft_kernels::rms_norm(x, weight.unwrap_or(&self.weight), self.eps)?;
            Ok(match bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            })
        };
        Ok(hooks.norm(self.site, x, &frozen)?)
    }
}

/// Collects the loaded tensors under their HF names while a model is built, and registers every module it
/// loads as an injection site of `spec`, with the [`Role`] the architecture gives it: the one place a model
/// says what each site is, so that methods choose their defaults by role rather than by architecture. It
/// records every checkpoint tensor it reads, so that [`Loader::finish`] refuses a checkpoint with tensors
/// left over.
pub struct Loader<'a> {
    /// The checkpoint.
    pub weights: &'a WeightMap,
    /// The spec being built.
    pub spec: ModelSpec,
    /// Every tensor loaded so far, by HF name.
    pub parameters: Vec<(String, Tensor)>,
    /// Every checkpoint tensor read so far.
    used: BTreeSet<String>,
    /// Values of the weights kept quantized (they are not in `parameters`, which lists dense tensors).
    quantized_elements: usize,
    /// Values and bytes per storage type of the weights kept quantized.
    quantized_storage: BTreeMap<String, WeightStorage>,
}

impl<'a> Loader<'a> {
    /// A loader that fills `spec`.
    pub fn new(weights: &'a WeightMap, spec: ModelSpec) -> Self {
        Loader {
            weights,
            spec,
            parameters: Vec::new(),
            used: BTreeSet::new(),
            quantized_elements: 0,
            quantized_storage: BTreeMap::new(),
        }
    }

    /// The tensor `name` of the given shape, recorded as a parameter.
    pub fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.weights.get(name, shape)?;
        Ok(self.record(name, t))
    }

    /// Records `t` as parameter `name`, read from the checkpoint.
    fn record(&mut self, name: &str, t: Tensor) -> Tensor {
        self.used.insert(name.to_string());
        self.parameters.push((name.to_string(), t.clone()));
        t
    }

    /// Records `name` as used by the model though it is not a parameter (a copy checked equal to one).
    pub fn mark_used(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    /// A `nn.Linear` module (`[out, in]` weight, optional bias) playing `role`.
    pub fn linear(
        &mut self,
        role: Role,
        module: &str,
        layer: Option<usize>,
        in_f: usize,
        out_f: usize,
        bias: bool,
    ) -> Result<Projection> {
        let linear = self.frozen(&format!("{module}.weight"), in_f, out_f, bias, true)?;
        let site = self.spec.add_site(
            Site::linear(module, layer, in_f, out_f, linear.bias().is_some()).with_role(role),
        );
        Ok(Projection { site, linear })
    }

    /// The frozen layer of weight `name` (`[out, in]`) and, where `bias`, the bias beside it: kept quantized
    /// where the checkpoint kept it so, stored in bf16 where it is a `projection` of a map that asks for it.
    fn frozen(
        &mut self,
        name: &str,
        in_f: usize,
        out_f: usize,
        bias: bool,
        projection: bool,
    ) -> Result<FrozenLinear> {
        let bias = if bias {
            let bias_name = format!("{}.bias", name.trim_end_matches(".weight"));
            Some(self.tensor(&bias_name, &[out_f])?)
        } else {
            None
        };
        Ok(match self.weights.quantized(name, [out_f, in_f])? {
            Some(q) => {
                self.record_quantized(name, &q);
                FrozenLinear::quantized(q, bias, &FrozenGemm)
            }
            None => {
                let weight = self.weights.get(name, &[out_f, in_f])?;
                let weight = self.stored_as_projection(weight, projection)?;
                FrozenLinear::new(self.record(name, weight), bias, &FrozenGemm)
            }
        })
    }

    /// A frozen projection's `[out, in]` weight as the model keeps it: in bf16 when the map asks for it (mixed
    /// precision); a trained weight (full fine-tuning) stays as it is.
    fn stored_as_projection(&self, weight: Tensor, projection: bool) -> Result<Tensor> {
        if projection && self.weights.bf16_projections() && !weight.track_op() {
            return Ok(weight.to_dtype(candle_core::DType::BF16)?);
        }
        Ok(weight)
    }

    /// Notes a weight kept quantized as used, counted and stored.
    fn record_quantized(&mut self, name: &str, q: &QuantizedWeight) {
        self.used.insert(name.to_string());
        let (out, inp) = q.dims();
        self.quantized_elements += out * inp;
        let entry = self.quantized_storage.entry(q.type_name()).or_default();
        entry.values += out * inp;
        entry.bytes += q.storage_bytes();
    }

    /// A token embedding table `[vocab, hidden]`, kept quantized where the checkpoint kept it so.
    pub fn token_table(&mut self, name: &str, vocab: usize, hidden: usize) -> Result<TokenTable> {
        Ok(match self.weights.quantized(name, [vocab, hidden])? {
            Some(q) => {
                self.record_quantized(name, &q);
                TokenTable::Quantized(q)
            }
            None => TokenTable::Dense(self.tensor(name, &[vocab, hidden])?),
        })
    }

    /// An untied LM head `[vocab, hidden]` without bias (`lm_head.weight`); in bf16 under mixed precision, as
    /// the projections are (`torch.autocast` runs the head's linear in bf16 too).
    pub fn head(&mut self, name: &str, vocab: usize, hidden: usize) -> Result<FrozenLinear> {
        self.frozen(name, hidden, vocab, false, true)
    }

    /// The LM head tied to the token embeddings `table`: the table itself, or under mixed precision a bf16
    /// copy of it, so that the head multiplies on the bf16 units as the projections do while the lookups keep
    /// the f32 values (half the table's size again in memory). A trained table (full fine-tuning) or one kept
    /// quantized is the head as it is.
    pub fn tied_head(&self, table: &TokenTable) -> Result<FrozenLinear> {
        Ok(match table {
            TokenTable::Dense(t) if self.weights.bf16_projections() && !t.track_op() => {
                FrozenLinear::new(t.to_dtype(candle_core::DType::BF16)?, None, &FrozenGemm)
            }
            TokenTable::Dense(t) => FrozenLinear::new(t.clone(), None, &FrozenGemm),
            TokenTable::Quantized(q) => FrozenLinear::quantized(q.clone(), None, &FrozenGemm),
        })
    }

    /// A GPT-2 Conv1D module: weight `[in, out]` in the checkpoint, `[out, in]` in the returned projection (and
    /// in the parameters, so that the listed tensor is the one the forward pass uses), playing `role`.
    pub fn conv1d(
        &mut self,
        role: Role,
        module: &str,
        layer: usize,
        in_f: usize,
        out_f: usize,
    ) -> Result<Projection> {
        let name = format!("{module}.weight");
        let stored = self.weights.get(&name, &[in_f, out_f])?;
        self.used.insert(name.clone());
        let weight = self.stored_as_projection(stored.t()?.contiguous()?, true)?;
        let bias = self.tensor(&format!("{module}.bias"), &[out_f])?;
        // A trainable weight (full fine-tuning) is listed as the variable itself, in the checkpoint's layout;
        // a frozen one as the layer keeps it (bf16 where the map asks for it).
        let listed = if stored.is_variable() {
            stored
        } else {
            weight.clone()
        };
        let linear = FrozenLinear::new(weight, Some(bias), &FrozenGemm);
        self.parameters.push((name, listed));
        let site = self
            .spec
            .add_site(Site::conv1d(module, Some(layer), in_f, out_f).with_role(role));
        Ok(Projection { site, linear })
    }

    /// A LayerNorm over `dim` features playing `role`, with a bias where `bias` says the checkpoint has one.
    pub fn layer_norm(
        &mut self,
        role: Role,
        module: &str,
        layer: Option<usize>,
        dim: usize,
        bias: bool,
        eps: f64,
    ) -> Result<LayerNorm> {
        let weight = self.tensor(&format!("{module}.weight"), &[dim])?;
        let bias = if bias {
            Some(self.tensor(&format!("{module}.bias"), &[dim])?)
        } else {
            None
        };
        let site = self
            .spec
            .add_site(Site::norm(module, layer, dim, bias.is_some()).with_role(role));
        Ok(LayerNorm {
            site,
            weight,
            bias,
            eps,
        })
    }

    /// An RMS norm over `dim` features playing `role`.
    pub fn rms_norm(
        &mut self,
        role: Role,
        module: &str,
        layer: Option<usize>,
        dim: usize,
        eps: f64,
    ) -> Result<RmsNorm> {
        let weight = self.tensor(&format!("{module}.weight"), &[dim])?;
        let site = self
            .spec
            .add_site(Site::norm(module, layer, dim, false).with_role(role));
        Ok(RmsNorm { site, weight, eps })
    }

    /// The finished spec (with its parameter count) and the parameters, once every checkpoint tensor is
    /// known to be used or `allowed` ([`check_all_used`]).
    pub fn finish(self, allowed: &[Allowed]) -> Result<(ModelSpec, Vec<(String, Tensor)>)> {
        check_all_used(self.weights, &self.used, allowed)?;
        let Loader {
            mut spec,
            parameters,
            quantized_elements,
            mut quantized_storage,
            ..
        } = self;
        // A tensor listed twice (a tied weight) is stored once.
        let mut seen = std::collections::HashSet::new();
        for (_, t) in &parameters {
            if seen.insert(t.id()) {
                let entry = quantized_storage
                    .entry(format!("{:?}", t.dtype()).to_lowercase())
                    .or_default();
                entry.values += t.elem_count();
                entry.bytes += t.elem_count() * t.dtype().size_in_bytes();
            }
        }
        spec.weight_storage = quantized_storage;
        spec.num_parameters = parameters
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum::<usize>()
            + quantized_elements;
        Ok((spec, parameters))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};
    use peft_core::hooks::{Hooks, NoHooks};
    use peft_core::spec::SiteId;

    use super::{LayerNorm, RmsNorm};

    /// Replaces the weight of the norm at one site by a variable, as LayerNorm tuning does.
    struct NormWeight(SiteId, Var);

    impl Hooks for NormWeight {
        fn norm_weight(&self, site: SiteId) -> Option<Tensor> {
            (site == self.0).then(|| self.1.as_tensor().clone())
        }
    }

    fn input() -> Tensor {
        let values: Vec<f32> = (0..12).map(|i| ((i * 7) % 5) as f32 - 1.5).collect();
        Tensor::from_vec(values, (3, 4), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        peft_core::compare::max_abs_diff(a, b).unwrap()
    }

    #[test]
    fn a_replacement_norm_weight_scales_the_normalised_rows_and_gets_the_gradient() {
        let dev = Device::Cpu;
        let (site, other) = (SiteId(3), SiteId(4));
        let frozen_w = Tensor::new(&[1f32, 0.5, 2.0, 1.0], &dev).unwrap();
        let bias = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &dev).unwrap();
        let ln = LayerNorm {
            site,
            weight: frozen_w.clone(),
            bias: Some(bias.clone()),
            eps: 1e-5,
        };
        let rms = RmsNorm {
            site,
            weight: frozen_w.clone(),
            eps: 1e-6,
        };
        let new_w = Tensor::new(&[3f32, -1.0, 0.25, 2.0], &dev).unwrap();
        let ratio = new_w.div(&frozen_w).unwrap();
        let hooks = NormWeight(site, Var::from_tensor(&new_w).unwrap());
        let x = input();

        // LayerNorm: (normalised x) * w + b, so the part above the bias scales by w' / w.
        let frozen = ln.forward(&x, &NoHooks).unwrap();
        let replaced = ln.forward(&x, &hooks).unwrap();
        let expected = frozen
            .broadcast_sub(&bias)
            .unwrap()
            .broadcast_mul(&ratio)
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        assert!(max_diff(&replaced, &expected) < 1e-5);
        assert!(max_diff(&replaced, &frozen) > 0.1);
        // RMS norm: (normalised x) * w.
        let frozen = rms.forward(&x, &NoHooks).unwrap();
        let replaced = rms.forward(&x, &hooks).unwrap();
        assert!(max_diff(&replaced, &frozen.broadcast_mul(&ratio).unwrap()) < 1e-5);
        assert!(max_diff(&replaced, &frozen) > 0.1);

        // A hook for another site leaves this norm as it is.
        let elsewhere = NormWeight(other, Var::from_tensor(&new_w).unwrap());
        assert_eq!(
            max_diff(
                &ln.forward(&x, &elsewhere).unwrap(),
                &ln.forward(&x, &NoHooks).unwrap()
            ),
            0.0
        );

        // The replacement gets the gradient: d sum(rms(x) * w') / d w' = sum over rows of the normalised x.
        let grads = rms
            .forward(&x, &hooks)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad = grads
            .get(hooks.1.as_tensor())
            .expect("the weight's gradient");
        let normalised = rms
            .forward(&x, &NoHooks)
            .unwrap()
            .broadcast_div(&frozen_w)
            .unwrap();
        assert!(max_diff(grad, &normalised.sum(0).unwrap()) < 1e-5);
    }
}
