//! The built VeRA adapter: for every adapted module
//! `y = W x (+ b) + lambda_b * (B[:out] (lambda_d * (A[:, :in] dropout(x))))`, with the shared frozen
//! projections `A`, `B` ([`Projections`]) and the module's trained vectors `vera_lambda_b` `[out]` (starting
//! at zeros, so a fresh adapter is a no-op) and `vera_lambda_d` `[r]` (starting at `d_initial`), saved under
//! HF PEFT's keys `base_model.model.<module>.vera_lambda_b` / `vera_lambda_d`, plus `base_model.vera_A` /
//! `vera_B` with `save_projection`. Trainable biases (`bias = "all"` / `"vera_only"`) replace the frozen ones
//! through [`Hooks::bias`]. Merging adds `(lambda_b B) (lambda_d A)` to the frozen weights.
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx};
//! use peft_vera::{lambda_key, VeraConfig};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::gpt2(0); // hidden 32, c_attn 32 -> 96, two layers
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let vera = VeraConfig::new(8, ["c_attn"]).build_vera(&mut init).unwrap();
//! assert_eq!(vera.num_trainable(), 2 * (96 + 8)); // lambda_b [96] and lambda_d [8] per module
//! assert_eq!((vera.projections().a().dims(), vera.projections().b().dims()), (&[8, 32][..], &[96, 8][..]));
//! let saved: Vec<String> = vera.tensors().unwrap().into_iter().map(|(k, _)| k).collect();
//! assert!(saved.contains(&"base_model.vera_A".to_string()));
//! assert!(saved.contains(&lambda_key("transformer.h.0.attn.c_attn", "b")));
//! ```

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::{Hooks, LinearFn};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteId;
use peft_core::tuner::{
    check_file_tensors, Dropout, ExpectedTensors, TrainableBias, MODULE_KEY_PREFIX,
};
use peft_core::tuner::{check_merge_targets, MergeFlag, SiteIndex};
use peft_core::{PeftError, Result};

use crate::config::{BiasMode, VeraConfig};
use crate::projection::{Projections, VERA_A_KEY, VERA_B_KEY};
use crate::targets::Target;

/// HF PEFT's key of `vera_lambda_b` (`which = "b"`) or `vera_lambda_d` of `module`.
pub fn lambda_key(module: &str, which: &str) -> String {
    format!("{MODULE_KEY_PREFIX}{module}.vera_lambda_{which}")
}

/// Copies of the frozen biases of `model` that `mode` trains, with their HF PEFT keys (under `base_layer` at
/// the sites of `layers`, which VeRA wraps).
pub(crate) fn trainable_biases(
    mode: BiasMode,
    model: &dyn BaseModel,
    layers: &[VeraLayer],
) -> Result<Vec<TrainableBias>> {
    let wrapped: Vec<SiteId> = layers.iter().map(VeraLayer::site).collect();
    peft_core::tuner::trainable_biases(model, &wrapped, mode.scope(), mode)
}

/// The trained vectors of one adapted module.
#[derive(Debug)]
pub struct VeraLayer {
    target: Target,
    lambda_b: Var,
    lambda_d: Var,
}

impl VeraLayer {
    /// The vectors `lambda_b` `[out]` and `lambda_d` `[r]` of `target`.
    pub(crate) fn new(target: Target, lambda_b: Var, lambda_d: Var) -> Self {
        VeraLayer {
            target,
            lambda_b,
            lambda_d,
        }
    }

    /// The adapted module's full name.
    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// The adapted site.
    pub fn site(&self) -> SiteId {
        self.target.site
    }

    /// `vera_lambda_b` `[out]`.
    pub fn lambda_b(&self) -> &Tensor {
        self.lambda_b.as_tensor()
    }

    /// `vera_lambda_d` `[r]`.
    pub fn lambda_d(&self) -> &Tensor {
        self.lambda_d.as_tensor()
    }

    /// The scaled factors `(lambda_d A[:, :in], lambda_b B[:out])`, `[r, in]` and `[out, r]`, with the
    /// vectors as `read` gives them (tracked for training, plain for merging).
    fn factors(&self, p: &Projections, read: impl Fn(&Var) -> Tensor) -> Result<(Tensor, Tensor)> {
        let d = read(&self.lambda_d).unsqueeze(1)?;
        let b = read(&self.lambda_b).unsqueeze(1)?;
        let a = p.a_for(self.target.in_features)?.broadcast_mul(&d)?;
        let bb = p.b_for(self.target.out_features)?.broadcast_mul(&b)?;
        Ok((a, bb))
    }

    /// `(lambda_b B) (lambda_d A)` `[out, in]`: what merging adds to the frozen weight.
    pub fn delta_weight(&self, p: &Projections) -> Result<Tensor> {
        let (a, b) = self.factors(p, |v| v.as_tensor().detach())?;
        Ok(b.matmul(&a)?)
    }

    /// The update for input `x` (last dimension `in`): the low-rank product with the scaled factors, which is
    /// HF PEFT's `lambda_b * ((lambda_d * (x A^T)) B^T)` with the scalings moved onto the factors.
    fn update(&self, x: &Tensor, p: &Projections, dropout: &Dropout) -> Result<Tensor> {
        let (a, b) = self.factors(p, peft_core::grad::param)?;
        let x2 = dropout.apply(x)?;
        peft_kernels::low_rank(&x2, &a.to_dtype(x.dtype())?, &b.to_dtype(x.dtype())?, 1.0)
    }
}

/// A built VeRA adapter.
#[derive(Debug)]
pub struct Vera {
    config: VeraConfig,
    projections: Projections,
    layers: Vec<VeraLayer>,
    /// Site to index in `layers`.
    layer_at: SiteIndex,
    biases: Vec<TrainableBias>,
    /// Site to index in `biases`.
    bias_at: SiteIndex,
    dropout: Dropout,
    merged: MergeFlag,
}

