//! The models the tests run on: the tiny HF-saved fixture folders and the seeded tiny models (real weights:
//! [`crate::assets`]).

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
