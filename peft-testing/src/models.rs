//! The models the tests run on: the tiny HF-saved fixture folders, the seeded tiny models and the SmolLM2 GGUF.

use candle_core::Device;
use peft_core::model::BaseModel;
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

/// The SmolLM2 GGUF, from `PEFT_SMOLLM2_GGUF` or the zoo cache; `None` (with the reason printed) when absent,
/// so that a test can skip: `let Some(loaded) = smollm2() else { return };`.
pub fn smollm2() -> Option<LoadedModel> {
    match peft_models::zoo::local_path("smollm2-135m", "PEFT_SMOLLM2_GGUF") {
        Some(p) if p.is_file() => Some(peft_models::gguf::load_gguf(&p, &Device::Cpu).unwrap()),
        _ => {
            eprintln!(
                "skipping: SmolLM2-135M is not in the zoo cache (run `peft fetch smollm2-135m`)"
            );
            None
        }
    }
}
