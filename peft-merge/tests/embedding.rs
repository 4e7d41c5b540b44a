//! Embeddings' LoRA factors (`lora_embedding_A` `[r, vocab]`, `lora_embedding_B` `[dim, r]`, HF PEFT's keys for
//! `nn.Embedding`) merge as linear layers' do and keep their keys; an embedding and a linear layer of one name
//! are refused.

use std::collections::BTreeMap;

use peft_lora::LoraConfig;
use peft_merge::{
    merge, Combination, FactorKeys, Matrix, MergeOptions, ModuleFactors, SourceAdapter,
};

const MODULE: &str = "model.embed_tokens";

fn embedding(name: &str, a: Vec<f64>, b: Vec<f64>, keys: FactorKeys) -> SourceAdapter {
    let factors = ModuleFactors {
        a: Matrix::new(1, 3, a),
        b: Matrix::new(2, 1, b),
        keys,
    };
    let config = LoraConfig::new(1, ["embed_tokens"]);
    SourceAdapter::new(
        name,
        config,
        BTreeMap::from([(MODULE.to_string(), factors)]),
    )
    .unwrap()
}

#[test]
fn embedding_factors_merge_under_their_own_keys() {
    let x = embedding(
        "x",
        vec![1.0, 0.0, 2.0],
        vec![1.0, -1.0],
        FactorKeys::Embedding,
    );
    let y = embedding(
        "y",
        vec![0.0, 3.0, 0.0],
        vec![2.0, 0.5],
        FactorKeys::Embedding,
    );
    for combination in [Combination::Cat, Combination::Svd] {
        let options = MergeOptions {
            svd_rank: Some(2),
            ..MergeOptions::new(combination, vec![0.5, 0.25])
        };
        let merged = merge(&[x.clone(), y.clone()], &options).unwrap();
        let keys: Vec<String> = merged
            .tensors()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "base_model.model.model.embed_tokens.lora_embedding_A",
                "base_model.model.model.embed_tokens.lora_embedding_B"
            ]
        );
        // Both are exact at rank 2: 0.5 * 8 * B_x A_x + 0.25 * 8 * B_y A_y (lora_alpha 8 over r 1).
        let expected = Matrix::new(
            2,
            3,
            x.modules()[MODULE]
                .product()
                .scaled(4.0)
                .data
                .iter()
                .zip(&y.modules()[MODULE].product().scaled(2.0).data)
                .map(|(p, q)| p + q)
                .collect(),
        );
        let diff = merged.delta(MODULE).unwrap().max_abs_diff(&expected);
        assert!(diff < 1e-12, "{combination}: {diff}");
    }
}

#[test]
fn an_embedding_and_a_linear_layer_of_one_name_are_refused() {
    let x = embedding(
        "x",
        vec![1.0, 0.0, 2.0],
        vec![1.0, -1.0],
        FactorKeys::Embedding,
    );
    let y = embedding("y", vec![0.0, 3.0, 0.0], vec![2.0, 0.5], FactorKeys::Linear);
    let err = merge(
        &[x, y],
        &MergeOptions::new(Combination::Cat, vec![1.0, 1.0]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`model.embed_tokens` is adapted as an embedding in adapter x but as a linear layer in adapter y"),
        "{err}"
    );
}
