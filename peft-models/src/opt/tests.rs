//! Unit tests of the OPT model, kept beside it (as `t5/tests.rs`) so that `opt.rs` holds the model only.

use super::*;
use candle_core::Var;
use peft_core::hooks::{Ctx, KvPrefix, NoHooks};
use peft_core::spec::SiteKind;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

/// opt-350m's layout, scaled down: post-norm, token embeddings narrower than the layers.
fn post_ln_proj_config() -> OptConfig {
    OptConfig {
        do_layer_norm_before: false,
        word_embed_proj_dim: Some(16),
        ..tiny_config()
    }
}

fn build(cfg: &OptConfig, seed: u64) -> Opt {
    Opt::from_weights(cfg, &tiny_weights(cfg, seed), "variant").unwrap()
}

#[test]
fn spec_lists_every_site_with_hf_names() {
    let m = tiny(0);
    let spec = m.spec();
    assert_eq!(
        (
            spec.architecture.as_str(),
            spec.num_layers,
            spec.hidden_size,
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
            spec.max_positions
        ),
        ("opt", 2, 32, 4, 4, 8, 64)
    );
    // Six projections and two norms per layer, and the final norm.
    assert_eq!(spec.sites.len(), 8 * spec.num_layers + 1);
    let fc1 = spec.site(spec.find_site("model.decoder.layers.1.fc1").unwrap());
    assert_eq!(fc1.layer, Some(1));
    assert!(fc1.has_bias);
    assert_eq!(
        fc1.kind,
        SiteKind::Linear {
            in_features: 32,
            out_features: 64,
            fan_in_fan_out: false
        }
    );
    for name in [
        "model.decoder.layers.0.self_attn.q_proj",
        "model.decoder.layers.0.self_attn.k_proj",
        "model.decoder.layers.0.self_attn.v_proj",
        "model.decoder.layers.0.self_attn.out_proj",
        "model.decoder.layers.0.fc2",
        "model.decoder.layers.0.self_attn_layer_norm",
        "model.decoder.layers.0.final_layer_norm",
        "model.decoder.final_layer_norm",
    ] {
        let id = spec.find_site(name).unwrap_or_else(|| panic!("{name}"));
        let is_linear = name.contains("proj") || name.contains(".fc");
        assert_eq!(m.frozen_linear(id).is_some(), is_linear, "{name}");
    }
    assert!(spec.find_site("model.decoder.project_in").is_none());
    let total: usize = m.parameters().iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(spec.num_parameters, total);
    assert!(m
        .parameters()
        .iter()
        .any(|(n, t)| n == "model.decoder.embed_positions.weight" && t.dims() == [66, 32]));
    assert_eq!(spec.name_or_path, "tiny-opt");

    // Post-norm with projections: project_in / project_out, no final norm, the spec's width is the
    // embeddings'.
    let m = build(&post_ln_proj_config(), 1);
    let spec = m.spec();
    assert_eq!((spec.hidden_size, spec.head_dim), (16, 8));
    assert!(spec.find_site("model.decoder.final_layer_norm").is_none());
    let pin = spec.find_site("model.decoder.project_in").unwrap();
    let pout = spec.find_site("model.decoder.project_out").unwrap();
    assert_eq!(
        spec.site(pin).kind,
        SiteKind::Linear {
            in_features: 16,
            out_features: 32,
            fan_in_fan_out: false
        }
    );
    assert!(!spec.site(pout).has_bias && spec.site(pout).layer.is_none());
    assert_eq!(m.frozen_linear(pout).unwrap().dims(), (16, 32));
    let out = m
        .forward(&Batch::single(&[3, 4], m.device()).unwrap(), &NoHooks)
        .unwrap();
    assert_eq!(out.hidden.dims(), &[1, 2, 16]);
}

