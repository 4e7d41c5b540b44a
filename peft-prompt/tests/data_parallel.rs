//! Prompt tuning and P-tuning (both encoders) trained as data-parallel jobs of 2 and 3 ranks end with the same
//! losses and prompts as one process, on both tiny architectures; so does prompt tuning with a token
//! classification head when a rank's shard has no labelled token.

use peft_core::head::WithClassifier;
use peft_core::method::{Adapter, PeftMethod};
use peft_prompt::{
    PromptEncoderConfig, PromptEncoderReparameterizationType, PromptTuningConfig, PromptTuningInit,
};
use peft_testing::{assert_data_parallel_exact, seeded_tiny_models};
use peft_train::conformance::{check_data_parallel, Conformance};
use peft_train::task::{TokenClassification, TokenExample};
use peft_train::train::order::micro_batch;
use peft_train::train::TrainConfig;

#[test]
fn prompt_tuning_over_ranks_equals_one_process() {
    for model in seeded_tiny_models(3) {
        assert_data_parallel_exact(
            model.as_ref(),
            &PromptTuningConfig::new(4, PromptTuningInit::Random),
        );
    }
}

#[test]
fn p_tuning_over_ranks_equals_one_process() {
    for model in seeded_tiny_models(3) {
        for encoder in [
            PromptEncoderReparameterizationType::Mlp,
            PromptEncoderReparameterizationType::Lstm,
        ] {
            assert_data_parallel_exact(model.as_ref(), &PromptEncoderConfig::new(4, encoder));
        }
    }
}

/// Token classification (prompt tuning with a token head), 2 examples a micro-batch over 2 ranks, where one
/// example has no labelled token: whenever it is drawn, its rank adds nothing, and the job equals one process.
#[test]
fn token_classification_with_an_unlabelled_shard_equals_one_process() {
    let example = |s: u32| {
        let input_ids: Vec<u32> = (0..4 + s % 3).map(|t| 1 + (s * 7 + t * 3) % 90).collect();
        let labels = if s == 1 {
            vec![-100; input_ids.len()]
        } else {
            input_ids.iter().map(|&i| i64::from(i % 3)).collect()
        };
        TokenExample { input_ids, labels }
    };
    let examples: Vec<TokenExample> = (0..6).map(example).collect();
    let task = TokenClassification::new(examples.clone(), examples, 3, 0).unwrap();
    let how = Conformance {
        steps: 4,
        batch_size: 2,
        ..Conformance::default()
    };
    let seed = TrainConfig::default().seed;
    assert!((0..8).any(|k| micro_batch(6, 2, seed, k).contains(&1)));
    for model in seeded_tiny_models(3) {
        let model = model.as_ref();
        let build = || -> peft_core::Result<Box<dyn Adapter>> {
            let mut init = peft_testing::init(model, 2);
            let prompt = PromptTuningConfig::new(4, PromptTuningInit::Random).build(&mut init)?;
            Ok(Box::new(
                WithClassifier::new(prompt, 3, &mut init)?.for_tokens(),
            ))
        };
        let worst = check_data_parallel(model, &build, &task, &how, 2).unwrap();
        assert!(worst < 1e-5, "2 ranks differ from one process by {worst}");
    }
}
