//! The workspace's method contract (`peft_train::conformance`) for DoRA (`use_dora`) on both tiny
//! architectures: trained by the shared trainer the loss falls, every trainable tensor (the magnitude vectors
//! included) moves and no frozen one does, save -> load keeps the logits, and a run stopped halfway and resumed,
//! or split over 2 and 3 data-parallel ranks, ends where an uninterrupted one does.

use peft_lora::{BiasMode, LoraConfig, TargetModules};
use peft_testing::{
    assert_contract_on_tiny_models, assert_data_parallel_exact, assert_resume_exact,
    seeded_tiny_models,
};

fn dora(config: LoraConfig) -> LoraConfig {
    LoraConfig {
        use_dora: true,
        ..config
    }
}

/// HF PEFT's default targets, and every linear module with trained biases and rsLoRA.
fn all_linear() -> LoraConfig {
    dora(LoraConfig {
        use_rslora: true,
        bias: BiasMode::All,
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..LoraConfig::new(4, Vec::<String>::new())
    })
}

#[test]
fn dora_keeps_the_method_contract_on_both_architectures() {
    let with_dropout = LoraConfig {
        lora_dropout: 0.1,
        ..all_linear()
    };
    assert_contract_on_tiny_models(&[dora(LoraConfig::default()), with_dropout]);
}

#[test]
fn a_resumed_dora_run_ends_where_an_uninterrupted_one_does() {
    // Without dropout: its masks come from the adapter's own generator, which checkpoints do not hold.
    let config = dora(LoraConfig::new(4, ["q_proj", "v_proj", "down_proj"]));
    assert_resume_exact(&peft_models::tiny::llama(4), &config);
    assert_resume_exact(&peft_models::tiny::gpt2(4), &all_linear());
}

#[test]
fn a_data_parallel_dora_run_ends_where_one_process_does() {
    // Without dropout: each rank draws its own masks (as each GPU does under PyTorch's DDP). The helper runs
    // 2 and 3 ranks.
    for model in seeded_tiny_models(3) {
        for config in [dora(LoraConfig::default()), all_linear()] {
            assert_data_parallel_exact(model.as_ref(), &config);
        }
    }
}