#[test]
fn positions_follow_the_mask_with_the_offset() {
    let mask = vec![vec![1f32, 1., 1., 0.], vec![1., 0., 0., 0.]];
    // No prefix: real tokens read rows 2, 3, ...; padding reads row 1.
    let positions = vec![vec![0, 1, 2, 2], vec![0, 0, 0, 0]];
    assert_eq!(
        offset_rows(&positions, &mask),
        vec![vec![2, 3, 4, 1], vec![2, 1, 1, 1]]
    );
    // A prefix of three positions shifts the real tokens by three.
    let positions = vec![vec![3, 4, 5, 5], vec![3, 3, 3, 3]];
    assert_eq!(
        offset_rows(&positions, &mask),
        vec![vec![5, 6, 7, 1], vec![5, 1, 1, 1]]
    );
}

#[test]
fn padding_does_not_change_real_positions() {
    for m in [tiny(1), build(&post_ln_proj_config(), 2)] {
        let dev = m.device().clone();
        let ids = Tensor::new(&[[7u32, 8, 9, 10, 11], [7, 8, 9, 0, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], &dev).unwrap();
        let padded = m
            .forward(&Batch::new(ids, mask).unwrap(), &NoHooks)
            .unwrap()
            .hidden;
        let short = m
            .forward(&Batch::single(&[7, 8, 9], &dev).unwrap(), &NoHooks)
            .unwrap()
            .hidden;
        let row = padded.narrow(0, 1, 1).unwrap().narrow(1, 0, 3).unwrap();
        assert!(max_diff(&row, &short) < 1e-5);
        // Positions matter: the same tokens one place later give other states.
        let shifted = m
            .forward(&Batch::single(&[7, 7, 8, 9], &dev).unwrap(), &NoHooks)
            .unwrap()
            .hidden
            .narrow(1, 1, 3)
            .unwrap();
        assert!(max_diff(&shifted, &short) > 1e-3);
    }
}

#[test]
fn checkpoint_without_model_prefix_loads_the_same() {
    let m = tiny(3);
    let bare = tiny_weights(&tiny_config(), 3).rename(|k| k.trim_start_matches("model.").into());
    assert!(bare.contains("decoder.embed_tokens.weight"));
    let m2 = Opt::from_weights(m.config(), &bare, "bare").unwrap();
    let batch = Batch::single(&[4, 5, 6], m.device()).unwrap();
    let a = m.forward(&batch, &NoHooks).unwrap().hidden;
    let b = m2.forward(&batch, &NoHooks).unwrap().hidden;
    assert_eq!(max_diff(&a, &b), 0.0);
    assert!(m2
        .parameters()
        .iter()
        .all(|(n, _)| n.starts_with("model.decoder.")));
}

#[test]
fn missing_tensor_and_bad_config_are_named() {
    let cfg = OptConfig {
        tie_word_embeddings: false,
        ..tiny_config()
    };
    let w = tiny_weights(&cfg, 0);
    for missing in ["model.decoder.layers.1.fc2.bias", "lm_head.weight"] {
        let tensors = w
            .names()
            .filter(|n| *n != missing)
            .map(|n| (n.clone(), w.get_any(n).unwrap()))
            .collect();
        let err = Opt::from_weights(&cfg, &WeightMap::new(tensors, "test"), "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains(missing), "{err}");
    }
    let bad = OptConfig {
        num_attention_heads: 5,
        ..tiny_config()
    };
    let err = Opt::from_weights(&bad, &w, "x").unwrap_err().to_string();
    assert!(err.contains("num_attention_heads 5"), "{err}");
    let bad = OptConfig {
        activation_function: "nope".into(),
        ..tiny_config()
    };
    let err = Opt::from_weights(&bad, &w, "x").unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("relu"), "{err}");
}

#[test]
fn untied_head_and_plain_norms() {
    let cfg = OptConfig {
        tie_word_embeddings: false,
        enable_bias: false,
        layer_norm_elementwise_affine: false,
        remove_final_layer_norm: true,
        ..tiny_config()
    };
    let m = build(&cfg, 4);
    let head = m.lm_head().unwrap().weight().unwrap();
    assert!(max_diff(&head, &m.embed_tokens) > 0.1);
    let spec = m.spec();
    assert!(spec.find_site("model.decoder.final_layer_norm").is_none());
    let ln = spec
        .find_site("model.decoder.layers.0.final_layer_norm")
        .unwrap();
    assert!(!spec.site(ln).has_bias);
    assert!(spec.sites.iter().all(|s| !s.has_bias));
    assert!(m.parameters().iter().all(|(n, _)| !n.contains("norm")));
}

#[test]
fn out_of_vocabulary_ids_are_an_error() {
    let m = tiny(0);
    let batch = Batch::single(&[m.spec().vocab_size as u32], m.device()).unwrap();
    assert!(m
        .forward(&batch, &NoHooks)
        .unwrap_err()
        .to_string()
        .contains("vocabulary"));
}

#[test]
fn tiny_is_deterministic() {
    let (a, b, c) = (tiny(5), tiny(5), tiny(6));
    for ((na, ta), (nb, tb)) in a.parameters().iter().zip(b.parameters().iter()) {
        assert_eq!(na, nb);
        assert_eq!(max_diff(ta, tb), 0.0, "{na}");
    }
    assert!(max_diff(&a.parameters()[0].1, &c.parameters()[0].1) > 0.1);
}

/// A trainable prompt (embeddings hook) and a trainable key/value prefix in every layer.
struct Trainable {
    prompt: Var,
    key: Var,
    value: Var,
}

impl Hooks for Trainable {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> peft_core::Result<Tensor> {
        let (b, _, h) = x.dims3()?;
        let p = self.prompt.dim(1)?;
        ctx.prepend_virtual_tokens(p)?;
        let prompt = self.prompt.as_tensor().broadcast_as((b, p, h))?;
        Ok(Tensor::cat(&[&prompt, &x], 1)?)
    }

    fn attention_prefix(&self, _layer: usize, _ctx: &Ctx) -> peft_core::Result<Option<KvPrefix>> {
        Ok(Some(KvPrefix {
            key: self.key.as_tensor().clone(),
            value: self.value.as_tensor().clone(),
        }))
    }
}

#[test]
fn gradient_reaches_the_prompt_and_the_prefix_only() {
    for m in [tiny(7), build(&post_ln_proj_config(), 8)] {
        let dev = m.device().clone();
        let (s, d) = (m.spec(), m.spec().head_dim);
        let var = |shape: &[usize], seed: u64| {
            let t = tiny_weights(&tiny_config(), seed).get_any("model.decoder.embed_tokens.weight");
            let flat = t.unwrap().flatten_all().unwrap();
            let n: usize = shape.iter().product();
            Var::from_tensor(&flat.narrow(0, 0, n).unwrap().reshape(shape).unwrap()).unwrap()
        };
        let hooks = Trainable {
            prompt: var(&[1, 2, s.hidden_size], 11),
            key: var(&[1, s.num_kv_heads, 3, d], 12),
            value: var(&[1, s.num_kv_heads, 3, d], 13),
        };
        let ids = Tensor::new(&[[5u32, 9, 14], [21, 8, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1.], [1., 1., 0.]], &dev).unwrap();
        let out = m.forward(&Batch::new(ids, mask).unwrap(), &hooks).unwrap();
        assert_eq!(out.virtual_tokens, 2);
        let logp = peft_kernels::log_softmax_last_dim(&m.logits(&out.hidden).unwrap()).unwrap();
        let loss = logp.narrow(1, 2, 3).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for v in [&hooks.prompt, &hooks.key, &hooks.value] {
            let g = grads
                .get(v.as_tensor())
                .expect("a gradient for the hook's tensor");
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 1e-8, "gradient norm {norm}");
        }
        for (name, t) in m.parameters() {
            assert!(grads.get(&t).is_none(), "frozen {name} got a gradient");
        }
    }
}
