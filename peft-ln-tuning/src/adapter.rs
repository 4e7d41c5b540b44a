//! The built LayerNorm-tuning adapter: for every selected norm, a trainable copy of its weight (and of its bias
//! where the checkpoint has one), which the model uses instead of the frozen ones through
//! [`Hooks::norm_weight`] and [`Hooks::bias`]. Each copy starts equal to the frozen tensor, so a fresh adapter
//! is a no-op. Saved under HF PEFT's keys, `base_model.model.<norm>.ln_tuning_layers.weight` / `.bias`.
//!
//! Merging is refused: HF PEFT merges by swapping the tuned copy in for the frozen module, but the zoo's
//! models offer no way to rewrite a norm's parameters ([`BaseModel`] lets an adapter change linear weights
//! only), and the adapter already is the tuned norm, so nothing would be gained.
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx};
//! use peft_ln_tuning::{ln_tuning_key, LnTuningConfig};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::gpt2(0); // hidden 32: ln_1, ln_2 of two layers and ln_f
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let ln = LnTuningConfig::default().build_ln_tuning(&mut init).unwrap();
//! assert_eq!(ln.num_trainable(), 5 * (32 + 32)); // weight and bias of each LayerNorm
//! assert_eq!(ln.trainable()[0].0, ln_tuning_key("transformer.h.0.ln_1", "weight"));
//! ```

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::Hooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::{SiteId, SiteKind};
use peft_core::tuner::{
    check_file_tensors, describe_model, ExpectedTensors, SiteIndex, MODULE_KEY_PREFIX,
};
use peft_core::{PeftError, Result};

use crate::config::LnTuningConfig;

/// HF PEFT's key of the tuned `param` (`"weight"` or `"bias"`) of the norm `module`.
pub fn ln_tuning_key(module: &str, param: &str) -> String {
    format!("{MODULE_KEY_PREFIX}{module}.ln_tuning_layers.{param}")
}

/// The trained copy of one norm.
#[derive(Debug)]
pub struct TunedNorm {
    site: SiteId,
    name: String,
    weight: Var,
    bias: Option<Var>,
}

impl TunedNorm {
    /// The norm's full module name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The norm's site.
    pub fn site(&self) -> SiteId {
        self.site
    }

    /// The trained weight `[dim]`.
    pub fn weight(&self) -> &Tensor {
        self.weight.as_tensor()
    }

    /// The trained bias `[dim]`, where the norm has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref().map(Var::as_tensor)
    }
}

/// A built LayerNorm-tuning adapter.
#[derive(Debug)]
pub struct LnTuning {
    config: LnTuningConfig,
    norms: Vec<TunedNorm>,
    /// Site to index in `norms`.
    norm_at: SiteIndex,
    notes: Vec<String>,
}

/// The frozen parameter `name` of `model`, as f32.
fn frozen_parameter(parameters: &HashMap<String, Tensor>, name: &str) -> Result<Option<Tensor>> {
    parameters
        .get(name)
        .map(|t| Ok(t.to_dtype(DType::F32)?.copy()?))
        .transpose()
}

