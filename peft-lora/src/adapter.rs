//! The built LoRA adapter: for every adapted module `y = W x (+ b) + scale * B A dropout(x)`, with `lora_A`
//! `[r, in]`, `lora_B` `[out, r]` and `scale = lora_alpha / r` (rsLoRA: `/ sqrt(r)`), saved under HF PEFT's keys
//! `base_model.model.<module>.lora_A.weight` / `lora_B.weight`. Trainable biases (`bias = "all"` /
//! `"lora_only"`) replace the frozen ones through [`Hooks::bias`]. Merging adds `scale * B A` to the frozen
//! weights, after which the linear hook adds nothing until unmerged. With `use_dora` each layer also has a
//! magnitude vector (`<module>.lora_magnitude_vector`) that rescales its output rows ([`DoraLayer`]).
//!
//! ```
//! use peft_core::method::InitCtx;
//! use peft_lora::{bias_key, lora_key, LoraConfig};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::gpt2(0); // hidden 32, c_attn 32 -> 96
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let lora = LoraConfig::new(2, ["c_attn"]).build_lora(&mut init).unwrap();
//! let layer = lora.layer("transformer.h.0.attn.c_attn").unwrap();
//! assert_eq!((layer.a().dims(), layer.b().dims()), (&[2, 32][..], &[96, 2][..]));
//! assert_eq!(layer.delta_weight().unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
//! assert_eq!(lora_key("transformer.h.0.attn.c_attn", "A"), "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight");
//! assert_eq!(bias_key("transformer.h.0.attn.c_attn", true), "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias");
//! ```

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::{project_through_linear, Hooks, LinearFn};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteId;
use peft_core::tuner::{check_file_tensors, BiasScope, ExpectedTensors, TrainableBias};
use peft_core::tuner::{check_merge_targets, MergeFlag, SiteIndex};
use peft_core::{PeftError, Result};

use crate::config::{BiasMode, LoraConfig};
use crate::dora::DoraLayer;
use crate::dropout::Dropout;
use crate::targets::Target;

/// Prefix of every key HF PEFT saves for a non-prompt method (`PeftModel.base_model.model`).
const KEY_PREFIX: &str = "base_model.model.";

/// HF PEFT's key of `lora_A` (`which = "A"`) or `lora_B` of `module`.
pub fn lora_key(module: &str, which: &str) -> String {
    format!("{KEY_PREFIX}{module}.lora_{which}.weight")
}

/// HF PEFT's key of DoRA's magnitude vector of `module` (saved without the `.weight` of the module holding it).
pub fn magnitude_key(module: &str) -> String {
    format!("{KEY_PREFIX}{module}.lora_magnitude_vector")
}

// HF PEFT's key of a trained bias, under `base_layer` for a module LoRA wraps: shared by the methods that wrap
// modules.
pub use peft_core::tuner::bias_key;

/// Copies of the frozen biases of `model` that `mode` trains, with their HF PEFT keys (under `base_layer` at
/// the sites of `layers`, which LoRA wraps).
pub(crate) fn trainable_biases(
    mode: BiasMode,
    model: &dyn BaseModel,
    layers: &[LoraLayer],
) -> Result<Vec<TrainableBias>> {
    let scope = match mode {
        BiasMode::None => BiasScope::None,
        BiasMode::All => BiasScope::All,
        BiasMode::LoraOnly => BiasScope::WrappedOnly,
    };
    let wrapped: Vec<SiteId> = layers.iter().map(LoraLayer::site).collect();
    peft_core::tuner::trainable_biases(model, &wrapped, scope, mode)
}

/// The low-rank update of one module.
#[derive(Debug)]
pub struct LoraLayer {
    target: Target,
    a: Var,
    b: Var,
    scale: f64,
    /// DoRA's magnitude and norms, with `use_dora`.
    dora: Option<DoraLayer>,
    /// PiSSA / OLoRA's starting factors `(A0, B0)`, frozen: the model runs on `W - scale B0 A0` (HF PEFT writes
    /// that into the base weight; here the shared base stays as loaded and this layer subtracts it).
    initial: Option<(Tensor, Tensor)>,
}

