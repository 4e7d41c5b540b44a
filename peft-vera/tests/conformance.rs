//! The workspace's method contract (`peft_train::conformance`) for VeRA on both tiny architectures: trained by
//! the shared trainer the loss falls, every trainable vector moves and no frozen tensor does (the shared
//! projections included), save -> load keeps the logits, and a run stopped halfway and resumed, or split over
//! data-parallel ranks, ends where an uninterrupted one does.

use peft_testing::{
    assert_contract_on_tiny_models, assert_data_parallel_exact, assert_resume_exact,
    seeded_tiny_models,
};
use peft_vera::{BiasMode, TargetModules, VeraConfig};

fn all_linear(r: usize) -> VeraConfig {
    VeraConfig {
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..VeraConfig::new(r, Vec::<String>::new())
    }
}

fn configs() -> Vec<VeraConfig> {
    vec![
        // HF PEFT's defaults (r = 256; c_attn / q_proj + v_proj).
        VeraConfig::default(),
        // Every projection, without the projections in the file, trained biases and dropout.
        VeraConfig {
            save_projection: false,
            projection_prng_key: 11,
            bias: BiasMode::All,
            vera_dropout: 0.1,
            ..all_linear(16)
        },
    ]
}

#[test]
fn vera_keeps_the_method_contract_on_both_architectures() {
    assert_contract_on_tiny_models(&configs());
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    // Without dropout: its masks come from the adapter's own generator, which checkpoints do not hold.
    let config = VeraConfig::new(32, ["q_proj", "v_proj", "down_proj"]);
    assert_resume_exact(&peft_models::tiny::llama(4), &config);
    let no_projection = VeraConfig {
        save_projection: false,
        ..VeraConfig::new(8, ["c_attn", "mlp.c_proj"])
    };
    assert_resume_exact(&peft_models::tiny::gpt2(4), &no_projection);
}

#[test]
fn a_data_parallel_run_ends_where_one_process_does() {
    // Without dropout: each rank draws its own masks (as each GPU does under PyTorch's DDP).
    let with_biases = VeraConfig {
        bias: BiasMode::VeraOnly,
        ..all_linear(16)
    };
    for model in seeded_tiny_models(3) {
        for config in [VeraConfig::default(), with_biases.clone()] {
            assert_data_parallel_exact(model.as_ref(), &config);
        }
    }
}
