//! The workspace's method contract (`peft_train::conformance`), run the same way for every method.

use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_train::conformance::{check_adapter, check_data_parallel, check_resume, Conformance};

use peft_train::task::Task;
use peft_train::train::order::micro_batch;
use peft_train::train::TrainConfig;

use crate::{
    init, partly_unlabelled_lm_task, ragged_lm_task, rule_lm_task, seeded_tiny_models,
    UNLABELLED_EXAMPLE,
};

/// Each of `configs`, built (init seed 1) on the seeded tiny GPT-2 and LLaMA (seed 3), keeps the method contract
/// over 12 steps of the [`rule_lm_task`] (the loss falls, every trainable tensor moves and no frozen one does,
/// save -> load keeps the logits), every trainable tensor checked.
pub fn assert_contract_on_tiny_models<M: PeftMethod>(configs: &[M]) {
    let task = rule_lm_task();
    for model in &seeded_tiny_models(3) {
        for config in configs {
            let adapter = config.build(&mut init(model.as_ref(), 1)).unwrap();
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

/// A run of `config` (init seed 2) on `model`, 6 steps of the [`rule_lm_task`] stopped halfway and resumed,
/// ends within 1e-6 of an uninterrupted one.
pub fn assert_resume_exact(model: &dyn BaseModel, config: &dyn PeftMethod) {
    let task = rule_lm_task();
    let build = || -> peft_core::Result<Box<dyn Adapter>> { config.build(&mut init(model, 2)) };
    let how = Conformance {
        steps: 6,
        ..Conformance::default()
    };
    let worst = check_resume(model, &build, &task, &how).unwrap();
    assert!(worst < 1e-6, "resumed run differs by {worst}");
}

/// `config` (init seed 2) trained on `model` for 4 steps of the [`ragged_lm_task`], 5 examples a micro-batch
/// and two micro-batches a step, by one process and by data-parallel jobs of 2 and 3 ranks (uneven shards):
/// equal losses and adapters on every rank within 1e-5. Then 4 steps of the [`partly_unlabelled_lm_task`],
/// 2 examples a micro-batch over 2 ranks, where a rank's shard is at times one example without a label
/// (that rank adds no gradient): the same equality.
pub fn assert_data_parallel_exact(model: &dyn BaseModel, config: &dyn PeftMethod) {
    let task = ragged_lm_task();
    let build = || -> peft_core::Result<Box<dyn Adapter>> { config.build(&mut init(model, 2)) };
    let how = Conformance {
        steps: 4,
        batch_size: 5,
        ..Conformance::default()
    };
    for ranks in [2, 3] {
        let worst = check_data_parallel(model, &build, &task, &how, ranks)
            .unwrap_or_else(|e| panic!("{ranks} ranks: {e}"));
        assert!(
            worst < 1e-5,
            "{ranks} ranks differ from one process by {worst}"
        );
    }

    let task = partly_unlabelled_lm_task();
    let how = Conformance {
        steps: 4,
        batch_size: 2,
        ..Conformance::default()
    };
    let seed = TrainConfig::default().seed;
    assert!(
        (0..how.steps * 2)
            .any(|k| micro_batch(task.train_len(), 2, seed, k).contains(&UNLABELLED_EXAMPLE)),
        "no micro-batch draws the unlabelled example: the check would not exercise an empty shard"
    );
    let worst = check_data_parallel(model, &build, &task, &how, 2)
        .unwrap_or_else(|e| panic!("a shard without labels: {e}"));
    assert!(
        worst < 1e-5,
        "with a shard without labels, 2 ranks differ from one process by {worst}"
    );
}