impl LoraLayer {
    /// The update of `target` with factors `a` `[r, in]` and `b` `[out, r]`, scaled by `scale`.
    pub(crate) fn new(target: Target, a: Var, b: Var, scale: f64) -> Self {
        LoraLayer {
            target,
            a,
            b,
            scale,
            dora: None,
            initial: None,
        }
    }

    /// This layer over the base weight less `scale * b0 a0` (PiSSA, OLoRA), the part its factors started from.
    pub(crate) fn with_initial(self, a0: Tensor, b0: Tensor) -> Self {
        LoraLayer {
            initial: Some((a0.detach(), b0.detach())),
            ..self
        }
    }

    /// PiSSA / OLoRA's starting factors `(A0 [r, in], B0 [out, r])`, which the base weight is taken to be
    /// without (`W - scale B0 A0`).
    pub fn initial(&self) -> Option<(&Tensor, &Tensor)> {
        self.initial.as_ref().map(|(a, b)| (a, b))
    }

    /// This layer with DoRA over it (`use_dora`).
    pub(crate) fn with_dora(self, dora: DoraLayer) -> Self {
        LoraLayer {
            dora: Some(dora),
            ..self
        }
    }

    /// The DoRA part (magnitude vector), with `use_dora`.
    pub fn dora(&self) -> Option<&DoraLayer> {
        self.dora.as_ref()
    }

    /// The resolved target (site, name, rank, alpha, sizes).
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// The adapted module's full name.
    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// The adapted site.
    pub fn site(&self) -> SiteId {
        self.target.site
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.target.r
    }

    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `lora_A` `[r, in]`.
    pub fn a(&self) -> &Tensor {
        self.a.as_tensor()
    }

    /// `lora_B` `[out, r]`.
    pub fn b(&self) -> &Tensor {
        self.b.as_tensor()
    }

    /// `scale * B A` `[out, in]` (PiSSA / OLoRA: `scale * (B A - B0 A0)`): what merging adds to the frozen
    /// weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let mut product = self.b.as_tensor().matmul(self.a.as_tensor())?;
        if let Some((a0, b0)) = &self.initial {
            product = (product - b0.matmul(a0)?)?;
        }
        Ok((product * self.scale)?)
    }

    /// The module's output computed inside the frozen product as one op ([`FrozenLinear::forward_low_rank`]),
    /// where nothing else acts at the site: no DoRA, no PiSSA / OLoRA starting factors, no dropout drawn (the
    /// caller checks that no trained bias replaces the frozen one). `None` where it cannot run so (those
    /// cases, or a product without such an op): [`LoraLayer::output`] then composes the same function.
    fn fused_output(
        &self,
        x: &Tensor,
        frozen: &FrozenLinear,
        dropout: &Dropout,
    ) -> Result<Option<Tensor>> {
        if self.dora.is_some() || self.initial.is_some() || !dropout.is_identity() {
            return Ok(None);
        }
        let a = peft_core::grad::param(&self.a).to_dtype(x.dtype())?;
        let b = peft_core::grad::param(&self.b).to_dtype(x.dtype())?;
        frozen.forward_low_rank(x, (&a, &b, self.scale))
    }

    /// The module's output: `next(x) + scale * dropout(x) A^T B^T` over the last dimension of `x` (HF PEFT's
    /// order of operations), or DoRA's rescaled output (`bias`: the trained bias that replaced the frozen one).
    fn output(
        &self,
        x: &Tensor,
        next: &LinearFn,
        bias: Option<Tensor>,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let a = peft_core::grad::param(&self.a).to_dtype(x.dtype())?;
        let b = peft_core::grad::param(&self.b).to_dtype(x.dtype())?;
        if let Some(dora) = &self.dora {
            let bias = bias.or_else(|| dora.frozen_bias().cloned());
            return dora.forward(x, next, (&a, &b, self.scale), bias.as_ref(), dropout);
        }
        let mut y = next(x)?;
        if let Some((a0, b0)) = &self.initial {
            let (a0, b0) = (a0.to_dtype(x.dtype())?, b0.to_dtype(x.dtype())?);
            if dropout.p() == 0.0 || !peft_core::grad::enabled() {
                // No dropout: `B A x - B0 A0 x` is one low-rank product of rank 2r, `[B, -B0] [A; A0] x`,
                // which costs about what LoRA of rank 2r does instead of two products' passes and activations.
                let a2 = Tensor::cat(&[&a, &a0], 0)?;
                let b2 = Tensor::cat(&[&b, &b0.neg()?], 1)?;
                return Ok((y + peft_kernels::low_rank(x, &a2, &b2, self.scale)?)?);
            }
            // The residual base `W - scale B0 A0` sees the input before dropout, as in HF PEFT.
            y = (y - peft_kernels::low_rank(x, &a0, &b0, self.scale)?)?;
        }
        // The dropout mask is drawn element by element in order, so it does not depend on x's shape.
        let x2 = dropout.apply(x)?;
        // One fused op (f32 on the CPU) with its own backward; B has `out_features` rows.
        Ok((y + peft_kernels::low_rank(&x2, &a, &b, self.scale)?)?)
    }
}

