//! Unit tests of the BERT model, kept beside it (as `t5/tests.rs`) so that `bert.rs` holds the model only.

use super::*;
use peft_core::hooks::NoHooks;
use peft_core::spec::SiteKind;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

fn without(weights: &WeightMap, drop: impl Fn(&str) -> bool) -> WeightMap {
    let tensors = weights
        .names()
        .filter(|n| !drop(n))
        .map(|n| (n.clone(), weights.get_any(n).unwrap()))
        .collect();
    WeightMap::new(tensors, "test")
}

#[test]
fn spec_names_every_site_as_bert_model_does() {
    let m = tiny(0);
    let spec = m.spec();
    assert_eq!(spec.architecture, "bert");
    assert_eq!(
        (
            spec.num_layers,
            spec.hidden_size,
            spec.num_heads,
            spec.num_kv_heads
        ),
        (2, 32, 4, 4)
    );
    assert_eq!(
        (spec.vocab_size, spec.max_positions, spec.head_dim),
        (128, 64, 8)
    );
    assert_eq!(spec.classifier_module, "classifier");
    assert!(spec.classifier_bias);
    assert_eq!(spec.base_model_prefix.as_deref(), Some("bert"));
    assert!(!spec.is_encoder_decoder);
    // embeddings.LayerNorm, 6 linears + 2 norms per layer, the pooler.
    assert_eq!(spec.sites.len(), 1 + 8 * 2 + 1);
    let site = |name: &str| spec.site(spec.find_site(name).unwrap_or_else(|| panic!("{name}")));
    let q = site("encoder.layer.1.attention.self.query");
    assert_eq!(q.layer, Some(1));
    assert!(q.has_bias);
    assert_eq!(
        q.kind,
        SiteKind::Linear {
            in_features: 32,
            out_features: 32,
            fan_in_fan_out: false
        }
    );
    assert_eq!(
        site("encoder.layer.0.intermediate.dense").kind,
        SiteKind::Linear {
            in_features: 32,
            out_features: 64,
            fan_in_fan_out: false
        }
    );
    assert_eq!(
        site("encoder.layer.0.output.dense").kind,
        SiteKind::Linear {
            in_features: 64,
            out_features: 32,
            fan_in_fan_out: false
        }
    );
    for name in [
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.value",
        "encoder.layer.0.attention.output.dense",
    ] {
        assert_eq!(site(name).layer, Some(0));
    }
    for name in [
        "encoder.layer.1.attention.output.LayerNorm",
        "encoder.layer.1.output.LayerNorm",
    ] {
        assert_eq!(site(name).kind, SiteKind::Norm { dim: 32 });
        assert_eq!(site(name).layer, Some(1));
    }
    let emb_norm = site("embeddings.LayerNorm");
    assert_eq!((emb_norm.layer, emb_norm.has_bias), (None, true));
    let pooler = site("pooler.dense");
    assert_eq!(pooler.layer, None);
    assert!(matches!(pooler.kind, SiteKind::Linear { .. }));
    // Every linear site has its frozen projection.
    for (id, s) in spec.iter_sites() {
        let is_linear = matches!(s.kind, SiteKind::Linear { .. });
        assert_eq!(m.frozen_linear(id).is_some(), is_linear, "{}", s.name);
    }
    let total: usize = m.parameters().iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(spec.num_parameters, total);
    assert!(m.parameters().iter().all(|(n, _)| !n.starts_with("bert.")));
    assert!(m
        .parameters()
        .iter()
        .any(|(n, _)| n == "embeddings.token_type_embeddings.weight"));
    assert!(m.lm_head().is_none());
    assert!(m
        .logits(&Tensor::zeros((1, 32), DType::F32, m.device()).unwrap())
        .is_err());
    assert_eq!(m.pad_token_id(), Some(0));
    assert_eq!(spec.name_or_path, "tiny-bert");
}

#[test]
fn tiny_norms_get_norm_scales() {
    let w = tiny_weights(0);
    let g = w
        .get_any("encoder.layer.0.output.LayerNorm.weight")
        .unwrap();
    let mean = g.mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!((mean - 1.0).abs() < 0.2, "{mean}");
    assert!(!w.names().any(|n| n.contains("layernorm")));
}

