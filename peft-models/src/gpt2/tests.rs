//! Unit tests of the GPT-2 model, kept beside it (as `bert/tests.rs`) so that `gpt2.rs` holds the model only.

use super::*;
use peft_core::hooks::NoHooks;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

#[test]
fn spec_lists_every_site_with_hf_names() {
    let m = crate::tiny::gpt2(0);
    let spec = m.spec();
    assert_eq!(spec.sites.len(), 6 * spec.num_layers + 1);
    let c_attn = spec.site(spec.find_site("transformer.h.0.attn.c_attn").unwrap());
    assert_eq!(
        c_attn.kind,
        peft_core::spec::SiteKind::Linear {
            in_features: spec.hidden_size,
            out_features: 3 * spec.hidden_size,
            fan_in_fan_out: true
        }
    );
    assert!(spec.find_site("transformer.ln_f").is_some());
    let total: usize = m.parameters().iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(spec.num_parameters, total);
    assert!(m
        .parameters()
        .iter()
        .any(|(n, _)| n == "transformer.wpe.weight"));
    assert_eq!(spec.name_or_path, "tiny-gpt2");
}

#[test]
fn checkpoint_without_transformer_prefix_loads_the_same() {
    let m = crate::tiny::gpt2(3);
    let prefixed = crate::tiny::gpt2_weights(3);
    let bare = prefixed
        .clone()
        .rename(|k| k.trim_start_matches("transformer.").to_string());
    assert!(bare.contains("wte.weight"));
    let m2 = Gpt2::from_weights(m.config(), &bare, "bare").unwrap();
    let batch = Batch::single(&[4, 5, 6], m.device()).unwrap();
    let a = m.forward(&batch, &NoHooks).unwrap().hidden;
    let b = m2.forward(&batch, &NoHooks).unwrap().hidden;
    assert_eq!(max_diff(&a, &b), 0.0);
    assert!(m2
        .parameters()
        .iter()
        .all(|(n, _)| n.starts_with("transformer.")));
}

#[test]
fn missing_tensor_is_named() {
    let m = crate::tiny::gpt2(0);
    let w = crate::tiny::gpt2_weights(0);
    let names: Vec<String> = w
        .names()
        .filter(|n| *n != "transformer.h.1.ln_2.bias")
        .cloned()
        .collect();
    let tensors = names
        .iter()
        .map(|n| (n.clone(), w.get_any(n).unwrap()))
        .collect();
    let err = Gpt2::from_weights(m.config(), &WeightMap::new(tensors, "test"), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("transformer.h.1.ln_2.bias"), "{err}");
}

#[test]
fn padding_does_not_change_real_positions() {
    let m = crate::tiny::gpt2(1);
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
}

#[test]
fn scale_follows_the_config_flags() {
    let m = crate::tiny::gpt2(0);
    let d = m.spec().head_dim as f64;
    assert!((m.blocks[1].scale - d.powf(-0.5)).abs() < 1e-12);
    let mut cfg = m.config().clone();
    cfg.scale_attn_by_inverse_layer_idx = true;
    let m2 = Gpt2::from_weights(&cfg, &crate::tiny::gpt2_weights(0), "x").unwrap();
    assert!((m2.blocks[1].scale - d.powf(-0.5) / 2.0).abs() < 1e-12);
    cfg.scale_attn_weights = false;
    cfg.activation_function = "nope".into();
    let err = Gpt2::from_weights(&cfg, &crate::tiny::gpt2_weights(0), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("gelu_new"), "{err}");
}

#[test]
fn out_of_vocabulary_ids_are_an_error() {
    let m = crate::tiny::gpt2(0);
    let batch = Batch::single(&[m.spec().vocab_size as u32], m.device()).unwrap();
    assert!(m
        .forward(&batch, &NoHooks)
        .unwrap_err()
        .to_string()
        .contains("vocabulary"));
}