/// A built LoRA adapter.
#[derive(Debug)]
pub struct Lora {
    config: LoraConfig,
    layers: Vec<LoraLayer>,
    /// Site to index in `layers`.
    layer_at: SiteIndex,
    biases: Vec<TrainableBias>,
    /// Site to index in `biases`.
    bias_at: SiteIndex,
    dropout: Dropout,
    merged: MergeFlag,
}

impl Lora {
    /// The adapter of a resolved `config` (targets and `fan_in_fan_out` filled in) over `layers` and `biases`
    /// (each in site order) of a model with `num_sites` sites.
    pub(crate) fn new(
        config: LoraConfig,
        layers: Vec<LoraLayer>,
        biases: Vec<TrainableBias>,
        dropout: Dropout,
        num_sites: usize,
    ) -> Self {
        let layer_at = SiteIndex::new(num_sites, layers.iter().map(|l| l.site()));
        let bias_at = SiteIndex::new(num_sites, biases.iter().map(|b| b.site));
        Lora {
            config,
            layers,
            layer_at,
            biases,
            bias_at,
            dropout,
            merged: MergeFlag::default(),
        }
    }

    /// The adapted modules, in site order.
    pub fn layers(&self) -> &[LoraLayer] {
        &self.layers
    }

    /// The adapted module named `name` (full HF module name).
    pub fn layer(&self, name: &str) -> Option<&LoraLayer> {
        self.layers.iter().find(|l| l.name() == name)
    }

    /// The resolved configuration (what `adapter_config.json` will hold).
    pub fn lora_config(&self) -> &LoraConfig {
        &self.config
    }

    /// The number of sites of the model this adapter was built for.
    pub(crate) fn num_sites(&self) -> usize {
        self.layer_at.num_sites()
    }

    /// The trainable biases, for a converted copy of this adapter.
    pub(crate) fn biases(&self) -> &[TrainableBias] {
        &self.biases
    }

    /// Whether the update is currently folded into a model's weights.
    pub fn is_merged(&self) -> bool {
        self.merged.is_merged()
    }

