//! The workspace's method contract (`peft_train::conformance`), which a third-party method runs like the
//! workspace's own: trained by the shared trainer the loss falls, every IA3 vector moves and no frozen tensor
//! does, save -> load keeps the logits, and a run stopped halfway and resumed, or split over data-parallel
//! ranks, ends where an uninterrupted one does.

use peft_ia3_example::{Ia3Config, ModuleSelection};
use peft_testing::{
    assert_contract_on_tiny_models, assert_data_parallel_exact, assert_resume_exact,
    seeded_tiny_models,
};

fn configs() -> Vec<Ia3Config> {
    vec![
        // HF PEFT's per-architecture defaults.
        Ia3Config::default(),
        // Every projection, with the default feed-forward modules.
        Ia3Config {
            target_modules: Some(ModuleSelection::Pattern("all-linear".into())),
            ..Ia3Config::default()
        },
    ]
}

#[test]
fn ia3_keeps_the_method_contract_on_both_architectures() {
    peft_ia3_example::register();
    assert_contract_on_tiny_models(&configs());
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    assert_resume_exact(&peft_models::tiny::gpt2(4), &Ia3Config::default());
}

#[test]
fn a_data_parallel_run_ends_where_one_process_does() {
    for model in seeded_tiny_models(3) {
        assert_data_parallel_exact(model.as_ref(), &Ia3Config::default());
    }
}
