//! A trained sequence-classification head carried by an adapter, as HF PEFT's `modules_to_save` carries
//! `score` / `classifier` for `SEQ_CLS` tasks: [`WithClassifier`] wraps any adapter, adds the head's variables
//! to its trainable set, saves them under HF PEFT's key and hands the head to tasks through
//! [`Adapter::classifier`].
//!
//! ```
//! use peft_core::head::{check_modules_to_save, head_key};
//! assert_eq!(head_key("score", true), "base_model.score.weight");
//! assert_eq!(head_key("score", false), "base_model.model.score.weight");
//! // What HF PEFT writes into a SEQ_CLS adapter's config is accepted; other modules are not.
//! let heads = vec!["classifier".to_string(), "score".to_string()];
//! assert!(check_modules_to_save(Some(&heads), Some("SEQ_CLS"), "LoRA").is_ok());
//! assert!(check_modules_to_save(Some(&heads), Some("CAUSAL_LM"), "LoRA").is_err());
//! ```

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use rand_distr::{Distribution, Normal};

use crate::error::{PeftError, Result};
use crate::hooks::{Ctx, Hooks, KvPrefix, LinearFn};
use crate::method::{Adapter, InitCtx, PeftMethod};
use crate::model::BaseModel;
use crate::spec::SiteId;

/// HF PEFT's task type for sequence classification.
pub const SEQ_CLS: &str = "SEQ_CLS";

/// HF PEFT's task type for token classification.
pub const TOKEN_CLS: &str = "TOKEN_CLS";

/// The saved key of a head module's weight: prompt-learning methods wrap the model directly
/// (`base_model.<module>`), the others through a tuner model (`base_model.model.<module>`).
pub fn head_key(module: &str, prompt_learning: bool) -> String {
    if prompt_learning {
        format!("base_model.{module}.weight")
    } else {
        format!("base_model.model.{module}.weight")
    }
}

/// Module names transformers gives classification heads, which HF PEFT's `PeftModelForSequenceClassification`
/// and `PeftModelForTokenClassification` add to every adapter config's `modules_to_save`.
pub const HEAD_MODULES: [&str; 2] = ["classifier", "score"];

/// Checks a method config's `modules_to_save`: unset or empty, or, for a `SEQ_CLS` / `TOKEN_CLS` adapter,
/// naming classification heads only (HF PEFT writes `["classifier", "score"]` there, repeated for some
/// methods); such a head is carried by [`WithClassifier`], which [`crate::adapter_io`] wraps around an adapter
/// whose file holds one. Anything else is refused, naming `method`, since no other module can be trained and
/// saved whole here.
pub fn check_modules_to_save(
    modules: Option<&Vec<String>>,
    task_type: Option<&str>,
    method: &str,
) -> Result<()> {
    let Some(modules) = modules.filter(|m| !m.is_empty()) else {
        return Ok(());
    };
    let classifies = matches!(task_type, Some(SEQ_CLS | TOKEN_CLS));
    if classifies && modules.iter().all(|m| HEAD_MODULES.contains(&m.as_str())) {
        return Ok(());
    }
    Err(PeftError::Unsupported(format!(
        "modules_to_save = {modules:?} is not supported by {method} here: only a classification head \
         ({HEAD_MODULES:?}, task_type SEQ_CLS or TOKEN_CLS) is; remove it (train a classifier head with the \
         head-classification task instead)"
    )))
}

/// Whether a saved key belongs to a classification head (`score` / `classifier` weight or bias).
fn is_head_key(key: &str) -> bool {
    head_module_of(key, "weight").is_some() || head_module_of(key, "bias").is_some()
}

/// The head module (one of [`HEAD_MODULES`]) whose `param` (`weight`, `bias`) the saved `key` is.
fn head_module_of<'k>(key: &'k str, param: &str) -> Option<&'k str> {
    let module = key
        .strip_suffix(param)?
        .strip_suffix('.')?
        .rsplit('.')
        .next()?;
    HEAD_MODULES.contains(&module).then_some(module)
}