    /// Every (key, variable) this adapter saves.
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::with_capacity(3 * self.layers.len() + self.biases.len());
        for l in &self.layers {
            vars.push((lora_key(l.name(), "A"), l.a.clone()));
            vars.push((lora_key(l.name(), "B"), l.b.clone()));
            if let Some(dora) = &l.dora {
                vars.push((magnitude_key(l.name()), dora.magnitude_var().clone()));
            }
        }
        for b in &self.biases {
            vars.push((b.key.clone(), b.value.clone()));
        }
        vars
    }

    /// Checks that every adapted site is a linear layer of `model` with the expected shape.
    fn check_model(&self, model: &dyn BaseModel) -> Result<()> {
        check_merge_targets(
            model,
            "LoRA",
            self.layers.iter().map(|l| {
                (
                    l.site(),
                    l.name(),
                    [l.target.out_features, l.target.in_features],
                )
            }),
        )
    }

    /// Adds `scale * B A` to every adapted frozen weight (`merge`), or takes it away; with DoRA adds
    /// `m / ||W + scale B A||_row * (W + scale B A) - W`, or takes away what the merge added.
    fn fold(&self, model: &mut dyn BaseModel, merge: bool) -> Result<()> {
        self.check_model(model)?;
        for l in &self.layers {
            let frozen = model.frozen_linear_mut(l.site()).expect("checked above");
            let delta = match (&l.dora, merge) {
                (None, true) => l.delta_weight()?,
                (None, false) => l.delta_weight()?.neg()?,
                (Some(dora), true) => dora.merge_delta(&frozen.weight()?, &l.delta_weight()?)?,
                (Some(dora), false) => dora.take_merged_delta()?.neg()?,
            };
            frozen.add_to_weight(&delta)?;
        }
        Ok(())
    }
}

impl Hooks for Lora {
    /// An adapted site whose frozen bias stays runs the frozen product and the update as one op (two graph
    /// nodes and two output-sized gradients fewer in the backward); every other site and case goes through
    /// [`Hooks::linear`] below, as the default does.
    fn project(&self, site: SiteId, x: &Tensor, frozen: &FrozenLinear) -> Result<Tensor> {
        if let Some(i) = self.layer_at.get(site) {
            if !self.is_merged() && self.bias_at.get(site).is_none() {
                if let Some(y) = self.layers[i].fused_output(x, frozen, &self.dropout)? {
                    return Ok(y);
                }
            }
        }
        project_through_linear(self, site, x, frozen)
    }

    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        match self.layer_at.get(site) {
            Some(i) if !self.is_merged() => {
                self.layers[i].output(x, next, self.bias(site), &self.dropout)
            }
            _ => next(x),
        }
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        let i = self.bias_at.get(site)?;
        Some(peft_core::grad::param(&self.biases[i].value))
    }

    /// The targeted projections, and those whose bias trains (`bias = "all"` / `"lora_only"`).
    fn touches(&self, site: SiteId) -> bool {
        self.layer_at.get(site).is_some() || self.bias_at.get(site).is_some()
    }
}

impl Adapter for Lora {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.named_vars()
    }

    /// A snapshot: copies, so that later training steps (which update the variables in place) leave it as it was.
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.named_vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().detach().copy()?)))
            .collect()
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        if self.is_merged() {
            return Err(PeftError::Unsupported(
                "cannot load tensors into a merged LoRA adapter: unmerge it from the model first"
                    .into(),
            ));
        }
        let vars = self.named_vars();
        // Check everything before changing anything, so that a bad file leaves the adapter as it was.
        let expected: Vec<(&str, &[usize])> =
            vars.iter().map(|(k, v)| (k.as_str(), v.dims())).collect();
        check_file_tensors(
            tensors,
            &expected,
            &ExpectedTensors {
                method: "LoRA",
                fields: "target_modules / layers_to_transform / bias",
                shapes_from: &format!(
                    "the model with this LoRA config (r = {}, see rank_pattern)",
                    self.config.r
                ),
            },
        )?;
        for (key, var) in &vars {
            var.set(&tensors[key].to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.merged.merge("LoRA", || self.fold(model, true))
    }

    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.merged.unmerge("LoRA", || self.fold(model, false))
    }
}
