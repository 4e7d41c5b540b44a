//! Whether a module-wrapping adapter is folded into the model's weights, and the two refusals every such method
//! makes: merging twice (the update would be added twice) and unmerging what is not merged; and the check that
//! the model still has every adapted module, shaped as built, before a merge changes anything.
//!
//! ```
//! use peft_core::tuner::MergeFlag;
//! let flag = MergeFlag::default();
//! let mut weight = 1.0;
//! flag.merge("LoRA", || { weight += 0.5; Ok(()) }).unwrap();
//! assert!(flag.is_merged());
//! let twice = flag.merge("LoRA", || unreachable!()).unwrap_err().to_string();
//! assert!(twice.contains("already merged") && twice.contains("unmerge_from first"));
//! flag.unmerge("LoRA", || { weight -= 0.5; Ok(()) }).unwrap();
//! assert_eq!(weight, 1.0);
//! assert!(flag.unmerge("LoRA", || unreachable!()).is_err());
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{PeftError, Result};
use crate::model::BaseModel;
use crate::spec::SiteId;

/// The merged state of one adapter (not merged at first).
#[derive(Debug, Default)]
pub struct MergeFlag(AtomicBool);

impl MergeFlag {
    /// Whether the update is currently folded into the model's weights.
    pub fn is_merged(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Runs `fold` (which adds the update to the weights) unless already merged; marks the adapter merged
    /// when it succeeds. `method` names the method in the error.
    pub fn merge(&self, method: &str, fold: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.is_merged() {
            return Err(PeftError::Unsupported(format!(
                "this {method} adapter is already merged into the model's weights: merging twice would add \
                 the update twice (unmerge_from first)"
            )));
        }
        fold()?;
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Runs `unfold` (which takes the update off the weights) if merged; marks the adapter unmerged when it
    /// succeeds.
    pub fn unmerge(&self, method: &str, unfold: impl FnOnce() -> Result<()>) -> Result<()> {
        if !self.is_merged() {
            return Err(PeftError::Unsupported(format!(
                "this {method} adapter is not merged, so there is nothing to unmerge (merge_into first)"
            )));
        }
        unfold()?;
        self.0.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// Checks, before a merge changes anything, that every adapted module `(site, name, [out, in])` is a linear
/// layer of `model` with that weight shape; `method` names the adapter in the error.
pub fn check_merge_targets<'a>(
    model: &dyn BaseModel,
    method: &str,
    modules: impl IntoIterator<Item = (SiteId, &'a str, [usize; 2])>,
) -> Result<()> {
    for (site, name, expected) in modules {
        let frozen = model.frozen_linear(site).ok_or_else(|| {
            PeftError::Unsupported(format!(
                "the model has no linear layer at `{name}`: merge into the model the adapter was built for"
            ))
        })?;
        if let Some(q) = frozen.quantized_weight() {
            return Err(crate::frozen::quantized_merge_refused(q));
        }
        let (out, inp) = frozen.dims();
        if [out, inp] != expected {
            return Err(PeftError::ShapeMismatch {
                what: format!("{name}.weight"),
                expected_from: format!("the {method} adapter"),
                expected: expected.to_vec(),
                got_from: "the model".into(),
                got: vec![out, inp],
            });
        }
    }
    Ok(())
}