#[test]
fn padding_does_not_change_real_positions() {
    let m = tiny(1);
    let dev = m.device().clone();
    let ids = Tensor::new(&[[2u32, 8, 9, 10, 11], [2, 8, 9, 0, 0]], &dev).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], &dev).unwrap();
    let types = Tensor::new(&[[0u32, 0, 1, 1, 1], [0, 1, 1, 0, 0]], &dev).unwrap();
    let batch = Batch::new(ids, mask)
        .unwrap()
        .with_token_type_ids(types)
        .unwrap();
    let padded = m.forward(&batch, &NoHooks).unwrap();
    let single = Batch::single(&[2, 8, 9], &dev)
        .unwrap()
        .with_token_type_ids(Tensor::new(&[[0u32, 1, 1]], &dev).unwrap())
        .unwrap();
    let short = m.forward(&single, &NoHooks).unwrap();
    let row = padded
        .hidden
        .narrow(0, 1, 1)
        .unwrap()
        .narrow(1, 0, 3)
        .unwrap();
    assert!(max_diff(&row, &short.hidden) < 1e-5);
    // The pooled output of the padded row equals the unpadded one's.
    let pooled = m
        .pooled(&padded, &batch, &NoHooks)
        .unwrap()
        .narrow(0, 1, 1)
        .unwrap();
    assert!(max_diff(&pooled, &m.pooled(&short, &single, &NoHooks).unwrap()) < 1e-5);
    // Bidirectional: the first token's state depends on later tokens.
    let other = m
        .forward(&Batch::single(&[2, 8, 7], &dev).unwrap(), &NoHooks)
        .unwrap();
    let plain = m
        .forward(&Batch::single(&[2, 8, 9], &dev).unwrap(), &NoHooks)
        .unwrap();
    let first = |o: &Output| o.hidden.narrow(1, 0, 1).unwrap();
    assert!(max_diff(&first(&other), &first(&plain)) > 1e-3);
}

#[test]
fn token_types_change_the_output() {
    let m = tiny(2);
    let dev = m.device().clone();
    let ids = [2u32, 5, 6, 3];
    let plain = m
        .forward(&Batch::single(&ids, &dev).unwrap(), &NoHooks)
        .unwrap();
    let zeros = Batch::single(&ids, &dev)
        .unwrap()
        .with_token_type_ids(Tensor::zeros((1, 4), DType::U32, &dev).unwrap())
        .unwrap();
    let explicit = m.forward(&zeros, &NoHooks).unwrap();
    assert_eq!(max_diff(&plain.hidden, &explicit.hidden), 0.0);
    let pair = Batch::single(&ids, &dev)
        .unwrap()
        .with_token_type_ids(Tensor::new(&[[0u32, 0, 1, 1]], &dev).unwrap())
        .unwrap();
    let segmented = m.forward(&pair, &NoHooks).unwrap();
    assert!(max_diff(&plain.hidden, &segmented.hidden) > 1e-3);
}

#[test]
fn pooled_is_tanh_of_the_pooler_over_position_zero() {
    let m = tiny(3);
    let dev = m.device().clone();
    let ids = Tensor::new(&[[2u32, 8, 9, 3], [2, 4, 3, 0]], &dev).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1.], [1., 1., 1., 0.]], &dev).unwrap();
    let batch = Batch::new(ids, mask).unwrap();
    let out = m.forward(&batch, &NoHooks).unwrap();
    let pooled = m.pooled(&out, &batch, &NoHooks).unwrap();
    assert_eq!(pooled.dims(), &[2, 32]);
    let pooler = m.pooler.as_ref().unwrap();
    let first = out.hidden.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let expected = pooler.linear.forward(&first).unwrap().tanh().unwrap();
    assert!(max_diff(&pooled, &expected) < 1e-6);
    let values = pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| v.abs() < 1.0));
}

#[test]
fn checkpoint_without_pooler_loads_and_pooled_errors() {
    let w = without(&tiny_weights(4), |n| n.starts_with("pooler."));
    let m = Bert::from_weights(&tiny_config(), &w, "no-pooler").unwrap();
    assert!(!m.has_pooler());
    assert!(m.spec().find_site("pooler.dense").is_none());
    assert_eq!(m.spec().sites.len(), 17);
    let batch = Batch::single(&[2, 5, 3], m.device()).unwrap();
    let out = m.forward(&batch, &NoHooks).unwrap();
    // The encoder is the same as with a pooler.
    let full = tiny(4).forward(&batch, &NoHooks).unwrap();
    assert_eq!(max_diff(&out.hidden, &full.hidden), 0.0);
    let err = m.pooled(&out, &batch, &NoHooks).unwrap_err().to_string();
    assert!(
        err.contains("no pooler") && err.contains("add_pooling_layer"),
        "{err}"
    );
}

