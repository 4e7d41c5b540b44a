//! The workspace's method contract (`peft_train::conformance`) for LoHa and LoKr: trained by the shared
//! trainer the loss falls, every factor moves and no frozen tensor does, save -> load keeps the logits, and a
//! run stopped halfway and resumed, or split over 2 and 3 data-parallel ranks, ends where an uninterrupted
//! one does.

use peft_lycoris::{LohaConfig, LokrConfig, LokrInitWeights, LycorisFields, TargetModules};
use peft_testing::{
    assert_contract_on_tiny_models, assert_data_parallel_exact, assert_resume_exact,
    seeded_tiny_models,
};

fn loha_configs() -> Vec<LohaConfig> {
    vec![
        // HF PEFT's defaults (query and value projections, or GPT-2's c_attn).
        LohaConfig::default(),
        // Every projection at rank 2, the MLP down projection at rank 1 with its own alpha.
        LohaConfig {
            lycoris: LycorisFields {
                r: 2,
                target_modules: Some(TargetModules::Pattern("all-linear".into())),
                rank_pattern: [("mlp.c_proj".to_string(), 1), ("down_proj".to_string(), 1)].into(),
                alpha_pattern: [("down_proj".to_string(), 4.0)].into(),
                ..LycorisFields::default()
            },
            ..LohaConfig::default()
        },
    ]
}

fn lokr_configs() -> Vec<LokrConfig> {
    let all_linear = |r: usize| LycorisFields {
        r,
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..LycorisFields::default()
    };
    vec![
        // HF PEFT's defaults: both sides full on the tiny models.
        LokrConfig::default(),
        // Both sides decomposed at rank 1.
        LokrConfig {
            lycoris: all_linear(1),
            decompose_both: true,
            ..LokrConfig::default()
        },
        // Split by 2 (w2 the larger side, decomposed at rank 2), started the LyCORIS way.
        LokrConfig {
            lycoris: all_linear(2),
            decompose_factor: 2,
            init_weights: LokrInitWeights::Named("lycoris".into()),
            ..LokrConfig::default()
        },
    ]
}

#[test]
fn loha_keeps_the_method_contract_on_both_architectures() {
    assert_contract_on_tiny_models(&loha_configs());
}

#[test]
fn lokr_keeps_the_method_contract_on_both_architectures() {
    assert_contract_on_tiny_models(&lokr_configs());
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    for model in seeded_tiny_models(4) {
        assert_resume_exact(model.as_ref(), &LohaConfig::default());
        assert_resume_exact(model.as_ref(), &lokr_configs()[1]);
    }
}

#[test]
fn a_data_parallel_run_ends_where_one_process_does() {
    for model in seeded_tiny_models(3) {
        assert_data_parallel_exact(model.as_ref(), &LohaConfig::default());
        assert_data_parallel_exact(model.as_ref(), &lokr_configs()[1]);
    }
}
