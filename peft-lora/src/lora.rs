//! The built LoRA adapter: for every adapted module `y = W x (+ b) + scale * B A dropout(x)`, with `lora_A`
//! `[r, in]`, `lora_B` `[out, r]` and `scale = lora_alpha / r` (rsLoRA: `/ sqrt(r)`), saved under HF PEFT's keys
//! `base_model.model.<module>.lora_A.weight` / `lora_B.weight`. Trainable biases (`bias = "all"` /
//! `"lora_only"`) replace the frozen ones through [`Hooks::bias`]. Merging adds `scale * B A` to the frozen
//! weights, after which the linear hook adds nothing until unmerged.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::{Hooks, LinearFn};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::{SiteId, SiteKind};
use peft_core::{PeftError, Result};
use rand::SeedableRng;

use crate::config::{BiasMode, LoraConfig};
use crate::dropout::Dropout;
use crate::targets::{resolve_targets, Target};

/// Prefix of every key HF PEFT saves for a non-prompt method (`PeftModel.base_model.model`).
const KEY_PREFIX: &str = "base_model.model.";

/// HF PEFT's key of `lora_A` (`which = "A"`) or `lora_B` of `module`.
pub fn lora_key(module: &str, which: &str) -> String {
    format!("{KEY_PREFIX}{module}.lora_{which}.weight")
}

/// HF PEFT's key of a trained bias: under `base_layer` for a module LoRA wraps.
pub fn bias_key(module: &str, wrapped: bool) -> String {
    if wrapped {
        format!("{KEY_PREFIX}{module}.base_layer.bias")
    } else {
        format!("{KEY_PREFIX}{module}.bias")
    }
}

#[typetag::serde(name = "LORA")]
impl PeftMethod for LoraConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(self.build_lora(init)?))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn with_common(&self, common: CommonConfig) -> Box<dyn PeftMethod> {
        Box::new(LoraConfig {
            common,
            ..self.clone()
        })
    }

    fn size_knob(&self) -> Option<&'static str> {
        Some("r")
    }

    /// Rank `size`, with `lora_alpha` scaled along so that `lora_alpha / r` (the update's scale) stays as
    /// configured.
    fn with_size(
        &self,
        size: usize,
        _spec: &peft_core::spec::ModelSpec,
    ) -> Option<Box<dyn PeftMethod>> {
        let r = size.max(1);
        Some(Box::new(LoraConfig {
            r,
            lora_alpha: self.lora_alpha * r as f64 / self.r.max(1) as f64,
            ..self.clone()
        }))
    }
}

impl LoraConfig {
    /// Builds the adapter for `init.model` (what [`PeftMethod::build`] does, with the concrete type). A config
    /// read from a saved adapter (`inference_mode`) starts from zeros and draws nothing: its tensors come from
    /// the file.
    pub fn build_lora(&self, init: &mut InitCtx) -> Result<Lora> {
        self.check_supported()?;
        let model = init.model;
        let spec = model.spec();
        let device = model.device().clone();
        let (targets, saved_targets) = resolve_targets(self, spec)?;

        let mut config = self.clone();
        config.target_modules = Some(saved_targets);
        // HF PEFT switches fan_in_fan_out on for Conv1D modules (and off for nn.Linear), with a warning.
        config.fan_in_fan_out = targets.iter().any(|t| t.fan_in_fan_out);
        if config.common.task_type.is_none() {
            config.common.task_type =
                Some(peft_core::prompt_learning::default_task_type(init.model).into());
        }

        let fresh = if self.common.inference_mode {
            None
        } else {
            Some(self.init_lora_weights.resolve()?)
        };
        let mut layers = Vec::with_capacity(targets.len());
        let mut layer_at = vec![None; spec.sites.len()];
        for target in targets {
            let (a, b) = match fresh {
                Some(how) => crate::init::initial_pair(
                    how,
                    target.r,
                    target.in_features,
                    target.out_features,
                    &mut init.rng,
                    &device,
                )?,
                None => (
                    Tensor::zeros((target.r, target.in_features), DType::F32, &device)?,
                    Tensor::zeros((target.out_features, target.r), DType::F32, &device)?,
                ),
            };
            layer_at[target.site.0] = Some(layers.len());
            layers.push(LoraLayer {
                scale: self.scale_for(target.r, target.alpha),
                a: Var::from_tensor(&a)?,
                b: Var::from_tensor(&b)?,
                target,
            });
        }

        let (biases, bias_at) = trainable_biases(self.bias, model, &layer_at)?;
        // Drawn after the factors, so that the same seed gives the same factors whatever the dropout.
        let dropout_seed = match fresh {
            Some(_) => rand::Rng::random(&mut init.rng),
            None => 0,
        };
        let dropout = Dropout::new(
            self.lora_dropout,
            rand::rngs::StdRng::seed_from_u64(dropout_seed),
        );
        Ok(Lora {
            config,
            layers,
            layer_at,
            biases,
            bias_at,
            dropout,
            merged: AtomicBool::new(false),
        })
    }
}

