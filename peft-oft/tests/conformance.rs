//! The workspace's method contract (`peft_train::conformance`) for OFT on both tiny architectures: trained by
//! the shared trainer the loss falls, every `oft_R` (and trained bias) moves and no frozen tensor does, save ->
//! load keeps the logits, and a run stopped halfway and resumed, or split over data-parallel ranks, ends where
//! an uninterrupted one does.

use peft_oft::{BiasMode, OftConfig, TargetModules};
use peft_testing::{
    assert_contract_on_tiny_models, assert_data_parallel_exact, assert_resume_exact,
    seeded_tiny_models,
};

fn configs() -> Vec<OftConfig> {
    vec![
        // HF PEFT's defaults: the series, one block of 32 per query / value module.
        OftConfig::default(),
        // Every projection, exact transform, blocks of 8, trained biases and block dropout.
        OftConfig {
            target_modules: Some(TargetModules::Pattern("all-linear".into())),
            use_cayley_neumann: false,
            bias: BiasMode::All,
            module_dropout: 0.25,
            oft_block_size: 8,
            ..OftConfig::default()
        },
        // Shared blocks set by r, constrained.
        OftConfig {
            r: 4,
            oft_block_size: 0,
            block_share: true,
            coft: true,
            eps: 0.5,
            ..OftConfig::default()
        },
    ]
}

#[test]
fn oft_keeps_the_method_contract_on_both_architectures() {
    assert_contract_on_tiny_models(&configs());
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    for model in seeded_tiny_models(4) {
        let exact = OftConfig {
            use_cayley_neumann: false,
            oft_block_size: 8,
            ..OftConfig::default()
        };
        assert_resume_exact(model.as_ref(), &exact);
    }
}

#[test]
fn a_data_parallel_run_ends_where_one_process_does() {
    // Without dropout: each rank draws its own blocks (as each GPU does under PyTorch's DDP).
    for model in seeded_tiny_models(3) {
        let config = OftConfig {
            oft_block_size: 16,
            ..OftConfig::default()
        };
        assert_data_parallel_exact(model.as_ref(), &config);
    }
}
