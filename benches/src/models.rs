//! The models the benches run on: every architecture's seeded tiny model (`peft_models` builds them) and a
//! "small" GPT-2 and LLaMA (4 layers, hidden 256, vocabulary 8192, 128 positions) built here from a config and
//! seeded random weights, plus one-layer variants of the small ones for the block benches.

use peft_models::config::{Gpt2Config, LlamaConfig};
use peft_models::weights::WeightMap;
use peft_models::{Gpt2, Llama};
use rand::rngs::StdRng;
use rand::Rng;

/// Vocabulary of the small models.
pub const SMALL_VOCAB: usize = 8192;

/// Hidden size of the small models.
pub const SMALL_HIDDEN: usize = 256;

/// The small GPT-2 configuration with `layers` blocks: hidden 256, 4 heads, vocabulary 8192, 128 positions.
pub fn small_gpt2_config(layers: usize) -> Gpt2Config {
    Gpt2Config {
        vocab_size: SMALL_VOCAB,
        n_positions: 128,
        n_embd: SMALL_HIDDEN,
        n_layer: layers,
        n_head: 4,
        n_inner: None,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new".into(),
        scale_attn_weights: true,
        scale_attn_by_inverse_layer_idx: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// The small LLaMA configuration with `layers` blocks: hidden 256, MLP 688, 4 heads sharing 2 key/value heads,
/// vocabulary 8192, 128 positions, untied head.
pub fn small_llama_config(layers: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: SMALL_VOCAB,
        hidden_size: SMALL_HIDDEN,
        intermediate_size: 688,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 128,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// A small GPT-2 with `layers` blocks and seeded random weights, on the CPU.
pub fn small_gpt2(layers: usize, seed: u64) -> peft_core::Result<Gpt2> {
    let cfg = small_gpt2_config(layers);
    Ok(Gpt2::from_weights(
        &cfg,
        &gpt2_weights(&cfg, seed),
        "bench-small-gpt2",
    )?)
}

/// A small LLaMA with `layers` blocks and seeded random weights, on the CPU.
pub fn small_llama(layers: usize, seed: u64) -> peft_core::Result<Llama> {
    let cfg = small_llama_config(layers);
    Ok(Llama::from_weights(
        &cfg,
        &llama_weights(&cfg, seed),
        "bench-small-llama",
    )?)
}

/// Seeded checkpoint tensors for any GPT-2 configuration, HF names and layouts (Conv1D weights `[in, out]`).
pub fn gpt2_weights(c: &Gpt2Config, seed: u64) -> WeightMap {
    peft_models::random::weights(peft_models::tiny::gpt2_shapes(c), seed, "bench small GPT-2")
}

/// Seeded checkpoint tensors for any LLaMA configuration (untied head), HF names.
pub fn llama_weights(c: &LlamaConfig, seed: u64) -> WeightMap {
    peft_models::random::weights(
        peft_models::tiny::llama_shapes(c),
        seed,
        "bench small LLaMA",
    )
}

/// `n` seeded token ids in `low..vocab`.
pub fn random_ids(rng: &mut StdRng, n: usize, low: u32, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|_| rng.random_range(low..vocab as u32))
        .collect()
}
