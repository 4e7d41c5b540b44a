//! The built IA3 adapter: one learned vector `ia3_l` per targeted projection, applied through the
//! [`Hooks::linear`] middleware. A feed-forward module's vector (`[1, in]`) scales the projection's input,
//! `next(x * l)`; any other module's vector (`[out, 1]`) scales its output, `next(x) * l`, frozen bias
//! included, as HF PEFT does. Saved as `base_model.model.<module>.ia3_l`.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Tensor, Var};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::{Hooks, LinearFn};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteId;
use peft_core::tuner::{check_file_tensors, ExpectedTensors, SiteIndex, MODULE_KEY_PREFIX};
use peft_core::{PeftError, Result};

use crate::config::Ia3Config;
use crate::targets::Target;

/// One learned vector and the projection it scales.
#[derive(Debug)]
pub struct Ia3Vector {
    /// The projection.
    pub target: Target,
    /// `[1, in]` (feed-forward) or `[out, 1]`.
    pub var: Var,
}

impl Ia3Vector {
    /// The HF PEFT state-dict key.
    pub fn key(&self) -> String {
        format!("{MODULE_KEY_PREFIX}{}.ia3_l", self.target.module)
    }
}

/// A built IA3 adapter.
#[derive(Debug)]
pub struct Ia3 {
    config: Ia3Config,
    vectors: Vec<Ia3Vector>,
    /// Site to index into `vectors`.
    by_site: SiteIndex,
    /// While merged, the vectors as they were merged (unmerging divides by these, even if the variables have
    /// changed since); `None` while not merged.
    merged: Mutex<Option<Vec<Tensor>>>,
}

impl Ia3 {
    pub(crate) fn new(config: Ia3Config, vectors: Vec<Ia3Vector>, num_sites: usize) -> Self {
        let by_site = SiteIndex::new(num_sites, vectors.iter().map(|v| v.target.site));
        Ia3 {
            config,
            vectors,
            by_site,
            merged: Mutex::new(None),
        }
    }

    /// The learned vectors, in the model's site order.
    pub fn vectors(&self) -> &[Ia3Vector] {
        &self.vectors
    }

    /// Whether the vectors are currently folded into a model's weights.
    pub fn is_merged(&self) -> bool {
        self.merged.lock().map(|m| m.is_some()).unwrap_or(true)
    }

    /// Rescales every targeted projection of `model` by the vectors `ls`. All new layers are computed before
    /// any is replaced, so an error (a projection the model does not expose) leaves the model unchanged.
    fn rescale_model(&self, model: &mut dyn BaseModel, ls: &[Tensor], divide: bool) -> Result<()> {
        let missing = |v: &Ia3Vector| {
            PeftError::Unsupported(format!(
                "model {} does not expose the projection `{}` for merging",
                model.spec().name_or_path,
                v.target.module
            ))
        };
        let rescaled = self
            .vectors
            .iter()
            .zip(ls)
            .map(|(v, l)| {
                let layer = model
                    .frozen_linear(v.target.site)
                    .ok_or_else(|| missing(v))?;
                rescale(layer, v.target.feedforward, l, divide)
            })
            .collect::<Result<Vec<_>>>()?;
        for (v, new) in self.vectors.iter().zip(rescaled) {
            if let Some(layer) = model.frozen_linear_mut(v.target.site) {
                *layer = new;
            }
        }
        Ok(())
    }
}

