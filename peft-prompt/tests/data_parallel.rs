//! Prompt tuning and P-tuning (both encoders) trained as data-parallel jobs of 2 and 3 ranks end with the same
//! losses and prompts as one process, on both tiny architectures.

use peft_prompt::{
    PromptEncoderConfig, PromptEncoderReparameterizationType, PromptTuningConfig, PromptTuningInit,
};
use peft_testing::{assert_data_parallel_exact, seeded_tiny_models};

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