/// A linear classification head `[num_labels, hidden]` (+ `[num_labels]` bias) over pooled hidden states.
#[derive(Debug, Clone)]
pub struct ClassifierHead {
    /// `[num_labels, hidden]`.
    pub weight: Tensor,
    /// `[num_labels]`, where the head has a bias.
    pub bias: Option<Tensor>,
}

impl ClassifierHead {
    /// Class logits `[n, num_labels]` of pooled hidden states `[n, hidden]`.
    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        let y = pooled.matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// An adapter plus a trained linear head over the pooled final hidden state (or over every token's state,
/// for token classification).
pub struct WithClassifier {
    inner: Box<dyn Adapter>,
    config: Box<dyn PeftMethod>,
    weight: Var,
    bias: Option<Var>,
    module: String,
}

/// A head found among saved tensors.
pub struct SavedHead {
    /// The head's module name (`score`, `classifier`).
    pub module: String,
    /// `[num_labels, hidden]`.
    pub weight: Tensor,
    /// `[num_labels]`, where the head has a bias.
    pub bias: Option<Tensor>,
}

impl WithClassifier {
    /// Wraps `inner` with a fresh `[num_labels, hidden]` head named and shaped as transformers names the
    /// model's head ([`ModelSpec::classifier_module`](crate::spec::ModelSpec), with a bias where the
    /// architecture's head has one), initialised N(0, 0.02) with a zero bias as transformers initialises it.
    pub fn new(inner: Box<dyn Adapter>, num_labels: usize, init: &mut InitCtx) -> Result<Self> {
        if num_labels < 2 {
            return Err(PeftError::Config(format!(
                "a classification head needs at least 2 labels, got {num_labels}"
            )));
        }
        let spec = init.model.spec();
        let (hidden, module, has_bias) = (
            spec.hidden_size,
            spec.classifier_module.clone(),
            spec.classifier_bias,
        );
        let normal = Normal::new(0f32, 0.02).expect("valid std");
        let values: Vec<f32> = (0..num_labels * hidden)
            .map(|_| normal.sample(&mut init.rng))
            .collect();
        let device = init.model.device();
        let weight = Tensor::from_vec(values, (num_labels, hidden), device)?;
        let bias = if has_bias {
            Some(Tensor::zeros(num_labels, DType::F32, device)?)
        } else {
            None
        };
        Self::with_head(
            inner,
            SavedHead {
                module,
                weight,
                bias,
            },
        )
    }

    /// Wraps `inner` around a head read from a saved adapter.
    pub fn with_head(inner: Box<dyn Adapter>, head: SavedHead) -> Result<Self> {
        let mut common = inner.config().common().clone();
        if common.task_type.as_deref() != Some(TOKEN_CLS) {
            common.task_type = Some(SEQ_CLS.into());
        }
        let config = inner.config().with_common(common);
        let bias = match head.bias {
            Some(b) => Some(Var::from_tensor(&b.to_dtype(DType::F32)?)?),
            None => None,
        };
        Ok(WithClassifier {
            inner,
            config,
            weight: Var::from_tensor(&head.weight.to_dtype(DType::F32)?)?,
            bias,
            module: head.module,
        })
    }

    /// The same head for token classification (HF PEFT's `TOKEN_CLS` task type in the saved config).
    pub fn for_tokens(mut self) -> Self {
        let mut common = self.config.common().clone();
        common.task_type = Some(TOKEN_CLS.into());
        self.config = self.config.with_common(common);
        self
    }

    /// Finds a saved head among `tensors` (keys ending in `score.weight` or `classifier.weight`, with the
    /// matching `.bias` where there is one).
    pub fn saved_head(tensors: &HashMap<String, Tensor>) -> Option<SavedHead> {
        let (key, weight, module) = tensors
            .iter()
            .find_map(|(k, w)| Some((k, w, head_module_of(k, "weight")?.to_string())))?;
        let stem = key.strip_suffix(".weight")?;
        Some(SavedHead {
            module,
            weight: weight.clone(),
            bias: tensors.get(&format!("{stem}.bias")).cloned(),
        })
    }

    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }

