//! The workspace's method contract (`peft_train::conformance`) for AdaLoRA on both tiny architectures: trained
//! by the shared trainer (with the regulariser in the loss and the allocator after each step) the loss falls,
//! every factor moves and no frozen tensor does, save -> load (the factors cut to the rank pattern) keeps the
//! logits, and a run stopped halfway and resumed, or split over data-parallel ranks, ends where an
//! uninterrupted one does, the allocator's averages and pattern included.

use peft_adalora::{AdaLoraConfig, BiasMode, TargetModules};
use peft_testing::{
    assert_contract_on_tiny_models, assert_data_parallel_exact, assert_resume_exact,
    seeded_tiny_models,
};

/// `init_r` falling to `init_r / 2` over `total_step` steps (warm-up `tinit`, final phase `tfinal`) on the
/// default modules.
fn scheduled(init_r: usize, total_step: usize, tinit: usize, tfinal: usize) -> AdaLoraConfig {
    AdaLoraConfig {
        tinit,
        tfinal,
        total_step: Some(total_step),
        init_r,
        target_r: init_r / 2,
        ..AdaLoraConfig::default()
    }
}

fn configs() -> Vec<AdaLoraConfig> {
    vec![
        // The contract's 12 steps: warm-up, budgeting every second step, final phase.
        AdaLoraConfig {
            delta_t: 2,
            ..scheduled(6, 12, 2, 3)
        },
        // Every projection, trained biases and dropout; the last steps run past total_step. A module whose
        // every triplet the allocator masks keeps lora_E at zero, which the contract would read as untrained:
        // target_r 3 of 4 leaves each module some.
        AdaLoraConfig {
            target_modules: Some(TargetModules::Pattern("all-linear".into())),
            bias: BiasMode::All,
            lora_dropout: 0.1,
            target_r: 3,
            ..scheduled(4, 8, 0, 2)
        },
    ]
}

#[test]
fn adalora_keeps_the_method_contract_on_both_architectures() {
    assert_contract_on_tiny_models(&configs());
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    // 6 steps stopped after 3: the averages and the pattern of step 2 carry over; the final phase starts at 5.
    let config = scheduled(4, 6, 1, 1);
    assert_resume_exact(&peft_models::tiny::llama(4), &config);
    let gpt2 = AdaLoraConfig {
        target_modules: Some(TargetModules::list(["c_attn", "mlp.c_proj"])),
        ..scheduled(4, 6, 0, 2)
    };
    assert_resume_exact(&peft_models::tiny::gpt2(4), &gpt2);
}

#[test]
fn a_data_parallel_run_ends_where_one_process_does() {
    // Without dropout: each rank draws its own masks (as each GPU does under PyTorch's DDP).
    for model in seeded_tiny_models(3) {
        assert_data_parallel_exact(model.as_ref(), &scheduled(4, 4, 0, 1));
    }
}