impl Vera {
    /// The adapter of a resolved `config` over `layers` and `biases` (each in site order) of a model with
    /// `num_sites` sites.
    pub(crate) fn new(
        config: VeraConfig,
        projections: Projections,
        layers: Vec<VeraLayer>,
        biases: Vec<TrainableBias>,
        dropout: Dropout,
        num_sites: usize,
    ) -> Self {
        let layer_at = SiteIndex::new(num_sites, layers.iter().map(|l| l.site()));
        let bias_at = SiteIndex::new(num_sites, biases.iter().map(|b| b.site));
        Vera {
            config,
            projections,
            layers,
            layer_at,
            biases,
            bias_at,
            dropout,
            merged: MergeFlag::default(),
        }
    }

    /// The adapted modules, in site order.
    pub fn layers(&self) -> &[VeraLayer] {
        &self.layers
    }

    /// The shared projections.
    pub fn projections(&self) -> &Projections {
        &self.projections
    }

    /// The resolved configuration (what `adapter_config.json` will hold).
    pub fn vera_config(&self) -> &VeraConfig {
        &self.config
    }

    /// Whether the update is currently folded into a model's weights.
    pub fn is_merged(&self) -> bool {
        self.merged.is_merged()
    }

    /// Every trained (key, variable).
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::with_capacity(2 * self.layers.len() + self.biases.len());
        for l in &self.layers {
            vars.push((lambda_key(l.name(), "b"), l.lambda_b.clone()));
            vars.push((lambda_key(l.name(), "d"), l.lambda_d.clone()));
        }
        for b in &self.biases {
            vars.push((b.key.clone(), b.value.clone()));
        }
        vars
    }

    /// Adds `sign * (lambda_b B)(lambda_d A)` to every adapted frozen weight, after checking them all.
    fn fold(&self, model: &mut dyn BaseModel, sign: f64) -> Result<()> {
        check_merge_targets(
            model,
            "VeRA",
            self.layers.iter().map(|l| {
                (
                    l.site(),
                    l.name(),
                    [l.target.out_features, l.target.in_features],
                )
            }),
        )?;
        for l in &self.layers {
            let delta = (l.delta_weight(&self.projections)? * sign)?;
            model
                .frozen_linear_mut(l.site())
                .expect("checked above")
                .add_to_weight(&delta)?;
        }
        Ok(())
    }
}

impl Hooks for Vera {
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        let y = next(x)?;
        let layer = match self.layer_at.get(site) {
            Some(i) if !self.is_merged() => &self.layers[i],
            _ => return Ok(y),
        };
        Ok((y + layer.update(x, &self.projections, &self.dropout)?)?)
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        let i = self.bias_at.get(site)?;
        Some(peft_core::grad::param(&self.biases[i].value))
    }

    /// The adapted projections, and those whose bias trains.
    fn touches(&self, site: SiteId) -> bool {
        self.layer_at.get(site).is_some() || self.bias_at.get(site).is_some()
    }
}

impl Adapter for Vera {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.named_vars()
    }

    /// A snapshot of the trained vectors (copies, so later steps leave it as it was), and the projections
    /// with `save_projection`.
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().detach().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        if self.config.save_projection {
            out.push((VERA_A_KEY.into(), self.projections.a().copy()?));
            out.push((VERA_B_KEY.into(), self.projections.b().copy()?));
        }
        Ok(out)
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        if self.is_merged() {
            return Err(PeftError::Unsupported(
                "cannot load tensors into a merged VeRA adapter: unmerge it from the model first"
                    .into(),
            ));
        }
        let vars = self.named_vars();
        let has_projection = tensors.contains_key(VERA_A_KEY) || tensors.contains_key(VERA_B_KEY);
        if self.config.save_projection && !has_projection {
            return Err(PeftError::Config(format!(
                "the config says save_projection = true but the adapter file has no `{VERA_A_KEY}` / \
                 `{VERA_B_KEY}` (as HF PEFT, this refuses to guess them): set save_projection = false to \
                 draw them from projection_prng_key = {}",
                self.config.projection_prng_key
            )));
        }
        if !self.config.save_projection && has_projection {
            return Err(PeftError::Config(format!(
                "the adapter file holds `{VERA_A_KEY}` / `{VERA_B_KEY}` but its config says save_projection = \
                 false: set save_projection = true to use the saved projections"
            )));
        }
        // Check everything before changing anything, so that a bad file leaves the adapter as it was.
        let mut expected: Vec<(&str, &[usize])> =
            vars.iter().map(|(k, v)| (k.as_str(), v.dims())).collect();
        let (a, b) = (self.projections.a(), self.projections.b());
        if self.config.save_projection {
            expected.push((VERA_A_KEY, a.dims()));
            expected.push((VERA_B_KEY, b.dims()));
        }
        let shapes_from = format!(
            "the model with this VeRA config (r = {}, projections sized for the widest adapted module)",
            self.config.r
        );
        check_file_tensors(
            tensors,
            &expected,
            &ExpectedTensors {
                method: "VeRA",
                fields: "target_modules / layers_to_transform / bias",
                shapes_from: &shapes_from,
            },
        )?;
        for (key, var) in &vars {
            var.set(&tensors[key].to_dtype(DType::F32)?)?;
        }
        if self.config.save_projection {
            self.projections
                .set(&tensors[VERA_A_KEY], &tensors[VERA_B_KEY])?;
        }
        Ok(())
    }

    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.merged.merge("VeRA", || self.fold(model, 1.0))
    }

    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.merged.unmerge("VeRA", || self.fold(model, -1.0))
    }
}
