//! Seeded tiny models built in code, for fast tests of every crate: no files, the same seed gives the same
//! weights. Two layers, hidden 32, 4 heads (LLaMA with 2 key/value heads), vocabulary 128, 64 positions.
//!
//! Weights are drawn from a seeded `StdRng`: projections N(0, 0.15), embeddings N(0, 0.5), biases N(0, 0.1),
//! norm weights 1 + N(0, 0.2). These are larger than HF's 0.02 init on purpose, so that every term of the
//! forward pass moves the output measurably (finite-difference and parity checks need that signal).
//!
//! ```
//! use peft_core::model::BaseModel;
//! let a = peft_models::tiny::llama(7);
//! let b = peft_models::tiny::llama(7);
//! let (wa, wb) = (&a.parameters()[0].1, &b.parameters()[0].1);
//! assert_eq!(wa.to_vec2::<f32>().unwrap(), wb.to_vec2::<f32>().unwrap());
//! assert_eq!(a.spec().num_kv_heads, 2);
//! assert_eq!(peft_models::tiny::gpt2(0).spec().vocab_size, 128);
//! ```

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Normal;

use crate::config::{Gemma3Config, Gpt2Config, LlamaConfig};
use crate::gemma3::Gemma3;
use crate::gpt2::Gpt2;
use crate::llama::Llama;
use crate::weights::WeightMap;

/// Vocabulary of the tiny models.
pub const VOCAB: usize = 128;

/// The tiny GPT-2 configuration (tied head, `gelu_new`).
pub fn gpt2_config() -> Gpt2Config {
    Gpt2Config {
        vocab_size: VOCAB,
        n_positions: 64,
        n_embd: 32,
        n_layer: 2,
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

/// The tiny LLaMA configuration (grouped-query attention with 2 key/value heads, untied head).
pub fn llama_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: VOCAB,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// A tiny GPT-2 with seeded random weights, on the CPU.
pub fn gpt2(seed: u64) -> Gpt2 {
    Gpt2::from_weights(&gpt2_config(), &gpt2_weights(seed), "tiny-gpt2")
        .expect("the tiny GPT-2 weights fit its config")
}

/// A tiny LLaMA with seeded random weights, on the CPU.
pub fn llama(seed: u64) -> Llama {
    Llama::from_weights(&llama_config(), &llama_weights(seed), "tiny-llama")
        .expect("the tiny LLaMA weights fit its config")
}

/// The checkpoint tensors of [`gpt2`], HF names and layouts (Conv1D weights `[in, out]`).
pub fn gpt2_weights(seed: u64) -> WeightMap {
    random_weights(gpt2_shapes(&gpt2_config()), seed, "tiny GPT-2")
}

/// The tensor names and shapes of a GPT-2 checkpoint of configuration `c` (Conv1D weights `[in, out]`), in
/// a fixed order.
pub fn gpt2_shapes(c: &Gpt2Config) -> Vec<(String, Vec<usize>)> {
    let (h, inner) = (c.n_embd, c.inner());
    let mut shapes = vec![
        ("transformer.wte.weight".to_string(), vec![c.vocab_size, h]),
        ("transformer.wpe.weight".to_string(), vec![c.n_positions, h]),
        ("transformer.ln_f.weight".to_string(), vec![h]),
        ("transformer.ln_f.bias".to_string(), vec![h]),
    ];
    for i in 0..c.n_layer {
        let p = format!("transformer.h.{i}");
        for (module, in_f, out_f) in [
            ("attn.c_attn", h, 3 * h),
            ("attn.c_proj", h, h),
            ("mlp.c_fc", h, inner),
            ("mlp.c_proj", inner, h),
        ] {
            shapes.push((format!("{p}.{module}.weight"), vec![in_f, out_f]));
            shapes.push((format!("{p}.{module}.bias"), vec![out_f]));
        }
        for ln in ["ln_1", "ln_2"] {
            shapes.push((format!("{p}.{ln}.weight"), vec![h]));
            shapes.push((format!("{p}.{ln}.bias"), vec![h]));
        }
    }
    shapes
}

/// The checkpoint tensors of [`llama`], HF names.
pub fn llama_weights(seed: u64) -> WeightMap {
    random_weights(llama_shapes(&llama_config()), seed, "tiny LLaMA")
}

/// The tensor names and shapes of a LLaMA checkpoint of configuration `c` with an untied head, in a fixed
/// order.
pub fn llama_shapes(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, d, inner) = (c.hidden_size, c.head_dim(), c.intermediate_size);
    let (q, kv) = (c.num_attention_heads * d, c.kv_heads() * d);
    let mut shapes = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![c.vocab_size, h],
        ),
        ("model.norm.weight".to_string(), vec![h]),
        ("lm_head.weight".to_string(), vec![c.vocab_size, h]),
    ];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (module, shape) in [
            ("input_layernorm", vec![h]),
            ("post_attention_layernorm", vec![h]),
            ("self_attn.q_proj", vec![q, h]),
            ("self_attn.k_proj", vec![kv, h]),
            ("self_attn.v_proj", vec![kv, h]),
            ("self_attn.o_proj", vec![h, q]),
            ("mlp.gate_proj", vec![inner, h]),
            ("mlp.up_proj", vec![inner, h]),
            ("mlp.down_proj", vec![h, inner]),
        ] {
            shapes.push((format!("{p}.{module}.weight"), shape));
        }
    }
    shapes
}