/// Copies of the frozen biases that `mode` trains, with their HF PEFT keys.
fn trainable_biases(
    mode: BiasMode,
    model: &dyn BaseModel,
    layer_at: &[Option<usize>],
) -> Result<(Vec<TrainableBias>, Vec<Option<usize>>)> {
    let spec = model.spec();
    let mut bias_at = vec![None; spec.sites.len()];
    let mut biases = Vec::new();
    if mode == BiasMode::None {
        return Ok((biases, bias_at));
    }
    let parameters: HashMap<String, Tensor> = model.parameters().into_iter().collect();
    for (id, site) in spec.iter_sites() {
        let wrapped = layer_at[id.0].is_some();
        if !site.has_bias || (mode == BiasMode::LoraOnly && !wrapped) {
            continue;
        }
        let frozen = match site.kind {
            SiteKind::Linear { .. } => model.frozen_linear(id).and_then(|l| l.bias().cloned()),
            SiteKind::Norm { .. } => None,
        };
        let value = frozen
            .or_else(|| parameters.get(&format!("{}.bias", site.name)).cloned())
            .ok_or_else(|| {
                PeftError::Unsupported(format!(
                    "bias = {mode:?}: the model reports a bias at `{}` but does not expose it",
                    site.name
                ))
            })?;
        bias_at[id.0] = Some(biases.len());
        biases.push(TrainableBias {
            key: bias_key(&site.name, wrapped),
            value: Var::from_tensor(&value.to_dtype(DType::F32)?.detach())?,
        });
    }
    Ok((biases, bias_at))
}

/// The low-rank update of one module.
#[derive(Debug)]
pub struct LoraLayer {
    target: Target,
    a: Var,
    b: Var,
    scale: f64,
}

impl LoraLayer {
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

    /// `scale * B A` `[out, in]`: what merging adds to the frozen weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?)
    }

    /// `scale * dropout(x) A^T B^T` over the last dimension of `x` (HF PEFT's order of operations).
    fn update(&self, x: &Tensor, dropout: &Dropout) -> Result<Tensor> {
        let a = peft_core::grad::param(&self.a).to_dtype(x.dtype())?;
        let b = peft_core::grad::param(&self.b).to_dtype(x.dtype())?;
        // The dropout mask is drawn element by element in order, so it does not depend on x's shape.
        let x2 = dropout.apply(x)?;
        // One fused op (f32 on the CPU) with its own backward; B has `out_features` rows.
        peft_core::nn::low_rank(&x2, &a, &b, self.scale)
    }
}

/// A frozen bias made trainable.
#[derive(Debug)]
struct TrainableBias {
    key: String,
    value: Var,
}

/// A built LoRA adapter.
#[derive(Debug)]
pub struct Lora {
    config: LoraConfig,
    layers: Vec<LoraLayer>,
    /// Site index to index in `layers`.
    layer_at: Vec<Option<usize>>,
    biases: Vec<TrainableBias>,
    /// Site index to index in `biases`.
    bias_at: Vec<Option<usize>>,
    dropout: Dropout,
    merged: AtomicBool,
}

impl Lora {
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

    /// Whether the update is currently folded into a model's weights.
    pub fn is_merged(&self) -> bool {
        self.merged.load(Ordering::SeqCst)
    }

