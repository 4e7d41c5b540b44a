//! Prefix tuning (with and without its projection) trained as data-parallel jobs of 2 and 3 ranks ends with the
//! same losses and tensors as one process, on both tiny architectures.

use peft_prefix::PrefixTuningConfig;
use peft_testing::{assert_data_parallel_exact, seeded_tiny_models};

#[test]
fn prefix_tuning_over_ranks_equals_one_process() {
    for model in seeded_tiny_models(3) {
        for config in [
            PrefixTuningConfig::new(3),
            PrefixTuningConfig::with_projection(3, Some(16)),
        ] {
            assert_data_parallel_exact(model.as_ref(), &config);
        }
    }
}
