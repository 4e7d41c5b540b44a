//! What the method matrix and the checkpointing matrix share: the tiny LLaMA over a quantized base, and BERT's
//! classification task.

#![allow(dead_code)] // each test file uses its own part

use peft_train::task::{ClassExample, HeadClassification};

/// The tiny LLaMA with its 2-D weights quantized to Q4_1 (SmolLM2's file type).
pub fn quantized_llama(seed: u64) -> peft_models::llama::Llama {
    let weights = peft_models::tiny::llama_weights(seed)
        .quantize_2d(candle_core::quantized::GgmlDType::Q4_1)
        .unwrap();
    peft_models::llama::Llama::from_weights(
        &peft_models::tiny::llama_config(),
        &weights,
        "tiny-llama-q4_1",
    )
    .unwrap()
}

/// Two classes told apart by the first token.
pub fn head_examples() -> Vec<ClassExample> {
    (0..16u32)
        .map(|i| ClassExample {
            input_ids: vec![if i % 2 == 0 { 7 } else { 70 }, 20 + i, 40 + i, 60],
            label: (i % 2) as usize,
            token_type_ids: vec![],
        })
        .collect()
}

/// BERT's task in the matrices: a two-class head over [`head_examples`].
pub fn head_task() -> HeadClassification {
    HeadClassification::new(head_examples(), head_examples(), 2, 0).unwrap()
}
