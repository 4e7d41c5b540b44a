//! Full fine-tuning on every decoder architecture and on T5: every weight receives a gradient and moves (a
//! tied embedding / head once), the loss falls, and saved weights load back into a fresh trainable model
//! with the same logits.

use candle_core::{Device, Tensor};
use peft_baselines::FullFineTuningConfig;
use peft_core::adapter_io::{load_adapter, save_adapter};
use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_models::weights::WeightMap;
use peft_testing::{init, toy_lm_task, train};
use peft_train::task::{Seq2Seq, Seq2SeqExample};

/// The tiny decoders and T5, built from trainable weights.
fn trainable_models(seed: u64) -> Vec<(&'static str, Box<dyn BaseModel>)> {
    let t = |mut w: WeightMap| {
        w.make_trainable().unwrap();
        w
    };
    let opt = peft_models::opt::tiny_config();
    let t5 = peft_models::t5::tiny_config();
    vec![
        (
            "gpt2",
            Box::new(
                peft_models::Gpt2::from_weights(
                    &peft_models::tiny::gpt2_config(),
                    &t(peft_models::tiny::gpt2_weights(seed)),
                    "tiny-gpt2",
                )
                .unwrap(),
            ),
        ),
        (
            "llama",
            Box::new(
                peft_models::Llama::from_weights(
                    &peft_models::tiny::llama_config(),
                    &t(peft_models::tiny::llama_weights(seed)),
                    "tiny-llama",
                )
                .unwrap(),
            ),
        ),
        (
            "opt",
            Box::new(
                peft_models::opt::Opt::from_weights(
                    &opt,
                    &t(peft_models::opt::tiny_weights(&opt, seed)),
                    "tiny-opt",
                )
                .unwrap(),
            ),
        ),
        (
            "t5",
            Box::new(
                peft_models::t5::T5::from_weights(
                    &t5,
                    &t(peft_models::t5::tiny_weights(&t5, seed)),
                    "tiny-t5",
                )
                .unwrap(),
            ),
        ),
    ]
}

fn seq2seq_task() -> Seq2Seq {
    let examples: Vec<Seq2SeqExample> = (0..16u32)
        .map(|i| Seq2SeqExample {
            input_ids: vec![5 + i % 7, 9 + i % 3, 4],
            labels: vec![6 + i % 5, 1],
        })
        .collect();
    Seq2Seq::new(examples.clone(), examples, 0, Some(1)).unwrap()
}

fn snapshot(adapter: &dyn Adapter) -> Vec<(String, Tensor)> {
    adapter
        .trainable()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
        .collect()
}

#[test]
fn every_weight_trains_and_saved_weights_load_back() {
    for (arch, model) in trainable_models(3) {
        let full = FullFineTuningConfig::default()
            .build(&mut init(model.as_ref(), 0))
            .unwrap();
        let distinct: usize = full.trainable().iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(
            distinct,
            model.spec().num_parameters - tied(model.as_ref()),
            "{arch}"
        );
        let before = snapshot(full.as_ref());
        // The trainer errors if any trainable weight receives no gradient.
        let report = if arch == "t5" {
            train(model.as_ref(), full.as_ref(), &seq2seq_task(), 12, 4, 3e-3)
        } else {
            train(model.as_ref(), full.as_ref(), &toy_lm_task(), 12, 4, 3e-3)
        };
        let (first, last) = (report.losses[0], *report.losses.last().unwrap());
        assert!(last < first, "{arch}: loss {first} -> {last}");
        for ((name, b), (_, v)) in before.iter().zip(full.trainable()) {
            let moved = peft_core::compare::max_abs_diff(b, v.as_tensor()).unwrap();
            assert!(moved > 0.0, "{arch}: {name} did not move");
        }
        // Adam's state is two moments per weight.
        assert_eq!(report.optimizer_state_bytes, 2 * 4 * distinct, "{arch}");

        let dir = tempfile::tempdir().unwrap();
        save_adapter(dir.path(), full.as_ref(), model.spec()).unwrap();
        let (_, fresh) = trainable_models(3)
            .into_iter()
            .find(|(a, _)| *a == arch)
            .unwrap();
        let loaded = load_adapter(dir.path(), &mut init(fresh.as_ref(), 0)).unwrap();
        let ids = [5u32, 9, 4, 7];
        let batch = peft_core::model::Batch::single(&ids, &Device::Cpu).unwrap();
        let batch = match fresh.encoder_decoder() {
            Some(_) => batch
                .with_decoder_input_ids(Tensor::new(&[[0u32, 6]], &Device::Cpu).unwrap())
                .unwrap(),
            None => batch,
        };
        let a = model.forward(&batch, &NoHooks).unwrap().hidden;
        let b = fresh
            .forward(&batch, loaded.adapter.as_ref())
            .unwrap()
            .hidden;
        let diff = peft_core::compare::max_abs_diff(&a, &b).unwrap();
        assert!(diff < 1e-6, "{arch}: reloaded weights differ by {diff}");
    }
}

/// Elements listed twice in `parameters()` under two names (a tied head), which full fine-tuning trains once.
fn tied(model: &dyn BaseModel) -> usize {
    let mut seen = std::collections::HashSet::new();
    model
        .parameters()
        .into_iter()
        .filter(|(_, t)| !seen.insert(t.id()))
        .map(|(_, t)| t.elem_count())
        .sum()
}

#[test]
fn a_frozen_model_is_refused_with_what_to_do() {
    let model = peft_models::tiny::llama(0);
    let err = FullFineTuningConfig::default()
        .build(&mut init(&model, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("trainable weights") && err.contains("make_trainable"),
        "{err}"
    );
}