#[test]
fn task_model_checkpoints_with_bert_prefix_load_the_same() {
    let base = tiny_weights(5);
    let mut tensors: std::collections::HashMap<String, Tensor> = base
        .names()
        .map(|n| (format!("bert.{n}"), base.get_any(n).unwrap()))
        .collect();
    // A task head's tensors are not read.
    tensors.insert(
        "classifier.weight".into(),
        Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let prefixed = WeightMap::new(tensors, "prefixed");
    let m = Bert::from_weights(&tiny_config(), &prefixed, "prefixed").unwrap();
    let batch = Batch::single(&[2, 5, 6, 3], m.device()).unwrap();
    let a = m.forward(&batch, &NoHooks).unwrap().hidden;
    let b = tiny(5).forward(&batch, &NoHooks).unwrap().hidden;
    assert_eq!(max_diff(&a, &b), 0.0);
    assert!(m.parameters().iter().all(|(n, _)| !n.starts_with("bert.")));
    assert!(m
        .spec()
        .find_site("encoder.layer.0.attention.self.query")
        .is_some());
}

#[test]
fn legacy_gamma_beta_names_load() {
    let base = tiny_weights(6);
    let legacy = base.clone().rename(|k| {
        k.replace("LayerNorm.weight", "LayerNorm.gamma")
            .replace("LayerNorm.bias", "LayerNorm.beta")
    });
    let m = Bert::from_weights(&tiny_config(), &legacy, "legacy").unwrap();
    let batch = Batch::single(&[2, 5, 3], m.device()).unwrap();
    let a = m.forward(&batch, &NoHooks).unwrap().hidden;
    let b = tiny(6).forward(&batch, &NoHooks).unwrap().hidden;
    assert_eq!(max_diff(&a, &b), 0.0);
}

#[test]
fn missing_tensor_is_named() {
    let w = without(&tiny_weights(0), |n| {
        n == "encoder.layer.1.output.LayerNorm.bias"
    });
    let err = Bert::from_weights(&tiny_config(), &w, "x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder.layer.1.output.LayerNorm.bias"),
        "{err}"
    );
}

#[test]
fn out_of_vocabulary_ids_and_types_are_errors() {
    let m = tiny(0);
    let dev = m.device().clone();
    let batch = Batch::single(&[2, m.spec().vocab_size as u32], &dev).unwrap();
    let err = m.forward(&batch, &NoHooks).unwrap_err().to_string();
    assert!(err.contains("vocabulary") && err.contains("128"), "{err}");
    let batch = Batch::single(&[2, 5], &dev)
        .unwrap()
        .with_token_type_ids(Tensor::new(&[[0u32, 2]], &dev).unwrap())
        .unwrap();
    let err = m.forward(&batch, &NoHooks).unwrap_err().to_string();
    assert!(err.contains("type_vocab_size"), "{err}");
    let long: Vec<u32> = (0..65).map(|i| i % 100).collect();
    let err = m
        .forward(&Batch::single(&long, &dev).unwrap(), &NoHooks)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
}

#[test]
fn unsupported_configs_are_refused_by_name() {
    let w = tiny_weights(0);
    let mut cfg = tiny_config();
    cfg.is_decoder = true;
    let err = Bert::from_weights(&cfg, &w, "x").unwrap_err().to_string();
    assert!(err.contains("is_decoder"), "{err}");
    let mut cfg = tiny_config();
    cfg.position_embedding_type = "relative_key".into();
    let err = Bert::from_weights(&cfg, &w, "x").unwrap_err().to_string();
    assert!(err.contains("relative_key"), "{err}");
    let mut cfg = tiny_config();
    cfg.hidden_act = "mish".into();
    let err = Bert::from_weights(&cfg, &w, "x").unwrap_err().to_string();
    assert!(err.contains("mish"), "{err}");
}

#[test]
fn virtual_tokens_get_token_type_zero_and_the_first_positions() {
    /// Prepends one fixed virtual token.
    struct OneVirtual(Tensor);
    impl Hooks for OneVirtual {
        fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> peft_core::Result<Tensor> {
            ctx.prepend_virtual_tokens(1)?;
            let (b, _, h) = x.dims3()?;
            let v = self.0.reshape((1, 1, h))?.broadcast_as((b, 1, h))?;
            Ok(Tensor::cat(&[&v, &x], 1)?)
        }
    }
    let m = tiny(7);
    let dev = m.device().clone();
    // Virtual token = the word embedding of id 2: the output equals the plain sequence [2, ...] with the
    // same types (the virtual token's type is 0, as id 2's is).
    let hooks = OneVirtual(
        m.embed_tokens(&Tensor::new(&[2u32], &dev).unwrap())
            .unwrap(),
    );
    let batch = Batch::single(&[5, 6, 3], &dev)
        .unwrap()
        .with_token_type_ids(Tensor::new(&[[0u32, 1, 1]], &dev).unwrap())
        .unwrap();
    let out = m.forward(&batch, &hooks).unwrap();
    assert_eq!(out.virtual_tokens, 1);
    let plain = Batch::single(&[2, 5, 6, 3], &dev)
        .unwrap()
        .with_token_type_ids(Tensor::new(&[[0u32, 0, 1, 1]], &dev).unwrap())
        .unwrap();
    let reference = m.forward(&plain, &NoHooks).unwrap();
    assert!(max_diff(&out.hidden, &reference.hidden) < 1e-5);
    // The pooler reads position 0: the virtual token.
    let pooled = m.pooled(&out, &batch, &NoHooks).unwrap();
    assert!(max_diff(&pooled, &m.pooled(&reference, &plain, &NoHooks).unwrap()) < 1e-5);
}
