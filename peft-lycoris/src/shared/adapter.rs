//! The adapter LoHa and LoKr share: per adapted module, factors whose product is an update `ΔW` (`[out, in]`)
//! scaled by `alpha / r`; the forward pass is `y = base(x) + x ΔW^T`, as HF PEFT's LyCORIS layers compute it
//! (`F.linear(x, ΔW)` after the base layer), with the module and rank dropouts while training. Merging adds
//! `ΔW` to the frozen weights; unmerging subtracts the current `ΔW`, as HF does. The factors are saved under
//! `base_model.model.<module>.<name>` (`hada_w1_a`, `lokr_w1`, ...), HF PEFT's keys.

use std::collections::HashMap;
use std::fmt::Debug;

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::{Hooks, LinearFn};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteId;
use peft_core::tuner::{check_file_tensors, ExpectedTensors, MODULE_KEY_PREFIX};
use peft_core::tuner::{MergeFlag, SiteIndex};
use peft_core::{PeftError, Result};

use crate::shared::dropout::LycorisDropout;
use crate::shared::targets::Target;

/// HF PEFT's key of the parameter `param` (`hada_w1_a`, `lokr_w1`, ...) of `module`.
pub fn factor_key(module: &str, param: &str) -> String {
    format!("{MODULE_KEY_PREFIX}{module}.{param}")
}

