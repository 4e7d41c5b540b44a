//! The workspace's method contract (`peft_train::conformance`) for LayerNorm tuning on both tiny
//! architectures: trained by the shared trainer the loss falls, every tuned weight and bias moves and no frozen
//! tensor does (the frozen norms included), save -> load keeps the logits, and a run stopped halfway and
//! resumed, or split over data-parallel ranks, ends where an uninterrupted one does.

use peft_ln_tuning::{LnTuningConfig, TargetModules};
use peft_testing::{
    assert_contract_on_tiny_models, assert_data_parallel_exact, assert_resume_exact,
    seeded_tiny_models,
};

/// The layers' norms chosen by a regular expression, layer 0's first norm left out by `exclude_modules`.
fn layer_norms_only() -> LnTuningConfig {
    LnTuningConfig {
        target_modules: Some(TargetModules::Pattern(
            r".*\.\d+\..*(ln_\d|layernorm)".into(),
        )),
        exclude_modules: Some(TargetModules::list([
            "h.0.ln_1",
            "layers.0.input_layernorm",
        ])),
        ..LnTuningConfig::default()
    }
}

#[test]
fn ln_tuning_keeps_the_method_contract_on_both_architectures() {
    // HF PEFT's defaults (GPT-2 ln_1, ln_2, ln_f; LLaMA input_layernorm, post_attention_layernorm, norm).
    assert_contract_on_tiny_models(&[LnTuningConfig::default(), layer_norms_only()]);
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    assert_resume_exact(&peft_models::tiny::llama(4), &LnTuningConfig::default());
    assert_resume_exact(
        &peft_models::tiny::gpt2(4),
        &LnTuningConfig::new(["ln_2", "ln_f"]),
    );
}

#[test]
fn a_data_parallel_run_ends_where_one_process_does() {
    for model in seeded_tiny_models(3) {
        for config in [LnTuningConfig::default(), layer_norms_only()] {
            assert_data_parallel_exact(model.as_ref(), &config);
        }
    }
}
