//! BitFit trained as data-parallel jobs of 2 and 3 ranks ends with the same losses and biases as one process,
//! on both tiny architectures.

use peft_bitfit::BitFitConfig;
use peft_testing::{assert_data_parallel_exact, seeded_tiny_models};

#[test]
fn bitfit_over_ranks_equals_one_process() {
    for model in seeded_tiny_models(3) {
        assert_data_parallel_exact(model.as_ref(), &BitFitConfig::default());
    }
}