    /// Saved names of the weight and the bias.
    fn keys(&self) -> (String, String) {
        let weight = head_key(&self.module, self.config.is_prompt_learning());
        let bias = format!("{}.bias", weight.trim_end_matches(".weight"));
        (weight, bias)
    }
}

impl Hooks for WithClassifier {
    fn touches(&self, site: SiteId) -> bool {
        self.inner.touches(site)
    }

    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.inner.embeddings(x, ctx)
    }

    fn attention_prefix(&self, layer: usize, ctx: &Ctx) -> Result<Option<KvPrefix>> {
        self.inner.attention_prefix(layer, ctx)
    }

    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        self.inner.linear(site, x, next)
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        self.inner.bias(site)
    }

    fn norm_weight(&self, site: SiteId) -> Option<Tensor> {
        self.inner.norm_weight(site)
    }
}

impl Adapter for WithClassifier {
    fn config(&self) -> &dyn PeftMethod {
        self.config.as_ref()
    }

    fn saved_config(&self) -> Box<dyn PeftMethod> {
        // The method's own saved form (AdaLoRA's final rank pattern) with this wrapper's task type.
        self.inner
            .saved_config()
            .with_common(self.config.common().clone())
    }

    fn classifier(&self) -> Option<ClassifierHead> {
        Some(ClassifierHead {
            weight: crate::grad::param(&self.weight),
            bias: self.bias.as_ref().map(crate::grad::param),
        })
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut vars = self.inner.trainable();
        let (wk, bk) = self.keys();
        vars.push((wk, self.weight.clone()));
        if let Some(b) = &self.bias {
            vars.push((bk, b.clone()));
        }
        vars
    }

    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut tensors = self.inner.tensors()?;
        let (wk, bk) = self.keys();
        tensors.push((wk, self.weight.as_tensor().clone()));
        if let Some(b) = &self.bias {
            tensors.push((bk, b.as_tensor().clone()));
        }
        Ok(tensors)
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let (wk, bk) = self.keys();
        // The inner adapter sees its own tensors only (its strict checks would refuse the head's).
        let inner: HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(k, _)| !is_head_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.inner.load_tensors(&inner)?;
        let saved = Self::saved_head(tensors).ok_or_else(|| {
            PeftError::Config(format!("the adapter has no classification head (`{wk}`)"))
        })?;
        let pairs = [
            (wk, Some(&self.weight), Some(saved.weight)),
            (bk, self.bias.as_ref(), saved.bias),
        ];
        for (key, var, saved) in pairs {
            match (var, saved) {
                (Some(var), Some(saved)) => {
                    if saved.dims() != var.dims() {
                        return Err(PeftError::ShapeMismatch {
                            what: key,
                            expected_from: "the classification head".into(),
                            expected: var.dims().to_vec(),
                            got_from: "the saved adapter".into(),
                            got: saved.dims().to_vec(),
                        });
                    }
                    var.set(&saved.to_dtype(DType::F32)?)?;
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(PeftError::Config(format!(
                        "the saved adapter lacks the classification head's `{key}`"
                    )))
                }
                (None, Some(_)) => {
                    return Err(PeftError::Config(format!(
                        "the saved adapter has `{key}`, which this model's head does not have"
                    )))
                }
            }
        }
        Ok(())
    }

    fn notes(&self) -> Vec<String> {
        self.inner.notes()
    }

    fn training_loss_term(&self) -> Result<Option<Tensor>> {
        self.inner.training_loss_term()
    }

    fn after_optimizer_step(&self, step: usize, grads: &[Tensor]) -> Result<()> {
        // The head's variables come last in `trainable`.
        let inner = grads
            .len()
            .saturating_sub(1 + usize::from(self.bias.is_some()));
        self.inner.after_optimizer_step(step, &grads[..inner])
    }

    fn step_state(&self) -> Result<Vec<(String, Tensor)>> {
        self.inner.step_state()
    }

    fn load_step_state(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.inner.load_step_state(tensors)
    }

    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.inner.merge_into(model)
    }

    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.inner.unmerge_from(model)
    }
}