/// The sliding window of the tiny Gemma-3: shorter than the test sequences, so that the mask matters.
pub const GEMMA3_WINDOW: usize = 3;

/// The tiny Gemma-3 configuration: layer 0 slides (window [`GEMMA3_WINDOW`], local RoPE base 500), layer 1
/// is global (base 10000); 2 key/value heads of dimension 16 (not hidden / heads), `query_pre_attn_scalar` 24
/// (not head_dim), tied head.
pub fn gemma3_config() -> Gemma3Config {
    Gemma3Config {
        vocab_size: VOCAB,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        hidden_activation: "gelu_pytorch_tanh".into(),
        max_position_embeddings: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_local_base_freq: 500.0,
        query_pre_attn_scalar: 24.0,
        sliding_window: Some(GEMMA3_WINDOW),
        layer_types: Some(vec!["sliding_attention".into(), "full_attention".into()]),
        sliding_window_pattern: None,
        attention_bias: false,
        final_logit_softcapping: None,
        attn_logit_softcapping: None,
        use_bidirectional_attention: None,
        tie_word_embeddings: true,
        bos_token_id: Some(2),
        eos_token_id: Some(1),
        pad_token_id: Some(0),
    }
}

/// A tiny Gemma-3 with seeded random weights, on the CPU.
pub fn gemma3(seed: u64) -> Gemma3 {
    Gemma3::from_weights(&gemma3_config(), &gemma3_weights(seed), "tiny-gemma3")
        .expect("the tiny Gemma-3 weights fit its config")
}

/// The checkpoint tensors of [`gemma3`], HF names. Norm weights are the raw `w` of `1 + w`, drawn around 0 so
/// that the norms scale by about 1 as the other tiny models' do, and the embedding table is divided by
/// sqrt(hidden), which Gemma multiplies back: at the other models' scales the logits would be too peaked for a
/// few training steps to move them.
pub fn gemma3_weights(seed: u64) -> WeightMap {
    let drawn = random_weights(gemma3_shapes(&gemma3_config()), seed, "tiny Gemma-3");
    let tensors = drawn
        .names()
        .map(|name| {
            let t = drawn.get_any(name).expect("drawn above");
            let t = if name.contains("norm") {
                (t - 1.0).expect("f32 arithmetic")
            } else if name.contains("embed_tokens") {
                // Gemma multiplies the looked-up rows by sqrt(hidden): this keeps them at the others' scale.
                (t / (gemma3_config().hidden_size as f64).sqrt()).expect("f32 arithmetic")
            } else {
                t
            };
            (name.clone(), t)
        })
        .collect();
    WeightMap::new(tensors, "tiny Gemma-3")
}

/// The tensor names and shapes of a Gemma-3 checkpoint of configuration `c` (no biases; `lm_head.weight` only
/// with an untied head), in a fixed order.
pub fn gemma3_shapes(c: &Gemma3Config) -> Vec<(String, Vec<usize>)> {
    let (h, d, inner) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
    let mut shapes = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![c.vocab_size, h],
        ),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !c.tie_word_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (module, shape) in [
            ("input_layernorm", vec![h]),
            ("post_attention_layernorm", vec![h]),
            ("pre_feedforward_layernorm", vec![h]),
            ("post_feedforward_layernorm", vec![h]),
            ("self_attn.q_proj", vec![q, h]),
            ("self_attn.k_proj", vec![kv, h]),
            ("self_attn.v_proj", vec![kv, h]),
            ("self_attn.o_proj", vec![h, q]),
            ("self_attn.q_norm", vec![d]),
            ("self_attn.k_norm", vec![d]),
            ("mlp.gate_proj", vec![inner, h]),
            ("mlp.up_proj", vec![inner, h]),
            ("mlp.down_proj", vec![h, inner]),
        ] {
            shapes.push((format!("{p}.{module}.weight"), shape));
        }
    }
    shapes
}

/// Draws every tensor in the given order from one seeded generator.
pub(crate) fn random_weights(
    shapes: Vec<(String, Vec<usize>)>,
    seed: u64,
    source: &str,
) -> WeightMap {
    let mut rng = StdRng::seed_from_u64(seed);
    let unit = Normal::new(0f32, 1.0).expect("a valid normal");
    let mut tensors = HashMap::new();
    for (name, shape) in shapes {
        let is_norm = name.contains("norm") || name.contains(".ln_");
        let (mean, std) = if is_norm && name.ends_with(".weight") {
            (1.0, 0.2)
        } else if name.ends_with(".bias") {
            (0.0, 0.1)
        } else if name.contains("wte") || name.contains("wpe") || name.contains("embed_tokens") {
            (0.0, 0.5)
        } else {
            (0.0, 0.15)
        };
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| mean + std * rng.sample(unit)).collect();
        let t = Tensor::from_vec(values, shape, &Device::Cpu).expect("shape matches the values");
        tensors.insert(name, t);
    }
    WeightMap::new(tensors, source)
}