    /// Every (key, variable) this adapter saves.
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::with_capacity(2 * self.layers.len() + self.biases.len());
        for l in &self.layers {
            vars.push((lora_key(l.name(), "A"), l.a.clone()));
            vars.push((lora_key(l.name(), "B"), l.b.clone()));
        }
        for b in &self.biases {
            vars.push((b.key.clone(), b.value.clone()));
        }
        vars
    }

    /// Checks that every adapted site is a linear layer of `model` with the expected shape.
    fn check_model(&self, model: &dyn BaseModel) -> Result<()> {
        for l in &self.layers {
            let frozen = model.frozen_linear(l.site()).ok_or_else(|| {
                PeftError::Unsupported(format!(
                    "the model has no linear layer at `{}`: merge into the model the adapter was built for",
                    l.name()
                ))
            })?;
            let expected = [l.target.out_features, l.target.in_features];
            if frozen.weight().dims() != expected {
                return Err(PeftError::ShapeMismatch {
                    what: format!("{}.weight", l.name()),
                    expected_from: "the LoRA adapter".into(),
                    expected: expected.to_vec(),
                    got_from: "the model".into(),
                    got: frozen.weight().dims().to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Adds `sign * scale * B A` to every adapted frozen weight.
    fn fold(&self, model: &mut dyn BaseModel, sign: f64) -> Result<()> {
        self.check_model(model)?;
        for l in &self.layers {
            let delta = (l.delta_weight()? * sign)?;
            model
                .frozen_linear_mut(l.site())
                .expect("checked above")
                .add_to_weight(&delta)?;
        }
        Ok(())
    }
}

impl Hooks for Lora {
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        let y = next(x)?;
        let layer = match self.layer_at.get(site.0).copied().flatten() {
            Some(i) if !self.is_merged() => &self.layers[i],
            _ => return Ok(y),
        };
        Ok((y + layer.update(x, &self.dropout)?)?)
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        let i = self.bias_at.get(site.0).copied().flatten()?;
        Some(peft_core::grad::param(&self.biases[i].value))
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
        let expected: BTreeSet<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        let unexpected: Vec<&String> = tensors
            .keys()
            .filter(|k| !expected.contains(k.as_str()))
            .collect();
        if !unexpected.is_empty() {
            let mut unexpected = unexpected;
            unexpected.sort();
            return Err(PeftError::Config(format!(
                "the adapter file holds {} tensor(s) this LoRA config does not describe, e.g. {:?}: the config's \
                 target_modules / layers_to_transform / bias do not match the file (was it edited, or saved for \
                 another model?)",
                unexpected.len(),
                &unexpected[..unexpected.len().min(3)]
            )));
        }
        // Check everything before changing anything, so that a bad file leaves the adapter as it was.
        for (key, var) in &vars {
            let t = tensors.get(key).ok_or_else(|| {
                PeftError::Config(format!(
                    "the adapter file has no tensor `{key}`, which this LoRA config needs (it has {} tensors): \
                     the config's target_modules / bias do not match the file",
                    tensors.len()
                ))
            })?;
            if t.dims() != var.dims() {
                return Err(PeftError::ShapeMismatch {
                    what: key.clone(),
                    expected_from: format!(
                        "the model with this LoRA config (r = {}, see rank_pattern)",
                        self.config.r
                    ),
                    expected: var.dims().to_vec(),
                    got_from: "the adapter file".into(),
                    got: t.dims().to_vec(),
                });
            }
        }
        for (key, var) in &vars {
            var.set(&tensors[key].to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        if self.is_merged() {
            return Err(PeftError::Unsupported(
                "this LoRA adapter is already merged into the model's weights: merging twice would add the \
                 update twice (unmerge_from first)"
                    .into(),
            ));
        }
        self.fold(model, 1.0)?;
        self.merged.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        if !self.is_merged() {
            return Err(PeftError::Unsupported(
                "this LoRA adapter is not merged, so there is nothing to unmerge (merge_into first)".into(),
            ));
        }
        self.fold(model, -1.0)?;
        self.merged.store(false, Ordering::SeqCst);
        Ok(())
    }
}
