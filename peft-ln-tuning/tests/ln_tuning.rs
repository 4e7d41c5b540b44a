//! LayerNorm tuning's own behaviour beyond the shared contract, on every architecture of the zoo: a fresh
//! adapter is a no-op, only norm tensors train and they count as the norms' parameters do, each architecture's
//! default picks the norms it should (HF PEFT's table, or every norm by role for BERT and OPT), save -> load
//! keeps the outputs, a file that does not fit its config is refused naming what to change, and merging is
//! refused saying why.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use peft_core::adapter_io::{load_adapter, save_adapter};
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::{BaseModel, Batch};
use peft_core::spec::SiteKind;
use peft_ln_tuning::{ln_tuning_key, LnTuningConfig, TargetModules};
use peft_testing::init;

/// Every architecture of the zoo, seeded tiny.
fn zoo() -> Vec<(&'static str, Box<dyn BaseModel>)> {
    vec![
        ("gpt2", Box::new(peft_models::tiny::gpt2(1))),
        ("llama", Box::new(peft_models::tiny::llama(1))),
        ("opt", Box::new(peft_models::opt::tiny(1))),
        ("bert", Box::new(peft_models::bert::tiny(1))),
        ("t5", Box::new(peft_models::t5::tiny(1))),
    ]
}

/// The final hidden states of a fixed batch (decoder ids for T5; the others ignore them).
fn hidden(model: &dyn BaseModel, hooks: &dyn Hooks) -> Vec<f32> {
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[5u32, 17, 42, 8, 3, 1], [9, 4, 33, 2, 0, 0]], &dev).unwrap();
    let mask = Tensor::new(
        &[[1f32, 1., 1., 1., 1., 1.], [1., 1., 1., 1., 0., 0.]],
        &dev,
    )
    .unwrap();
    let decoder = Tensor::new(&[[0u32, 7, 12], [0, 3, 9]], &dev).unwrap();
    let batch = Batch::new(ids, mask)
        .unwrap()
        .with_decoder_input_ids(decoder)
        .unwrap();
    let out = model.forward(&batch, hooks).unwrap().hidden;
    out.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    peft_testing::max_diff(a, b)
}

/// Moves every tuned tensor away from its start.
fn perturb(adapter: &dyn Adapter) {
    for (i, (_, var)) in adapter.trainable().into_iter().enumerate() {
        let t = var.as_tensor();
        let shift: Vec<f32> = (0..t.elem_count())
            .map(|j| ((i * 31 + j * 7) % 13) as f32 / 13.0 - 0.4)
            .collect();
        let shift = Tensor::from_vec(shift, t.shape(), t.device()).unwrap();
        var.set(&(t + shift).unwrap()).unwrap();
    }
}

#[test]
fn a_fresh_adapter_is_a_no_op_and_a_moved_one_is_not() {
    for (arch, model) in zoo() {
        let frozen = hidden(model.as_ref(), &NoHooks);
        let adapter = LnTuningConfig::default()
            .build(&mut init(model.as_ref(), 0))
            .unwrap();
        let fresh = hidden(model.as_ref(), adapter.as_ref());
        assert_eq!(max_diff(&fresh, &frozen), 0.0, "{arch}");
        perturb(adapter.as_ref());
        let moved = hidden(model.as_ref(), adapter.as_ref());
        assert!(max_diff(&moved, &frozen) > 1e-2, "{arch}");
    }
}

