//! The workspace's method contract (`peft_core::conformance`) for LoRA on both tiny architectures: trained by the
//! shared trainer the loss falls, every trainable tensor moves and no frozen one does, save -> load keeps the
//! logits, and a run stopped halfway and resumed ends where an uninterrupted one does.

mod common;

use peft_core::conformance::{check_adapter, check_resume, Conformance};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::task::{CausalLm, LmExample};
use peft_lora::{BiasMode, LoraConfig, TargetModules};

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
    ]
}

#[test]
fn lora_keeps_the_method_contract_on_both_architectures() {
    let task = task();
    let models: [Box<dyn BaseModel>; 2] = [
        Box::new(peft_models::tiny::gpt2(3)),
        Box::new(peft_models::tiny::llama(3)),
    ];
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
    let model = peft_models::tiny::llama(4);
    // Without dropout: its masks come from the adapter's own generator, which checkpoints do not hold.
    let config = LoraConfig::new(4, ["q_proj", "v_proj", "down_proj"]);
    let build =
        || -> peft_core::Result<Box<dyn Adapter>> { config.build(&mut common::init(&model, 2)) };
    let how = Conformance {
        steps: 6,
        ..Conformance::default()
    };
    let worst = check_resume(&model, &build, &task, &how).unwrap();
    assert!(worst < 1e-6, "resumed run differs by {worst}");
}
