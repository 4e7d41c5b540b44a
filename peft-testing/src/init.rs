//! Seeded [`InitCtx`]s for building adapters.

use peft_core::method::InitCtx;
use peft_core::model::BaseModel;
use peft_models::LoadedModel;
use rand::SeedableRng;

/// An init context on `model` without a tokenizer, its generator seeded with `seed`.
pub fn init(model: &dyn BaseModel, seed: u64) -> InitCtx<'_> {
    InitCtx {
        model,
        tokenizer: None,
        rng: rand::rngs::StdRng::seed_from_u64(seed),
    }
}

/// An init context on a loaded model with its tokenizer (if it has one), its generator seeded with `seed`.
pub fn init_loaded(loaded: &LoadedModel, seed: u64) -> InitCtx<'_> {
    InitCtx {
        tokenizer: loaded.tokenizer.as_ref(),
        ..init(loaded.model.as_ref(), seed)
    }
}