#[test]
fn each_architecture_defaults_to_its_norms_and_counts_their_parameters() {
    // (architecture, saved target_modules, number of norms, whether a bias trains, whether chosen by role)
    let expected: [(&str, &[&str], usize, bool, bool); 5] = [
        ("gpt2", &["ln_1", "ln_2", "ln_f"], 5, true, false),
        (
            "llama",
            &["input_layernorm", "post_attention_layernorm", "norm"],
            5,
            false,
            false,
        ),
        (
            "opt",
            &["self_attn_layer_norm", "final_layer_norm"],
            5,
            true,
            true,
        ),
        ("bert", &["LayerNorm"], 5, true, true),
        ("t5", &["layer_norm", "final_layer_norm"], 0, false, false),
    ];
    for ((arch, model), (arch2, targets, norms, bias, by_role)) in zoo().into_iter().zip(expected) {
        assert_eq!(arch, arch2);
        let spec = model.spec();
        let ln = LnTuningConfig::default()
            .build_ln_tuning(&mut init(model.as_ref(), 0))
            .unwrap();
        let saved = ln.ln_tuning_config().target_modules.clone();
        assert_eq!(
            saved,
            Some(TargetModules::list(targets.iter().copied())),
            "{arch}"
        );
        // Every norm site of these models is a default target (T5's count depends on its layers: all of them).
        let all_norms = spec
            .sites
            .iter()
            .filter(|s| matches!(s.kind, SiteKind::Norm { .. }))
            .count();
        assert_eq!(ln.norms().len(), all_norms, "{arch}");
        if norms > 0 {
            assert_eq!(ln.norms().len(), norms, "{arch}");
        }
        assert_eq!(
            ln.norms().iter().all(|n| n.bias().is_some()),
            bias,
            "{arch}"
        );
        let notes = ln.notes().join("\n");
        assert_eq!(
            notes.contains("HF PEFT has no LN tuning default"),
            by_role,
            "{arch}: {notes}"
        );
        assert_eq!(
            !bias,
            notes.contains("only their weight trains"),
            "{arch}: {notes}"
        );
        // The count is the norms' own parameter count, read from the frozen model.
        let parameters: HashMap<String, Tensor> = model.parameters().into_iter().collect();
        let count: usize = ln
            .norms()
            .iter()
            .flat_map(|n| ["weight", "bias"].map(|p| format!("{}.{p}", n.name())))
            .filter_map(|name| parameters.get(&name).map(Tensor::elem_count))
            .sum();
        assert_eq!(ln.num_trainable(), count, "{arch}");
        // Only norm tensors train, each under HF PEFT's key of a norm site.
        for (key, var) in ln.trainable() {
            let (module, param) = key
                .strip_prefix("base_model.model.")
                .and_then(|k| k.rsplit_once(".ln_tuning_layers."))
                .unwrap_or_else(|| panic!("{arch}: {key}"));
            let site = spec
                .find_site(module)
                .unwrap_or_else(|| panic!("{arch}: {key}"));
            assert!(
                matches!(spec.site(site).kind, SiteKind::Norm { .. }),
                "{arch}: {key}"
            );
            let frozen = &parameters[&format!("{module}.{param}")];
            assert_eq!(var.dims(), frozen.dims(), "{arch}: {key}");
        }
    }
}

#[test]
fn a_saved_adapter_loads_with_the_same_outputs() {
    peft_ln_tuning::register();
    for (arch, model) in zoo() {
        let config = LnTuningConfig {
            exclude_modules: Some(TargetModules::Pattern(r".*\.0\..*".into())),
            ..LnTuningConfig::default()
        };
        let adapter = config.build(&mut init(model.as_ref(), 0)).unwrap();
        perturb(adapter.as_ref());
        let dir = tempfile::tempdir().unwrap();
        save_adapter(dir.path(), adapter.as_ref(), model.spec()).unwrap();
        let loaded = load_adapter(dir.path(), &mut init(model.as_ref(), 5))
            .unwrap()
            .adapter;
        assert_eq!(loaded.num_trainable(), adapter.num_trainable(), "{arch}");
        let diff = max_diff(
            &hidden(model.as_ref(), loaded.as_ref()),
            &hidden(model.as_ref(), adapter.as_ref()),
        );
        assert_eq!(diff, 0.0, "{arch}");
        // Layer 0's norms were excluded.
        assert!(
            loaded.trainable().iter().all(|(k, _)| !k.contains(".0.")),
            "{arch}"
        );
    }
}

