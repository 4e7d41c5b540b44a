//! The workspace's method contract (`peft_train::conformance`) for LoRA on both tiny architectures: trained by the
//! shared trainer the loss falls, every trainable tensor moves and no frozen one does, save -> load keeps the
//! logits, and a run stopped halfway and resumed, or split over data-parallel ranks, ends where an uninterrupted
//! one does.

use peft_lora::{BiasMode, InitLoraWeights, LoraConfig, TargetModules};
use peft_testing::{
    assert_contract_on_tiny_models, assert_data_parallel_exact, assert_resume_exact,
    seeded_tiny_models,
};

fn configs() -> Vec<LoraConfig> {
    vec![
        // HF PEFT's defaults (c_attn / q_proj + v_proj).
        LoraConfig::default(),
        LoraConfig {
            use_rslora: true,
            bias: BiasMode::All,
            lora_dropout: 0.1,
            target_modules: Some(TargetModules::Pattern("all-linear".into())),
            ..LoraConfig::new(4, Vec::<String>::new())
        },
        pissa(),
        LoraConfig {
            init_lora_weights: InitLoraWeights::Named("olora".into()),
            lora_dropout: 0.1,
            target_modules: None,
            ..LoraConfig::new(2, Vec::<String>::new())
        },
    ]
}

/// PiSSA on every linear module: its starting factors are rebuilt from the base on every build (load, resume,
/// each rank), so the contract checks that they come out the same each time.
fn pissa() -> LoraConfig {
    LoraConfig {
        init_lora_weights: InitLoraWeights::Named("pissa_niter_2".into()),
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..LoraConfig::new(2, Vec::<String>::new())
    }
}

#[test]
fn lora_keeps_the_method_contract_on_both_architectures() {
    assert_contract_on_tiny_models(&configs());
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    // Without dropout: its masks come from the adapter's own generator, which checkpoints do not hold.
    let config = LoraConfig::new(4, ["q_proj", "v_proj", "down_proj"]);
    assert_resume_exact(&peft_models::tiny::llama(4), &config);
    assert_resume_exact(&peft_models::tiny::gpt2(4), &pissa());
}

#[test]
fn a_data_parallel_run_ends_where_one_process_does() {
    // Without dropout: each rank draws its own masks (as each GPU does under PyTorch's DDP).
    let all_linear = LoraConfig {
        bias: BiasMode::All,
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..LoraConfig::new(4, Vec::<String>::new())
    };
    for model in seeded_tiny_models(3) {
        for config in [LoraConfig::default(), all_linear.clone(), pissa()] {
            assert_data_parallel_exact(model.as_ref(), &config);
        }
    }
}
