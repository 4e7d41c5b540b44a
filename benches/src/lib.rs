//! What the criterion benches of this crate measure, as a library so that the bench targets stay thin and the
//! setups are tested: every method on every architecture ([`Case`], [`Method`]), and the building blocks
//! ([`blocks`]). `cargo bench -p peft-benches` runs them; `benches/README.md` lists the groups.
//!
//! ```
//! use peft_benches::{Arch, Case, Method};
//! let case = Case::new(Arch::Gpt2Tiny).unwrap();
//! // Forward: the fixed batch through the adapter's hooks, gradients off.
//! let lora = case.adapter(Method::Lora).unwrap().expect("LoRA is an adapter");
//! assert_eq!(case.forward(lora.as_ref()).unwrap().dims(), &[4, 32, 32]);
//! // Train step: the task's loss on the fixed micro-batch, backward, one AdamW step.
//! let mut step = case.train_step(Method::PTuningV2).unwrap().expect("P-tuning v2 trains");
//! assert!(step.run().unwrap().is_finite());
//! // The bare model has nothing to train.
//! assert!(case.train_step(Method::Frozen).unwrap().is_none());
//! ```

pub mod allocator;
pub mod blocks;
mod case;
mod method;
pub mod models;
pub mod ops;

pub use case::{Arch, Case, TrainStep};
pub use method::{Method, VIRTUAL_TOKENS};

#[cfg(test)]
mod tests {
    use super::*;
    use peft_core::hooks::NoHooks;

    fn values(t: &candle_core::Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn every_method_runs_and_trains_on_every_tiny_architecture() {
        let tiny = [
            Arch::Gpt2Tiny,
            Arch::LlamaTiny,
            Arch::OptTiny,
            Arch::BertTiny,
            Arch::T5Tiny,
        ];
        for arch in tiny {
            let case = Case::new(arch).unwrap();
            let (batch, seq) = arch.shape();
            let frozen = case.forward(&NoHooks).unwrap();
            for method in Method::ALL {
                let what = format!("{} / {}", arch.name(), method.name());
                let Some(mut step) = case.train_step(method).unwrap() else {
                    assert_eq!(method, Method::Frozen, "{what}: no adapter");
                    continue;
                };
                let out = case.forward(step.adapter()).unwrap();
                let rows = out.dim(1).unwrap();
                assert_eq!(out.dim(0).unwrap(), batch, "{what}");
                // Prompt tuning and P-tuning prepend virtual tokens to decoder-only inputs; T5 returns decoder
                // states (half the source) whatever the method.
                let expected = match (arch, method) {
                    (Arch::T5Tiny, _) => seq / 2,
                    (_, Method::PromptTuning | Method::PTuning) => seq + VIRTUAL_TOKENS,
                    _ => seq,
                };
                assert_eq!(rows, expected, "{what}: hidden rows");
                assert!(!out.track_op(), "{what}: forward kept a graph");
                let before: Vec<Vec<f32>> = step
                    .adapter()
                    .trainable()
                    .iter()
                    .map(|(_, v)| values(v.as_tensor()))
                    .collect();
                let loss = step.run().unwrap();
                assert!(loss.is_finite() && loss > 0.0, "{what}: loss {loss}");
                let moved = step
                    .adapter()
                    .trainable()
                    .iter()
                    .zip(&before)
                    .filter(|((_, v), b)| values(v.as_tensor()) != **b)
                    .count();
                assert!(moved > 0, "{what}: the AdamW step moved nothing");
                assert_eq!(frozen.dim(0).unwrap(), batch);
            }
        }
    }

    #[test]
    fn small_models_have_the_documented_shape() {
        let gpt2 = models::small_gpt2(4, 1).unwrap();
        let llama = models::small_llama(1, 1).unwrap();
        use peft_core::model::BaseModel;
        for (spec, layers) in [(gpt2.spec(), 4), (llama.spec(), 1)] {
            assert_eq!(spec.num_layers, layers);
            assert_eq!(spec.hidden_size, models::SMALL_HIDDEN);
            assert_eq!(spec.vocab_size, models::SMALL_VOCAB);
        }
        assert_eq!(llama.spec().num_kv_heads, 2);
    }

    #[test]
    fn building_blocks_match_their_references() {
        let lin = blocks::FrozenLinearCase::small().unwrap();
        let (ours, candle) = (lin.forward().unwrap(), lin.candle_forward().unwrap());
        let diff = peft_core::compare::max_abs_diff(&ours, &candle).unwrap();
        assert!(
            diff < 1e-4,
            "frozen op differs from candle's matmul by {diff}"
        );
        assert_eq!(lin.forward_backward().unwrap().dims(), &[256, 256]);

        let att = blocks::AttentionCase::small().unwrap();
        assert_eq!(att.forward().unwrap().dims(), &[4, 64, 256]);
        let [gq, gk, gv] = att.forward_backward().unwrap();
        assert_eq!(gq.dims(), &[4, 4, 64, 64]);
        assert_eq!(gk.dims(), &[4, 2, 64, 64]);
        assert!(values(&gv).iter().any(|g| *g != 0.0));

        let block = blocks::BlockCase::llama_small().unwrap();
        assert_eq!(
            block.forward().unwrap().dims(),
            &[4, 64, models::SMALL_HIDDEN]
        );
        let g = block.forward_backward().unwrap();
        assert!(
            values(&g).iter().any(|g| *g != 0.0),
            "no gradient reached the embeddings"
        );
    }
}
