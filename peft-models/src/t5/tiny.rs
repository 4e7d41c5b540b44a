//! Seeded tiny T5 models built in code, for fast tests: vocabulary 128, d_model 32, 4 heads of d_kv 8,
//! d_ff 64, 2 encoder and 2 decoder blocks, 8 relative position buckets up to distance 16. The default is the
//! T5 v1.1 / flan-t5 layout (gated-gelu feed-forward, untied head); [`tiny_with`] also builds the T5 v1.0
//! layout (relu feed-forward, head tied to `shared` with the output scaled by `d_model^-0.5`).
//!
//! ```
//! use peft_core::model::BaseModel;
//! let flan = peft_models::t5::tiny(3);
//! assert!(flan.spec().find_site("decoder.block.1.layer.2.DenseReluDense.wi_1").is_some());
//! let v1 = peft_models::t5::tiny_with(3, false);
//! assert!(v1.spec().find_site("encoder.block.0.layer.1.DenseReluDense.wi").is_some());
//! ```

use super::{T5Config, T5};
use crate::weights::WeightMap;

/// The tiny T5 configuration: gated-gelu feed-forward, untied head (T5 v1.1 / flan-t5).
pub fn tiny_config() -> T5Config {
    T5Config {
        vocab_size: crate::tiny::VOCAB,
        d_model: 32,
        d_kv: 8,
        d_ff: 64,
        num_layers: 2,
        num_decoder_layers: Some(2),
        num_heads: 4,
        relative_attention_num_buckets: 8,
        relative_attention_max_distance: 16,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: "gated-gelu".into(),
        dense_act_fn: None,
        is_gated_act: None,
        tie_word_embeddings: Some(false),
        scale_decoder_outputs: None,
        pad_token_id: Some(0),
        eos_token_id: Some(1),
        decoder_start_token_id: Some(0),
        n_positions: None,
    }
}

/// A tiny T5 v1.1 (gated-gelu, untied head) with seeded random weights, on the CPU.
pub fn tiny(seed: u64) -> T5 {
    tiny_with(seed, true)
}

/// A tiny T5 with seeded random weights: `gated` gives the T5 v1.1 layout of [`tiny`], otherwise T5 v1.0
/// (relu feed-forward, tied and scaled head).
pub fn tiny_with(seed: u64, gated: bool) -> T5 {
    let mut cfg = tiny_config();
    if !gated {
        cfg.feed_forward_proj = "relu".into();
        cfg.tie_word_embeddings = Some(true);
    }
    T5::from_weights(&cfg, &tiny_weights(&cfg, seed), "tiny-t5")
        .expect("the tiny T5 weights fit its config")
}

/// Seeded random checkpoint tensors for any T5 configuration, Hugging Face names (`lm_head.weight` only when
/// the config unties the head).
pub fn tiny_weights(cfg: &T5Config, seed: u64) -> WeightMap {
    let (d, inner, ff) = (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff);
    let gated = cfg.is_gated().expect("a valid feed_forward_proj");
    let mut shapes = vec![("shared.weight".to_string(), vec![cfg.vocab_size, d])];
    let attention = |shapes: &mut Vec<(String, Vec<usize>)>, module: &str| {
        for (p, shape) in [
            ("q", [inner, d]),
            ("k", [inner, d]),
            ("v", [inner, d]),
            ("o", [d, inner]),
        ] {
            shapes.push((format!("{module}.{p}.weight"), shape.to_vec()));
        }
    };
    let feed_forward = |shapes: &mut Vec<(String, Vec<usize>)>, module: &str| {
        let wi: &[&str] = if gated { &["wi_0", "wi_1"] } else { &["wi"] };
        for w in wi {
            shapes.push((format!("{module}.DenseReluDense.{w}.weight"), vec![ff, d]));
        }
        shapes.push((format!("{module}.DenseReluDense.wo.weight"), vec![d, ff]));
        shapes.push((format!("{module}.layer_norm.weight"), vec![d]));
    };
    let buckets = cfg.relative_attention_num_buckets;
    for (stack, blocks) in [
        ("encoder", cfg.num_layers),
        ("decoder", cfg.decoder_layers()),
    ] {
        for i in 0..blocks {
            let p = format!("{stack}.block.{i}.layer");
            attention(&mut shapes, &format!("{p}.0.SelfAttention"));
            if i == 0 {
                shapes.push((
                    format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                    vec![buckets, cfg.num_heads],
                ));
            }
            shapes.push((format!("{p}.0.layer_norm.weight"), vec![d]));
            let ff_index = if stack == "decoder" {
                attention(&mut shapes, &format!("{p}.1.EncDecAttention"));
                shapes.push((format!("{p}.1.layer_norm.weight"), vec![d]));
                2
            } else {
                1
            };
            feed_forward(&mut shapes, &format!("{p}.{ff_index}"));
        }
        shapes.push((format!("{stack}.final_layer_norm.weight"), vec![d]));
    }
    if cfg.tie_word_embeddings == Some(false) {
        shapes.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, d]));
    }
    crate::tiny::random_weights(shapes, seed, "tiny T5")
}