/// `layer` with its weight (and, for a non-feed-forward module, its bias) multiplied or divided by `l`.
fn rescale(
    layer: &FrozenLinear,
    feedforward: bool,
    l: &Tensor,
    divide: bool,
) -> Result<FrozenLinear> {
    if let Some(q) = layer.quantized_weight() {
        return Err(peft_core::frozen::quantized_merge_refused(q));
    }
    let weight = layer.weight()?;
    // The weight is `[out, in]`: a `[1, in]` vector scales its columns, an `[out, 1]` vector its rows.
    let l = l.to_dtype(weight.dtype())?;
    let scale = |t: &Tensor, by: &Tensor| -> Result<Tensor> {
        Ok(if divide {
            // As HF PEFT's unmerge: a small tolerance keeps a zero entry from dividing by zero.
            t.broadcast_div(&(by + 1e-8)?)?
        } else {
            t.broadcast_mul(by)?
        })
    };
    let new_weight = scale(&weight, &l)?;
    let new_bias = match layer.bias() {
        Some(b) if !feedforward => Some(scale(b, &l.flatten_all()?.to_dtype(b.dtype())?)?),
        other => other.cloned(),
    };
    Ok(layer.with_weights(new_weight, new_bias))
}

impl Hooks for Ia3 {
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        let Some(i) = self.by_site.get(site) else {
            return next(x);
        };
        if self.is_merged() {
            return next(x);
        }
        let v = &self.vectors[i];
        let l = peft_core::grad::param(&v.var)
            .flatten_all()?
            .to_dtype(x.dtype())?;
        if v.target.feedforward {
            next(&x.broadcast_mul(&l)?)
        } else {
            Ok(next(x)?.broadcast_mul(&l)?)
        }
    }

    /// The scaled projections; a model may run the blocks of the others recomputed in the backward.
    fn touches(&self, site: SiteId) -> bool {
        self.by_site.get(site).is_some()
    }
}

impl Adapter for Ia3 {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.vectors
            .iter()
            .map(|v| (v.key(), v.var.clone()))
            .collect()
    }

    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .vectors
            .iter()
            .map(|v| (v.key(), v.var.as_tensor().clone()))
            .collect())
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let keys: Vec<String> = self.vectors.iter().map(Ia3Vector::key).collect();
        let expected: Vec<(&str, &[usize])> = keys
            .iter()
            .zip(&self.vectors)
            .map(|(k, v)| (k.as_str(), v.var.dims()))
            .collect();
        // Check everything before changing anything, so a bad file leaves the adapter as it was.
        check_file_tensors(
            tensors,
            &expected,
            &ExpectedTensors {
                method: "IA3",
                fields: "target_modules / feedforward_modules",
                shapes_from:
                    "the model ([1, in] for a feed-forward module, [out, 1] for any other)",
            },
        )?;
        let values = keys
            .iter()
            .map(|k| Ok(tensors[k].to_dtype(DType::F32)?))
            .collect::<Result<Vec<_>>>()?;
        for (v, t) in self.vectors.iter().zip(values) {
            v.var.set(&t)?;
        }
        Ok(())
    }

    /// Multiplies each targeted weight by its vector (columns for feed-forward modules, rows and bias
    /// otherwise), as HF PEFT's merge does; the hooks then add nothing until [`Adapter::unmerge_from`].
    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        let mut merged = self
            .merged
            .lock()
            .map_err(|_| PeftError::Unsupported("the IA3 merge state was poisoned".into()))?;
        if merged.is_some() {
            return Err(PeftError::Unsupported(
                "this IA3 adapter is already merged: unmerge it first".into(),
            ));
        }
        let snapshot: Vec<Tensor> = self
            .vectors
            .iter()
            .map(|v| v.var.as_tensor().detach().copy())
            .collect::<candle_core::Result<_>>()?;
        self.rescale_model(model, &snapshot, false)?;
        *merged = Some(snapshot);
        Ok(())
    }

    /// Divides the weights by the vectors they were merged with (plus 1e-8, as HF PEFT does: exact up to
    /// rounding unless an entry is near zero).
    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        let mut merged = self
            .merged
            .lock()
            .map_err(|_| PeftError::Unsupported("the IA3 merge state was poisoned".into()))?;
        let Some(snapshot) = merged.as_ref() else {
            return Err(PeftError::Unsupported(
                "this IA3 adapter is not merged, so there is nothing to unmerge".into(),
            ));
        };
        self.rescale_model(model, snapshot, true)?;
        *merged = None;
        Ok(())
    }
}