/// The trainable factors of one module and how they multiply into its unscaled update.
pub trait Factors: Debug + Send + Sync {
    /// HF PEFT's parameter names and the variables, in a fixed order.
    fn named(&self) -> Vec<(&'static str, &Var)>;

    /// The unscaled `[out, in]` update from the factors as `read` gives them (tracked or detached).
    fn product(&self, read: &dyn Fn(&Var) -> Tensor) -> Result<Tensor>;
}

/// The update of one adapted module.
#[derive(Debug)]
pub struct LycorisLayer<F> {
    target: Target,
    factors: F,
    scale: f64,
}

impl<F: Factors> LycorisLayer<F> {
    /// The update of `target` from `factors`, scaled by `alpha / r` of the target.
    pub(crate) fn new(target: Target, factors: F) -> Self {
        let scale = target.alpha / target.r as f64;
        LycorisLayer {
            target,
            factors,
            scale,
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

    /// The resolved target (rank, alpha, features).
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The factors.
    pub fn factors(&self) -> &F {
        &self.factors
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The scaled `[out, in]` update, detached: what merging adds to the frozen weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let product = self.factors.product(&|v: &Var| v.as_tensor().detach())?;
        Ok((product * self.scale)?)
    }

    /// The scaled update as the forward pass uses it (tracked while training), rows dropped per `dropout`.
    fn forward_weight(&self, dropout: &LycorisDropout) -> Result<Tensor> {
        let product = self.factors.product(&peft_core::grad::param)?;
        let w = (product * self.scale)?;
        Ok(
            match dropout.rank_mask(self.target.out_features, w.device())? {
                Some(mask) => w.broadcast_mul(&mask)?,
                None => w,
            },
        )
    }
}

/// A built LoHa or LoKr adapter: the saved config `C` and one [`LycorisLayer`] per adapted module.
#[derive(Debug)]
pub struct LycorisAdapter<C, F> {
    config: C,
    method: &'static str,
    layers: Vec<LycorisLayer<F>>,
    /// Site to index in `layers`.
    layer_at: SiteIndex,
    dropout: LycorisDropout,
    merged: MergeFlag,
}

impl<C: PeftMethod + Clone + 'static, F: Factors> LycorisAdapter<C, F> {
    /// The adapter of a resolved `config` over `layers` (in site order) of a model with `num_sites` sites;
    /// `method` names it in errors.
    pub(crate) fn new(
        config: C,
        method: &'static str,
        layers: Vec<LycorisLayer<F>>,
        dropout: LycorisDropout,
        num_sites: usize,
    ) -> Self {
        let layer_at = SiteIndex::new(num_sites, layers.iter().map(|l| l.site()));
        LycorisAdapter {
            config,
            method,
            layers,
            layer_at,
            dropout,
            merged: MergeFlag::default(),
        }
    }

    /// The adapted modules, in site order.
    pub fn layers(&self) -> &[LycorisLayer<F>] {
        &self.layers
    }

    /// The adapted module named `name` (full HF module name).
    pub fn layer(&self, name: &str) -> Option<&LycorisLayer<F>> {
        self.layers.iter().find(|l| l.name() == name)
    }

    /// The resolved configuration (what `adapter_config.json` will hold).
    pub fn resolved_config(&self) -> &C {
        &self.config
    }

    /// Whether the update is currently folded into a model's weights.
    pub fn is_merged(&self) -> bool {
        self.merged.is_merged()
    }

    /// Every (key, variable) this adapter saves, module by module.
    fn named_vars(&self) -> Vec<(String, Var)> {
        self.layers
            .iter()
            .flat_map(|l| {
                l.factors
                    .named()
                    .into_iter()
                    .map(|(param, var)| (factor_key(l.name(), param), var.clone()))
            })
            .collect()
    }

    /// Adds `sign * ΔW` to every adapted frozen weight, after checking them all.
    fn fold(&self, model: &mut dyn BaseModel, sign: f64) -> Result<()> {
        let mut deltas = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let frozen = model.frozen_linear(l.site()).ok_or_else(|| {
                PeftError::Unsupported(format!(
                    "the model has no linear layer at `{}`: merge into the model the {} adapter was built for",
                    l.name(),
                    self.method
                ))
            })?;
            if let Some(q) = frozen.quantized_weight() {
                return Err(peft_core::frozen::quantized_merge_refused(q));
            }
            let delta = (l.delta_weight()? * sign)?;
            let (out, inp) = frozen.dims();
            if [out, inp] != delta.dims() {
                return Err(PeftError::ShapeMismatch {
                    what: format!("{}.weight", l.name()),
                    expected_from: format!("the {} adapter", self.method),
                    expected: delta.dims().to_vec(),
                    got_from: "the model".into(),
                    got: vec![out, inp],
                });
            }
            deltas.push(delta);
        }
        for (l, delta) in self.layers.iter().zip(deltas) {
            model
                .frozen_linear_mut(l.site())
                .expect("checked above")
                .add_to_weight(&delta)?;
        }
        Ok(())
    }
}

impl<C: PeftMethod + Clone + 'static, F: Factors> Hooks for LycorisAdapter<C, F> {
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        let y = next(x)?;
        let layer = match self.layer_at.get(site) {
            Some(i) if !self.is_merged() => &self.layers[i],
            _ => return Ok(y),
        };
        if self.dropout.skips_module() {
            return Ok(y);
        }
        let w = layer.forward_weight(&self.dropout)?.to_dtype(x.dtype())?;
        Ok((y + x.broadcast_matmul(&w.t()?)?)?)
    }

    /// The adapted projections.
    fn touches(&self, site: SiteId) -> bool {
        self.layer_at.get(site).is_some()
    }
}

impl<C: PeftMethod + Clone + 'static, F: Factors> Adapter for LycorisAdapter<C, F> {
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
        let method = self.method;
        if self.is_merged() {
            return Err(PeftError::Unsupported(format!(
                "cannot load tensors into a merged {method} adapter: unmerge it from the model first"
            )));
        }
        let vars = self.named_vars();
        // Check everything before changing anything, so that a bad file leaves the adapter as it was.
        let expected: Vec<(&str, &[usize])> =
            vars.iter().map(|(k, v)| (k.as_str(), v.dims())).collect();
        check_file_tensors(
            tensors,
            &expected,
            &ExpectedTensors {
                method,
                fields: "target_modules / layers_to_transform / r / rank_pattern (and for LoKr decompose_both, \
                         decompose_factor)",
                shapes_from: &format!("the model with this {method} config (see r, rank_pattern)"),
            },
        )?;
        for (key, var) in &vars {
            var.set(&tensors[key].to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.merged.merge(self.method, || self.fold(model, 1.0))
    }

    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.merged.unmerge(self.method, || self.fold(model, -1.0))
    }
}