#[test]
fn files_that_do_not_fit_the_config_are_refused_naming_the_fix() {
    let model = peft_models::tiny::gpt2(0);
    let ln = LnTuningConfig::new(["ln_f"])
        .build(&mut init(&model, 0))
        .unwrap();
    let tensors: HashMap<String, Tensor> = ln.tensors().unwrap().into_iter().collect();
    let (w, b) = (
        ln_tuning_key("transformer.ln_f", "weight"),
        ln_tuning_key("transformer.ln_f", "bias"),
    );
    let before = ln.tensors().unwrap();

    let mut missing = tensors.clone();
    missing.remove(&b);
    let err = ln.load_tensors(&missing).unwrap_err().to_string();
    assert!(err.contains(&b) && err.contains("target_modules"), "{err}");

    let mut extra = tensors.clone();
    extra.insert(
        ln_tuning_key("transformer.h.0.ln_1", "weight"),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = ln.load_tensors(&extra).unwrap_err().to_string();
    assert!(
        err.contains("transformer.h.0.ln_1") && err.contains("target_modules"),
        "{err}"
    );

    let mut wrong = tensors.clone();
    wrong.insert(
        w.clone(),
        Tensor::zeros(16, DType::F32, &Device::Cpu).unwrap(),
    );
    wrong.insert(
        b.clone(),
        Tensor::ones(32, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = ln.load_tensors(&wrong).unwrap_err().to_string();
    assert!(
        err.contains(&w) && err.contains("[16]") && err.contains("[32]"),
        "{err}"
    );
    // Nothing changed: the bias of the refused file was not loaded either.
    for ((k, was), (_, now)) in before.iter().zip(ln.tensors().unwrap()) {
        assert_eq!(
            peft_core::compare::max_abs_diff(was, &now).unwrap(),
            0.0,
            "{k}"
        );
    }
}

#[test]
fn bad_configs_are_refused_naming_what_to_change() {
    let model = peft_models::tiny::llama(0);
    let cases = [
        (LnTuningConfig::new(["ln_f"]), "input_layernorm"),
        (LnTuningConfig::new(["q_proj"]), "linear module"),
        (
            LnTuningConfig {
                target_modules: Some(TargetModules::Pattern("all-linear".into())),
                ..LnTuningConfig::default()
            },
            "all-linear",
        ),
        (
            LnTuningConfig {
                exclude_modules: Some(TargetModules::Pattern(".*".into())),
                ..LnTuningConfig::default()
            },
            "exclude_modules",
        ),
        (
            LnTuningConfig {
                modules_to_save: Some(vec!["lm_head".into()]),
                ..LnTuningConfig::default()
            },
            "modules_to_save",
        ),
    ];
    for (config, expected) in cases {
        let Err(err) = config.build(&mut init(&model, 0)) else {
            panic!("{expected}: built");
        };
        let err = err.to_string();
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

#[test]
fn merging_is_refused_saying_why() {
    let mut model = peft_models::tiny::gpt2(0);
    let ln = LnTuningConfig::default()
        .build(&mut init(&model, 0))
        .unwrap();
    let err = ln.merge_into(&mut model).unwrap_err().to_string();
    assert!(err.contains("not merged") && err.contains("norm"), "{err}");
    assert!(ln.unmerge_from(&mut model).is_err());
}

#[test]
fn the_size_knob_keeps_the_top_layers_norms_and_the_final_norm() {
    let model = peft_models::tiny::gpt2(0);
    let config = LnTuningConfig::default();
    assert_eq!(config.size_knob(), Some("target_modules"));
    let sized = config.with_size(1, model.spec()).unwrap();
    let ln = sized.build(&mut init(&model, 0)).unwrap();
    let mut keys: Vec<String> = ln.trainable().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    let expected: Vec<String> = [
        "transformer.h.1.ln_1",
        "transformer.h.1.ln_2",
        "transformer.ln_f",
    ]
    .iter()
    .flat_map(|m| [ln_tuning_key(m, "bias"), ln_tuning_key(m, "weight")])
    .collect();
    assert_eq!(keys, expected);
}
