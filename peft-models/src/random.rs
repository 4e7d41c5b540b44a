//! Seeded random-initialised models of standard shapes, for benchmarks that need no weights: the model spec
//! `random:gpt2-124m` (GPT-2 small: 12 layers x 768, vocabulary 50,257, 1,024 positions) or
//! `random:llama-135m` (SmolLM2-135M's shape: 30 layers x 576, 9 heads sharing 3 key/value heads, MLP 1,536,
//! vocabulary 49,152, tied head). Weights follow transformers' initialisation (matrices N(0, 0.02), biases 0,
//! norm weights 1), so activations stay in the range of a trained model and timings are representative.
//!
//! ```
//! let names = peft_models::random::known_names();
//! assert!(names.contains(&"random:gpt2-124m"));
//! let cfg = peft_models::random::gpt2_124m_config();
//! assert_eq!((cfg.n_layer, cfg.n_embd, cfg.vocab_size), (12, 768, 50257));
//! let err = peft_models::random::load("random:gpt3").err().expect("not a random model");
//! assert!(err.to_string().contains("random:gpt2-124m"));
//! ```

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Normal;

use crate::config::{Gpt2Config, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::loaded::{LoadOptions, LoadedModel};
use crate::weights::WeightMap;
use crate::{Gpt2, Llama};

/// The prefix that marks a random model spec.
pub const PREFIX: &str = "random:";

/// Seed of the weights (fixed: the same spec gives the same model).
const SEED: u64 = 0;

/// Every random model spec.
pub fn known_names() -> Vec<&'static str> {
    vec!["random:gpt2-124m", "random:llama-135m"]
}

/// GPT-2 small (124M): transformers' `GPT2Config()` defaults.
pub fn gpt2_124m_config() -> Gpt2Config {
    serde_json::from_str("{}").expect("every GPT-2 field has a default")
}

/// SmolLM2-135M's configuration (LLaMA architecture, grouped-query attention, tied head).
pub fn llama_135m_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: Some(3),
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// The model a `random:<arch>-<size>` spec names, with seeded weights on the CPU and no tokenizer.
pub fn load(spec: &str) -> Result<LoadedModel> {
    load_with(spec, LoadOptions::default())
}

/// [`load`], with the frozen projections in bf16 where `options` asks for it (the other options do not apply
/// to a random model).
pub fn load_with(spec: &str, options: LoadOptions) -> Result<LoadedModel> {
    let bf16 = |mut w: WeightMap| {
        w.set_bf16_projections(options.bf16_projections);
        w
    };
    let (model, eos): (Box<dyn peft_core::model::BaseModel>, _) = match spec {
        "random:gpt2-124m" => {
            let cfg = gpt2_124m_config();
            let weights = bf16(weights(crate::tiny::gpt2_shapes(&cfg), SEED, spec));
            (
                Box::new(Gpt2::from_weights(&cfg, &weights, spec)?),
                cfg.eos_token_id,
            )
        }
        "random:llama-135m" => {
            let cfg = llama_135m_config();
            let mut shapes = crate::tiny::llama_shapes(&cfg);
            shapes.retain(|(name, _)| name != "lm_head.weight");
            let weights = bf16(weights(shapes, SEED, spec));
            (
                Box::new(Llama::from_weights(&cfg, &weights, spec)?),
                cfg.eos_token_id,
            )
        }
        other => {
            return Err(ModelError::Config(format!(
                "`{other}` is not a random model: use one of {}",
                known_names().join(", ")
            )))
        }
    };
    Ok(LoadedModel {
        model,
        tokenizer: None,
        eos_token_id: eos,
    })
}

/// Seeded checkpoint tensors for `shapes` (HF names), drawn in order from one generator with transformers'
/// initialisation scales: matrices N(0, 0.02), biases 0, norm weights 1.
pub fn weights(shapes: Vec<(String, Vec<usize>)>, seed: u64, source: &str) -> WeightMap {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0f32, 0.02).expect("a valid normal");
    let tensors: HashMap<String, Tensor> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let is_norm = name.contains("norm") || name.contains(".ln_");
            let values: Vec<f32> = if name.ends_with(".bias") {
                vec![0.0; n]
            } else if is_norm {
                vec![1.0; n]
            } else {
                (0..n).map(|_| rng.sample(normal)).collect()
            };
            let t =
                Tensor::from_vec(values, shape, &Device::Cpu).expect("shape matches the values");
            (name, t)
        })
        .collect();
    WeightMap::new(tensors, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_the_standard_ones() {
        let cfg = llama_135m_config();
        // SmolLM2-135M: 134.5M parameters with the tied head.
        let total: usize = crate::tiny::llama_shapes(&cfg)
            .iter()
            .filter(|(n, _)| n != "lm_head.weight")
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(total, 134_515_008);
        let total: usize = crate::tiny::gpt2_shapes(&gpt2_124m_config())
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(total, 124_439_808);
    }

    #[test]
    fn weights_follow_the_initialisation_and_the_seed() {
        let shapes = vec![
            ("a.weight".to_string(), vec![4, 3]),
            ("a.bias".to_string(), vec![4]),
            ("transformer.ln_f.weight".to_string(), vec![3]),
        ];
        let w = weights(shapes.clone(), 5, "t");
        let again = weights(shapes, 5, "t");
        let m = w.get_any("a.weight").unwrap();
        assert_eq!(
            m.to_vec2::<f32>().unwrap(),
            again.get_any("a.weight").unwrap().to_vec2::<f32>().unwrap()
        );
        assert!(m
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .flatten()
            .all(|v| v.abs() < 0.2));
        assert_eq!(
            w.get_any("a.bias").unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0; 4]
        );
        assert_eq!(
            w.get_any("transformer.ln_f.weight")
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![1.0; 3]
        );
    }
}
