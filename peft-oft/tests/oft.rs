//! OFT's own rules on the seeded tiny models: a fresh adapter is the identity, its blocks are orthogonal, merging
//! keeps the logits and unmerging restores the weights, the series is the exact transform's transpose for a
//! small `Q`, gradients agree with finite differences, COFT and the block dropout act as documented, save ->
//! load keeps the logits, and the configs and files HF PEFT (or this crate) refuses are refused, each error
//! naming what to change.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use peft_core::adapter_io::{load_adapter, save_adapter, CONFIG_FILE, WEIGHTS_FILE};
use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_oft::{rotation_key, skew_len, BiasMode, Oft, OftConfig, TargetModules, HF_PEFT_FORMAT};
use peft_testing::{init, logits, max_diff, seeded_tiny_models, toy_lm_task};
use peft_train::task::{Task, Tuned};

const IDS: [u32; 6] = [5, 17, 42, 8, 99, 0];

fn build(model: &dyn BaseModel, config: &OftConfig, seed: u64) -> Oft {
    config.build_oft(&mut init(model, seed)).unwrap()
}

/// `config` with `oft_R` drawn from N(0, 0.1^2) (HF PEFT's `init_weights = False`), so that it rotates.
fn drawn(config: OftConfig) -> OftConfig {
    OftConfig {
        init_weights: false,
        ..config
    }
}

