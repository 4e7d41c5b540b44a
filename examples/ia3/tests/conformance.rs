//! The workspace's method contract (`peft_core::conformance`), which a third-party method runs like the
//! workspace's own: trained by the shared trainer the loss falls, every IA3 vector moves and no frozen tensor
//! does, save -> load keeps the logits, and a run stopped halfway and resumed ends where an uninterrupted one
//! does.

mod common;

use peft_core::conformance::{check_adapter, check_resume, Conformance};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::task::{CausalLm, LmExample};
use peft_ia3_example::{Ia3Config, ModuleSelection};

/// Short sequences that follow a rule, so that an adapter can lower the loss.
fn task() -> CausalLm {
    let seqs: Vec<LmExample> = (0..8u32)
        .map(|s| {
            let ids: Vec<u32> = (0..8u32)
                .map(|t| 1 + (s * 7 + t * (1 + s % 3)) % 90)
                .collect();
            LmExample {
                labels: ids.iter().map(|&i| i as i64).collect(),
                input_ids: ids,
            }
        })
        .collect();
    CausalLm::new(seqs.clone(), seqs, 0).unwrap()
}

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
    let task = task();
    let models: [Box<dyn BaseModel>; 2] = [
        Box::new(peft_models::tiny::gpt2(3)),
        Box::new(peft_models::tiny::llama(3)),
    ];
    peft_ia3_example::register();
    for model in &models {
        for config in configs() {
            let adapter = config.build(&mut common::init(model.as_ref(), 1)).unwrap();
            let how = Conformance {
                steps: 12,
                ..Conformance::default()
            };
            let report = check_adapter(model.as_ref(), None, adapter.as_ref(), &task, &how)
                .unwrap_or_else(|e| panic!("{} {config:?}: {e}", model.spec().architecture));
            assert_eq!(report.trainable_tensors, adapter.trainable().len());
        }
    }
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let task = task();
    let model = peft_models::tiny::gpt2(4);
    let config = Ia3Config::default();
    let build =
        || -> peft_core::Result<Box<dyn Adapter>> { config.build(&mut common::init(&model, 2)) };
    let how = Conformance {
        steps: 6,
        ..Conformance::default()
    };
    let worst = check_resume(&model, &build, &task, &how).unwrap();
    assert!(worst < 1e-6, "resumed run differs by {worst}");
}
