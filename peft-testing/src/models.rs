//! The models the tests run on: the tiny HF-saved fixture folders and the seeded tiny models (real weights:
//! [`crate::assets`]).

use candle_core::{Device, Tensor};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::Hooks;
use peft_core::model::{BaseModel, Batch, Output};
use peft_core::spec::{ModelSpec, SiteId};
use peft_models::LoadedModel;

/// A tiny HF-saved fixture model (`tiny-gpt2`, `tiny-llama`), with its tokenizer.
pub fn tiny(name: &str) -> LoadedModel {
    peft_models::load_folder(&crate::fixture(name), &Device::Cpu).unwrap()
}

/// The seeded tiny GPT-2 and LLaMA (`peft_models::tiny`), in that order.
pub fn seeded_tiny_models(seed: u64) -> Vec<Box<dyn BaseModel>> {
    vec![
        Box::new(peft_models::tiny::gpt2(seed)),
        Box::new(peft_models::tiny::llama(seed)),
    ]
}

/// A frozen model seen under another spec (other sizes, names or roles), for tests of what methods read from
/// the spec alone: the forward pass, weights and site ids stay the inner model's. `renaming` also maps the
/// names [`BaseModel::parameters`] reports, for a spec whose site names differ from the inner model's.
pub struct WithSpec {
    inner: Box<dyn BaseModel>,
    spec: ModelSpec,
    rename: fn(&str) -> String,
}

impl WithSpec {
    /// `inner` under `spec` (whose sites must keep the inner model's order, so that ids agree).
    pub fn new(inner: Box<dyn BaseModel>, spec: ModelSpec) -> Self {
        WithSpec {
            inner,
            spec,
            rename: str::to_string,
        }
    }

    /// The same, with parameter names mapped by `rename`.
    pub fn renaming(self, rename: fn(&str) -> String) -> Self {
        WithSpec { rename, ..self }
    }

    /// The wrapped model.
    pub fn inner(&self) -> &dyn BaseModel {
        self.inner.as_ref()
    }
}

impl BaseModel for WithSpec {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> &Device {
        self.inner.device()
    }

    fn embed_tokens(&self, ids: &Tensor) -> peft_core::Result<Tensor> {
        self.inner.embed_tokens(ids)
    }

    fn forward(&self, batch: &Batch, hooks: &dyn Hooks) -> peft_core::Result<Output> {
        self.inner.forward(batch, hooks)
    }

    fn supports_gradient_checkpointing(&self) -> bool {
        self.inner.supports_gradient_checkpointing()
    }

    fn lm_head(&self) -> Option<&FrozenLinear> {
        self.inner.lm_head()
    }

    fn frozen_linear(&self, site: SiteId) -> Option<&FrozenLinear> {
        self.inner.frozen_linear(site)
    }

    fn frozen_linear_mut(&mut self, site: SiteId) -> Option<&mut FrozenLinear> {
        self.inner.frozen_linear_mut(site)
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.inner
            .parameters()
            .into_iter()
            .map(|(name, t)| ((self.rename)(&name), t))
            .collect()
    }
}