impl LnTuning {
    /// Copies the frozen weights and biases of the norms `sites` of `model` (a resolved `config`); `notes`
    /// are what resolving the config decided, to which the adapter's own are added.
    pub(crate) fn new(
        config: LnTuningConfig,
        model: &dyn BaseModel,
        sites: &[SiteId],
        mut notes: Vec<String>,
    ) -> Result<Self> {
        let spec = model.spec();
        let parameters: HashMap<String, Tensor> = model.parameters().into_iter().collect();
        let mut norms = Vec::with_capacity(sites.len());
        let mut plain = Vec::new();
        for &id in sites {
            let site = spec.site(id);
            let SiteKind::Norm { dim } = site.kind else {
                unreachable!("select_norms returns norm sites only")
            };
            // A norm without an elementwise weight (OPT's layer_norm_elementwise_affine = false) has no
            // parameter to copy: HF PEFT's copy of it trains nothing either.
            let Some(weight) = frozen_parameter(&parameters, &format!("{}.weight", site.name))?
            else {
                plain.push(site.name.as_str());
                continue;
            };
            let bias = match (site.has_bias, frozen_parameter(&parameters, &format!("{}.bias", site.name))?) {
                (false, _) => None,
                (true, Some(b)) => Some(Var::from_tensor(&b)?),
                (true, None) => {
                    return Err(PeftError::Unsupported(format!(
                        "the model's spec says the norm {} has a bias, but the model does not give it (a model \
                         bug)",
                        site.name
                    )))
                }
            };
            if weight.dims() != [dim] {
                return Err(PeftError::ShapeMismatch {
                    what: format!("{}.weight", site.name),
                    expected_from: "the model's spec".into(),
                    expected: vec![dim],
                    got_from: "the model's parameters".into(),
                    got: weight.dims().to_vec(),
                });
            }
            norms.push(TunedNorm {
                site: id,
                name: site.name.clone(),
                weight: Var::from_tensor(&weight)?,
                bias,
            });
        }
        if norms.is_empty() {
            return Err(PeftError::Config(format!(
                "the norms target_modules selects in {} have no elementwise weight to tune ({}): choose norms \
                 that have one",
                describe_model(spec),
                plain.join(", ")
            )));
        }
        let without_bias: Vec<&str> = norms
            .iter()
            .filter(|n| n.bias.is_none())
            .map(|n| n.name.as_str())
            .collect();
        if !without_bias.is_empty() {
            notes.push(format!(
                "{} norm(s) have no bias (RMS norms, or LayerNorms saved without one): only their weight trains \
                 ({}{})",
                without_bias.len(),
                without_bias[..without_bias.len().min(3)].join(", "),
                if without_bias.len() > 3 { ", ..." } else { "" }
            ));
        }
        if !plain.is_empty() {
            notes.push(format!(
                "{} selected norm(s) have no elementwise weight or bias, so nothing trains there: {}",
                plain.len(),
                plain.join(", ")
            ));
        }
        let norm_at = SiteIndex::new(spec.sites.len(), norms.iter().map(|n| n.site));
        Ok(LnTuning {
            config,
            norms,
            norm_at,
            notes,
        })
    }

    /// The tuned norms, in site order.
    pub fn norms(&self) -> &[TunedNorm] {
        &self.norms
    }

    /// The resolved configuration (what `adapter_config.json` will hold).
    pub fn ln_tuning_config(&self) -> &LnTuningConfig {
        &self.config
    }

    fn tuned(&self, site: SiteId) -> Option<&TunedNorm> {
        let i = self.norm_at.get(site)?;
        Some(&self.norms[i])
    }

    /// Every trained (key, variable), weight before bias, norms in site order (HF PEFT's key order).
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::with_capacity(2 * self.norms.len());
        for n in &self.norms {
            vars.push((ln_tuning_key(&n.name, "weight"), n.weight.clone()));
            if let Some(b) = &n.bias {
                vars.push((ln_tuning_key(&n.name, "bias"), b.clone()));
            }
        }
        vars
    }
}

impl Hooks for LnTuning {
    fn norm_weight(&self, site: SiteId) -> Option<Tensor> {
        self.tuned(site).map(|n| peft_core::grad::param(&n.weight))
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        self.tuned(site)?.bias.as_ref().map(peft_core::grad::param)
    }

    /// The tuned norms.
    fn touches(&self, site: SiteId) -> bool {
        self.tuned(site).is_some()
    }
}

impl Adapter for LnTuning {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.named_vars()
    }

    /// A snapshot of the tuned tensors (copies, so later steps leave it as it was).
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.named_vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().detach().copy()?)))
            .collect()
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let vars = self.named_vars();
        // Check everything before changing anything, so that a bad file leaves the adapter as it was.
        let expected: Vec<(&str, &[usize])> =
            vars.iter().map(|(k, v)| (k.as_str(), v.dims())).collect();
        check_file_tensors(
            tensors,
            &expected,
            &ExpectedTensors {
                method: "LN tuning",
                fields: "target_modules / exclude_modules",
                shapes_from: "the model's norms",
            },
        )?;
        for (key, var) in &vars {
            var.set(&tensors[key].to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        let _ = model;
        Err(PeftError::Unsupported(
            "LN tuning adapters are not merged here: the zoo's models let an adapter rewrite linear weights only, \
             not a norm's weight or bias (HF PEFT merges by swapping the tuned norm in); use the adapter as it \
             is, its tuned norms replace the frozen ones at every forward pass"
                .into(),
        ))
    }

    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        let _ = model;
        Err(PeftError::Unsupported(
            "LN tuning adapters are never merged here, so there is nothing to unmerge".into(),
        ))
    }
}
