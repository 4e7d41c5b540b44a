//! Unit tests of the LLaMA model, kept beside it (as `bert/tests.rs`) so that `llama.rs` holds the model.

use super::*;
use candle_core::DType;
use peft_core::hooks::NoHooks;
use peft_core::spec::SiteKind;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

#[test]
fn spec_has_gqa_shapes_and_every_site() {
    let m = crate::tiny::llama(0);
    let spec = m.spec();
    assert_eq!(spec.sites.len(), 9 * spec.num_layers + 1);
    let k = spec.site(spec.find_site("model.layers.0.self_attn.k_proj").unwrap());
    assert_eq!(
        k.kind,
        SiteKind::Linear {
            in_features: spec.hidden_size,
            out_features: spec.num_kv_heads * spec.head_dim,
            fan_in_fan_out: false
        }
    );
    assert!(matches!(
        spec.site(spec.find_site("model.norm").unwrap()).kind,
        SiteKind::Norm { .. }
    ));
    let total: usize = m.parameters().iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(spec.num_parameters, total);
    let has = |n: &str| m.parameters().iter().any(|(p, _)| p == n);
    assert_eq!(has("lm_head.weight"), !m.config().tie_word_embeddings);
}

#[test]
fn tied_head_is_the_embedding_and_untied_needs_lm_head() {
    let mut cfg = crate::tiny::llama(0).config().clone();
    let w = crate::tiny::llama_weights(0);
    cfg.tie_word_embeddings = true;
    let tied = Llama::from_weights(&cfg, &w, "x").unwrap();
    let emb = w.get_any("model.embed_tokens.weight").unwrap();
    assert_eq!(
        max_diff(&tied.lm_head().unwrap().weight().unwrap(), &emb),
        0.0
    );
    assert!(!tied.parameters().iter().any(|(n, _)| n == "lm_head.weight"));
    cfg.tie_word_embeddings = false;
    let names: Vec<String> = w
        .names()
        .filter(|n| *n != "lm_head.weight")
        .cloned()
        .collect();
    let tensors = names
        .iter()
        .map(|n| (n.clone(), w.get_any(n).unwrap()))
        .collect();
    let err = Llama::from_weights(&cfg, &WeightMap::new(tensors, "t"), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("lm_head.weight"), "{err}");
}

#[test]
fn padding_does_not_change_real_positions() {
    let m = crate::tiny::llama(2);
    let dev = m.device().clone();
    let ids = Tensor::new(&[[7u32, 8, 9, 10], [7, 8, 0, 0]], &dev).unwrap();
    let mask = Tensor::new(&[[1u8, 1, 1, 1], [1, 1, 0, 0]], &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let padded = m
        .forward(&Batch::new(ids, mask).unwrap(), &NoHooks)
        .unwrap()
        .hidden;
    let short = m
        .forward(&Batch::single(&[7, 8], &dev).unwrap(), &NoHooks)
        .unwrap()
        .hidden;
    let row = padded.narrow(0, 1, 1).unwrap().narrow(1, 0, 2).unwrap();
    assert!(max_diff(&row, &short) < 1e-5);
    // Changing the padded ids changes nothing for the real positions.
    let ids2 = Tensor::new(&[[7u32, 8, 9, 10], [7, 8, 50, 60]], &dev).unwrap();
    let mask2 = Tensor::new(&[[1f32, 1., 1., 1.], [1., 1., 0., 0.]], &dev).unwrap();
    let other = m
        .forward(&Batch::new(ids2, mask2).unwrap(), &NoHooks)
        .unwrap()
        .hidden;
    assert!(
        max_diff(
            &other.narrow(1, 0, 2).unwrap(),
            &padded.narrow(1, 0, 2).unwrap()
        ) < 1e-6
    );
}

#[test]
fn too_long_a_sequence_is_an_error() {
    let m = crate::tiny::llama(0);
    let ids: Vec<u32> = vec![1; m.spec().max_positions + 1];
    let err = m
        .forward(&Batch::single(&ids, m.device()).unwrap(), &NoHooks)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
}