/// The configs the tests below run on each tiny model: series and exact, per-block and shared, by block size
/// and by r, on every linear module.
fn variants() -> Vec<OftConfig> {
    let all = || Some(TargetModules::Pattern("all-linear".into()));
    vec![
        OftConfig {
            target_modules: all(),
            oft_block_size: 8,
            ..OftConfig::default()
        },
        OftConfig {
            target_modules: all(),
            use_cayley_neumann: false,
            oft_block_size: 4,
            ..OftConfig::default()
        },
        OftConfig {
            block_share: true,
            oft_block_size: 16,
            ..OftConfig::default()
        },
        OftConfig {
            r: 2,
            oft_block_size: 0,
            use_cayley_neumann: false,
            target_modules: all(),
            ..OftConfig::default()
        },
    ]
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn eye_like(r: &Tensor) -> Tensor {
    let (n, b, _) = r.dims3().unwrap();
    Tensor::eye(b, DType::F32, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .broadcast_as((n, b, b))
        .unwrap()
        .contiguous()
        .unwrap()
}

#[test]
fn a_fresh_adapter_is_the_identity_rotation() {
    for model in seeded_tiny_models(1) {
        let frozen = logits(model.as_ref(), &NoHooks, &IDS);
        for config in variants() {
            let oft = build(model.as_ref(), &config, 0);
            assert!(oft
                .tensors()
                .unwrap()
                .iter()
                .all(|(_, t)| max_abs(t) == 0.0));
            for l in oft.layers() {
                let r = l.rotations().unwrap();
                assert_eq!(max_abs(&(&r - eye_like(&r)).unwrap()), 0.0, "{}", l.name());
            }
            let ours = logits(model.as_ref(), &oft, &IDS);
            assert!(max_diff(&ours, &frozen) < 1e-6, "{config:?}");
        }
    }
}

#[test]
fn exact_blocks_are_orthogonal_and_the_series_nearly_so() {
    let model = peft_models::tiny::llama(2);
    for neumann in [false, true] {
        let config = drawn(OftConfig {
            use_cayley_neumann: neumann,
            ..OftConfig::with_block_size(8, ["q_proj", "down_proj"])
        });
        let oft = build(&model, &config, 3);
        if neumann {
            // N(0, 0.1^2) entries in blocks of 8 make |Q| about 0.5; the series' error is of the order of
            // |Q|^5, so it is checked on a quarter of that.
            for (_, var) in oft.trainable() {
                var.set(&(var.as_tensor() * 0.25).unwrap()).unwrap();
            }
        }
        for l in oft.layers() {
            let r = l.rotations().unwrap();
            let rrt = r.matmul(&r.transpose(1, 2).unwrap()).unwrap();
            let off = max_abs(&(rrt - eye_like(&r)).unwrap());
            let bound = if neumann { 1e-3 } else { 1e-5 };
            assert!(
                off < bound,
                "{} neumann={neumann}: |R R^T - I| = {off}",
                l.name()
            );
            assert!(
                !neumann || off > 1e-7,
                "the series is not exactly orthogonal"
            );
        }
        // The rotation moves the output.
        let moved = max_diff(&logits(&model, &oft, &IDS), &logits(&model, &NoHooks, &IDS));
        assert!(moved > 1e-2, "{moved}");
    }
}

#[test]
fn the_series_is_the_exact_transform_transposed_for_a_small_q() {
    let model = peft_models::tiny::gpt2(0);
    let series = build(&model, &OftConfig::with_block_size(8, ["c_fc"]), 0);
    let exact = build(
        &model,
        &OftConfig {
            use_cayley_neumann: false,
            ..OftConfig::with_block_size(8, ["c_fc"])
        },
        0,
    );
    let dev = Device::Cpu;
    let mut file = HashMap::new();
    for l in series.layers() {
        let n = l.weight().elem_count() as f32;
        let small = (Tensor::arange(0f32, n, &dev).unwrap() * 1.3)
            .unwrap()
            .cos()
            .unwrap()
            .affine(0.01, 0.0)
            .unwrap()
            .reshape(l.weight().dims())
            .unwrap();
        file.insert(rotation_key(l.name()), small);
    }
    series.load_tensors(&file).unwrap();
    exact.load_tensors(&file).unwrap();
    for (s, e) in series.layers().iter().zip(exact.layers()) {
        let (rs, re) = (s.rotations().unwrap(), e.rotations().unwrap());
        let transposed = max_abs(&(&rs - re.transpose(1, 2).unwrap()).unwrap());
        let same = max_abs(&(&rs - &re).unwrap());
        assert!(transposed < 1e-6, "{transposed}");
        assert!(same > 1e-2, "HF's series rotates the other way: {same}");
    }
}

#[test]
fn merging_keeps_the_logits_and_unmerging_restores_the_weights() {
    for model in seeded_tiny_models(2) {
        let mut model = model;
        for config in variants() {
            let config = drawn(OftConfig {
                bias: BiasMode::OftOnly,
                ..config
            });
            let oft = build(model.as_ref(), &config, 4);
            let sites: Vec<_> = oft.layers().iter().map(|l| l.site()).collect();
            let before: Vec<Tensor> = sites
                .iter()
                .map(|&s| model.frozen_linear(s).unwrap().weight().unwrap())
                .collect();
            let unmerged = logits(model.as_ref(), &oft, &IDS);
            oft.merge_into(model.as_mut()).unwrap();
            assert!(oft.is_merged());
            let merged = logits(model.as_ref(), &oft, &IDS);
            let diff = max_diff(&merged, &unmerged);
            assert!(diff < 1e-4, "{config:?}: merged logits differ by {diff}");
            let err = oft.merge_into(model.as_mut()).unwrap_err().to_string();
            assert!(err.contains("already merged"), "{err}");
            oft.unmerge_from(model.as_mut()).unwrap();
            for (s, w) in sites.iter().zip(&before) {
                let now = model.frozen_linear(*s).unwrap().weight().unwrap();
                let d = max_abs(&(now - w).unwrap());
                assert!(d < 1e-5, "{config:?}: unmerged weight differs by {d}");
            }
            assert!(oft.unmerge_from(model.as_mut()).is_err());
        }
    }
}

/// The loss of `adapter` on three toy sequences.
fn loss(model: &dyn BaseModel, adapter: &dyn Adapter) -> Tensor {
    toy_lm_task()
        .loss(model, &Tuned::of(adapter), &[0, 1, 2])
        .unwrap()
        .loss
}

#[test]
fn gradients_agree_with_finite_differences() {
    for model in seeded_tiny_models(3) {
        for neumann in [true, false] {
            let config = drawn(OftConfig {
                use_cayley_neumann: neumann,
                target_modules: Some(TargetModules::Pattern("all-linear".into())),
                oft_block_size: 8,
                ..OftConfig::default()
            });
            let oft = build(model.as_ref(), &config, 5);
            let grads = loss(model.as_ref(), &oft).backward().unwrap();
            for (name, p) in model.parameters() {
                assert!(grads.get(&p).is_none(), "frozen {name} received a gradient");
            }
            // One module of the first layer and one of the last.
            let vars: Vec<(String, Var)> = oft.trainable();
            for (key, var) in [&vars[0], &vars[vars.len() - 1]] {
                let g: Vec<f32> = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{key} has no gradient"))
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                let h = 1e-2f32;
                let i = g
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                    .unwrap()
                    .0;
                let at = |delta: f32| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    peft_core::grad::no_grad(|| {
                        loss(model.as_ref(), &oft).to_scalar::<f32>().unwrap() as f64
                    })
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let analytic = g[i] as f64;
                assert!(analytic.abs() > 1e-4, "{key}: no gradient to check");
                assert!(
                    (numeric - analytic).abs() <= 1e-3 + 2e-2 * analytic.abs(),
                    "{} {key} neumann={neumann}: numeric {numeric} vs analytic {analytic}",
                    model.spec().architecture
                );
            }
        }
    }
}

#[test]
fn coft_keeps_each_block_within_its_radius() {
    let model = peft_models::tiny::llama(0);
    let config = drawn(OftConfig {
        coft: true,
        eps: 0.2,
        ..OftConfig::with_block_size(8, ["q_proj"])
    });
    let oft = build(&model, &config, 1);
    let before = oft.layers()[0].weight().copy().unwrap();
    let _ = logits(&model, &oft, &IDS);
    for l in oft.layers() {
        // Each block's skew matrix has Frobenius norm sqrt(2) |row|; 4 blocks: radius 0.2 / 2.
        let rows = l.weight().to_vec2::<f32>().unwrap();
        for row in rows {
            let norm = (2.0 * row.iter().map(|v| v * v).sum::<f32>()).sqrt();
            assert!(norm <= 0.1 + 1e-6, "{}: {norm}", l.name());
        }
    }
    assert!(
        max_abs(&(oft.layers()[0].weight() - before).unwrap()) > 1e-3,
        "nothing was projected"
    );
}

#[test]
fn block_dropout_acts_while_training_only() {
    let model = peft_models::tiny::llama(0);
    let config = drawn(OftConfig {
        module_dropout: 0.5,
        ..OftConfig::with_block_size(8, ["q_proj", "v_proj"])
    });
    let oft = build(&model, &config, 1);
    let plain = build(
        &model,
        &OftConfig {
            module_dropout: 0.0,
            ..config.clone()
        },
        1,
    );
    assert!(
        oft.notes().iter().any(|n| n.contains("never applies")),
        "{:?}",
        oft.notes()
    );
    // Evaluation: the same as without dropout.
    assert!(max_diff(&logits(&model, &oft, &IDS), &logits(&model, &plain, &IDS)) < 1e-6);
    // Training: half the blocks are the identity, so the loss differs.
    let with = loss(&model, &oft).to_scalar::<f32>().unwrap();
    let without = loss(&model, &plain).to_scalar::<f32>().unwrap();
    assert!((with - without).abs() > 1e-5, "{with} vs {without}");
}

#[test]
fn trainable_counts_are_hf_peft_s() {
    let model = peft_models::tiny::llama(0); // hidden 32, intermediate 64
    let count = |config: OftConfig| build(&model, &config, 0).num_trainable();
    // q_proj, v_proj read 32 features: 4 blocks of 8, 28 each; two layers.
    assert_eq!(
        count(OftConfig::with_block_size(8, ["q_proj", "v_proj"])),
        2 * 2 * 4 * skew_len(8)
    );
    // Shared: one row per module.
    let shared = OftConfig {
        block_share: true,
        ..OftConfig::with_block_size(8, ["q_proj", "v_proj"])
    };
    assert_eq!(count(shared), 2 * 2 * skew_len(8));
    // r = 4 on down_proj (64 inputs): blocks of 16.
    let by_r = OftConfig {
        r: 4,
        oft_block_size: 0,
        ..OftConfig::new(["down_proj"])
    };
    assert_eq!(count(by_r), 2 * 4 * skew_len(16));
    // oft_only adds each adapted module's bias (GPT-2's c_attn has one of 96).
    let gpt2 = peft_models::tiny::gpt2(0);
    let with_bias = OftConfig {
        bias: BiasMode::OftOnly,
        ..OftConfig::with_block_size(8, ["c_attn"])
    };
    let oft = build(&gpt2, &with_bias, 0);
    assert_eq!(oft.num_trainable(), 2 * (4 * skew_len(8) + 96));
    assert!(oft
        .trainable()
        .iter()
        .any(|(k, _)| k == "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias"));
}

#[test]
fn sizes_that_do_not_divide_are_adjusted_as_hf_peft_adjusts_them_with_a_note() {
    let model = peft_models::tiny::llama(0);
    let oft = build(
        &model,
        &OftConfig::with_block_size(12, ["q_proj", "down_proj"]),
        0,
    );
    let blocks: Vec<(usize, usize)> = oft.layers().iter().map(|l| l.blocks()).collect();
    // 32 -> 8 (8 and 16 are 4 away: the lower one), 64 -> 16 (16 is 4 away, 8 is 4 away too: 8).
    assert_eq!(blocks, [(4, 8), (8, 8), (4, 8), (8, 8)]);
    let notes = oft.notes();
    assert!(
        notes.iter().any(|n| n.contains("q_proj")
            && n.contains("oft_block_size = 12 does not divide in_features = 32")
            && n.contains("8 is used")),
        "{notes:?}"
    );
    // The saved config keeps the value as given, as HF PEFT's does.
    assert_eq!(oft.oft_config().oft_block_size, 12);
    // A size that divides gets no note.
    assert!(build(&model, &OftConfig::with_block_size(8, ["q_proj"]), 0)
        .notes()
        .is_empty());
}

#[test]
fn configs_hf_peft_refuses_are_refused_with_its_reasons() {
    let cases: Vec<(OftConfig, &[&str])> = vec![
        (
            OftConfig {
                r: 4,
                ..OftConfig::default()
            },
            &[
                "r (4) or oft_block_size (32)",
                "not both",
                "\"oft_block_size\": 0",
            ],
        ),
        (
            OftConfig {
                oft_block_size: 0,
                ..OftConfig::default()
            },
            &["Either `r` or `oft_block_size` must be non-zero"],
        ),
        (
            OftConfig {
                layers_pattern: Some(serde_json::from_str("\"layers\"").unwrap()),
                ..OftConfig::default()
            },
            &["layers_to_transform"],
        ),
        (
            OftConfig {
                target_modules: Some(TargetModules::Pattern(".*q_proj".into())),
                layers_to_transform: Some(serde_json::from_str("0").unwrap()),
                ..OftConfig::default()
            },
            &["regular expression"],
        ),
        (
            OftConfig {
                module_dropout: 1.0,
                ..OftConfig::default()
            },
            &["module_dropout"],
        ),
        (
            OftConfig {
                eps: f64::NAN,
                ..OftConfig::default()
            },
            &["eps"],
        ),
        (
            OftConfig {
                modules_to_save: Some(vec!["lm_head".into()]),
                ..OftConfig::default()
            },
            &["modules_to_save", "OFT"],
        ),
    ];
    for (config, words) in cases {
        let err = config.check().unwrap_err().to_string();
        for w in words {
            assert!(err.contains(w), "{w}: {err}");
        }
    }
    // Bad targets name the modules there are.
    let model = peft_models::tiny::llama(0);
    let err = OftConfig::new(["c_attn"])
        .build_oft(&mut init(&model, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("c_attn") && err.contains("q_proj"), "{err}");
}

#[test]
fn save_then_load_keeps_the_logits_and_the_config() {
    peft_oft::register();
    for model in seeded_tiny_models(4) {
        for config in variants() {
            let config = drawn(config);
            let oft = build(model.as_ref(), &config, 6);
            let dir = tempfile::tempdir().unwrap();
            save_adapter(dir.path(), &oft, model.spec()).unwrap();
            let json: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap(),
            )
            .unwrap();
            assert_eq!(json["peft_type"], "OFT");
            assert_eq!(json["peft_version"], HF_PEFT_FORMAT);
            for field in [
                "r",
                "oft_block_size",
                "block_share",
                "use_cayley_neumann",
                "coft",
                "eps",
            ] {
                assert_eq!(
                    json[field],
                    serde_json::to_value(&config).unwrap()[field],
                    "{field}"
                );
            }
            let file = candle_core::safetensors::load(dir.path().join(WEIGHTS_FILE), &Device::Cpu)
                .unwrap();
            for l in oft.layers() {
                assert_eq!(file[&rotation_key(l.name())].dims(), l.weight().dims());
            }
            let loaded = load_adapter(dir.path(), &mut init(model.as_ref(), 9))
                .unwrap()
                .adapter;
            assert_eq!(loaded.num_trainable(), oft.num_trainable());
            let d = max_diff(
                &logits(model.as_ref(), &oft, &IDS),
                &logits(model.as_ref(), loaded.as_ref(), &IDS),
            );
            assert!(d < 1e-6, "{config:?}: {d}");
        }
    }
}

#[test]
fn files_that_do_not_fit_the_config_are_refused_naming_the_tensor() {
    peft_oft::register();
    let model = peft_models::tiny::llama(0);
    let oft = build(&model, &drawn(OftConfig::with_block_size(8, ["q_proj"])), 0);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &oft, model.spec()).unwrap();
    // The same file read with blocks of 4: oft_R should be [8, 6].
    let path = dir.path().join(CONFIG_FILE);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["oft_block_size"] = serde_json::json!(4);
    std::fs::write(&path, json.to_string()).unwrap();
    let err = load_adapter(dir.path(), &mut init(&model, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("q_proj.oft_R.weight") && err.contains("oft_block_size = 4"),
        "{err}"
    );
    // Both r and oft_block_size in a file: HF PEFT's refusal.
    json["oft_block_size"] = serde_json::json!(8);
    json["r"] = serde_json::json!(4);
    std::fs::write(&path, json.to_string()).unwrap();
    let err = load_adapter(dir.path(), &mut init(&model, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not both"), "{err}");
}

#[test]
fn sized_by_oft_block_size() {
    let model = peft_models::tiny::llama(0);
    let spec = model.spec();
    let config = OftConfig::new(["q_proj"]);
    assert_eq!(config.size_knob(), Some("oft_block_size"));
    let by_r = OftConfig {
        r: 4,
        oft_block_size: 0,
        ..config.clone()
    };
    assert_eq!(
        by_r.size_knob(),
        None,
        "a count that falls with r cannot size a budget"
    );
    // The count grows with the size, adjusted per module.
    let counts: Vec<usize> = [1, 2, 4, 8, 16, 32, 64]
        .iter()
        .map(|&k| {
            let sized = config.with_size(k, spec).unwrap();
            sized.build(&mut init(&model, 0)).unwrap().num_trainable()
        })
        .collect();
    assert_eq!(counts, [0, 32, 96, 224, 480, 992, 992]);
    let sized = serde_json::to_value(by_r.with_size(8, spec).unwrap()).unwrap();
    assert_eq!(
        (&sized["r"], &sized["oft_block_size"]),
        (&serde_json::json!(0), &serde_json::json!(8))
    );
}
