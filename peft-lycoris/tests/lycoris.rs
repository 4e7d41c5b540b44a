//! LoHa and LoKr behaviour beyond HF parity: fresh adapters are identities, the update is the product HF
//! defines (checked element by element), the dropouts act only while training and as HF applies them, and bad
//! configs or files are refused with what to change.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteId;
use peft_lycoris::{
    KronFactor, LohaConfig, LokrConfig, LokrInitWeights, LycorisFields, TargetModules,
};
use peft_testing::{init, logits, max_diff};

const IDS: [u32; 6] = [5, 17, 42, 8, 99, 3];

fn fields(r: usize) -> LycorisFields {
    LycorisFields {
        r,
        alpha: 3.0,
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..LycorisFields::default()
    }
}

fn lokr(r: usize, decompose_both: bool, init_weights: LokrInitWeights) -> LokrConfig {
    LokrConfig {
        lycoris: fields(r),
        decompose_both,
        init_weights,
        ..LokrConfig::default()
    }
}

fn values(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

#[test]
fn fresh_adapters_are_identities_unless_init_weights_is_false() {
    let model = peft_models::tiny::llama(5);
    let frozen = logits(&model, &NoHooks, &IDS);
    let identities: Vec<Box<dyn PeftMethod>> = vec![
        Box::new(LohaConfig {
            lycoris: fields(2),
            ..LohaConfig::default()
        }),
        Box::new(lokr(8, false, LokrInitWeights::Flag(true))),
        Box::new(lokr(1, true, LokrInitWeights::Flag(true))),
        Box::new(lokr(1, true, LokrInitWeights::Named("lycoris".into()))),
    ];
    for config in identities {
        let adapter = config.build(&mut init(&model, 0)).unwrap();
        let diff = max_diff(&logits(&model, adapter.as_ref(), &IDS), &frozen);
        assert_eq!(diff, 0.0, "{config:?}");
    }
    let random: Vec<Box<dyn PeftMethod>> = vec![
        Box::new(LohaConfig {
            lycoris: fields(2),
            init_weights: false,
            ..LohaConfig::default()
        }),
        Box::new(lokr(1, true, LokrInitWeights::Flag(false))),
    ];
    for config in random {
        let adapter = config.build(&mut init(&model, 0)).unwrap();
        let diff = max_diff(&logits(&model, adapter.as_ref(), &IDS), &frozen);
        assert!(diff > 1e-3, "{config:?}: changes logits by only {diff}");
    }
}

#[test]
fn the_loha_update_is_the_scaled_hadamard_product_of_two_low_rank_products() {
    let model = peft_models::tiny::llama(5);
    let config = LohaConfig {
        lycoris: fields(2),
        init_weights: false,
        ..LohaConfig::default()
    };
    let loha = config.build_loha(&mut init(&model, 0)).unwrap();
    let layer = loha.layer("model.layers.1.self_attn.v_proj").unwrap();
    let f = layer.factors();
    let (w1a, w1b, w2a, w2b) = (
        values(f.w1_a.as_tensor()),
        values(f.w1_b.as_tensor()),
        values(f.w2_a.as_tensor()),
        values(f.w2_b.as_tensor()),
    );
    let delta = values(&layer.delta_weight().unwrap());
    assert_eq!((delta.len(), delta[0].len()), (16, 32));
    let dot = |a: &[Vec<f32>], b: &[Vec<f32>], i: usize, j: usize| -> f32 {
        (0..2).map(|k| a[i][k] * b[k][j]).sum()
    };
    for (i, row) in delta.iter().enumerate() {
        for (j, &got) in row.iter().enumerate() {
            let want = dot(&w1a, &w1b, i, j) * dot(&w2a, &w2b, i, j) * 3.0 / 2.0;
            assert!((got - want).abs() < 1e-6, "({i}, {j})");
        }
    }
}

#[test]
fn the_lokr_update_is_the_scaled_kronecker_product_of_its_sides() {
    let model = peft_models::tiny::llama(5);
    // down_proj: out 32 = 4 x 8, in 64 = 8 x 8; r = 1 decomposes both sides.
    let lokr = lokr(1, true, LokrInitWeights::Flag(false))
        .build_lokr(&mut init(&model, 0))
        .unwrap();
    let layer = lokr.layer("model.layers.0.mlp.down_proj").unwrap();
    let side = |s: &KronFactor| match s {
        KronFactor::Decomposed { a, b } => values(&a.as_tensor().matmul(b.as_tensor()).unwrap()),
        KronFactor::Full(_) => panic!("r = 1 decomposes both sides"),
    };
    let (w1, w2) = (side(&layer.factors().w1), side(&layer.factors().w2));
    assert_eq!((w1.len(), w1[0].len(), w2.len(), w2[0].len()), (4, 8, 8, 8));
    let delta = values(&layer.delta_weight().unwrap());
    for i in 0..4 {
        for j in 0..8 {
            for k in 0..8 {
                for l in 0..8 {
                    let want = w1[i][k] * w2[j][l] * 3.0;
                    let got = delta[i * 8 + j][k * 8 + l];
                    assert!((got - want).abs() < 1e-6, "({i}, {j}, {k}, {l})");
                }
            }
        }
    }
}

/// A fixed `[rows, 32]` input with entries in [-1, 1].
fn input(rows: usize) -> Tensor {
    let v: Vec<f32> = (0..rows * 32)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 11.0)
        .collect();
    Tensor::from_vec(v, (rows, 32), &Device::Cpu).unwrap()
}

/// The update alone of site `site` for the input `x` (the base layer replaced by zeros), as `[rows, out]`.
fn update(adapter: &dyn Adapter, site: SiteId, x: &Tensor, out: usize) -> Vec<Vec<f32>> {
    let zeros = |x: &Tensor| -> peft_core::Result<Tensor> {
        Ok(Tensor::zeros((x.dim(0)?, out), DType::F32, x.device())?)
    };
    values(&adapter.linear(site, x, &zeros).unwrap())
}

#[test]
fn rank_dropout_drops_whole_output_rows_while_training_only() {
    let model = peft_models::tiny::llama(5);
    let site = model
        .spec()
        .find_site("model.layers.0.self_attn.q_proj")
        .unwrap();
    let x = input(3);
    let dropped = |scale: bool, loha: bool| -> Box<dyn Adapter> {
        let f = LycorisFields {
            rank_dropout: 0.5,
            ..fields(2)
        };
        let config: Box<dyn PeftMethod> = if loha {
            Box::new(LohaConfig {
                lycoris: f,
                init_weights: false,
                ..LohaConfig::default()
            })
        } else {
            Box::new(LokrConfig {
                lycoris: f,
                rank_dropout_scale: scale,
                init_weights: LokrInitWeights::Flag(false),
                ..LokrConfig::default()
            })
        };
        config.build(&mut init(&model, 0)).unwrap()
    };
    // (LoKr unscaled, LoKr scaled, LoHa: always scaled, as HF)
    for (scale, loha) in [(false, false), (true, false), (true, true)] {
        let adapter = dropped(scale, loha);
        let eval = peft_core::grad::no_grad(|| update(adapter.as_ref(), site, &x, 32));
        let train = update(adapter.as_ref(), site, &x, 32);
        // Column j of the update comes from row j of ΔW: each is dropped whole or kept, times one factor.
        let mut ratios = Vec::new();
        for j in 0..32 {
            let col: Vec<f32> = (0..3).map(|i| train[i][j]).collect();
            if col.iter().all(|&v| v == 0.0) {
                continue;
            }
            let expected: Vec<f32> = (0..3).map(|i| eval[i][j]).collect();
            let dot = |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
            let ratio = dot(&col, &expected) / dot(&expected, &expected);
            for (got, want) in col.iter().zip(&expected) {
                assert!(
                    (got - ratio * want).abs() < 1e-5,
                    "row {j}: {col:?} vs {expected:?}"
                );
            }
            ratios.push(ratio);
        }
        let kept = ratios.len();
        assert!(
            (4..=28).contains(&kept),
            "kept {kept} of 32 rows at p = 0.5"
        );
        let want = if scale { 32.0 / kept as f32 } else { 1.0 };
        assert!(ratios.iter().all(|r| (r - want).abs() < 1e-4), "{ratios:?}");
    }
}

#[test]
fn module_dropout_skips_the_update_of_some_calls_while_training_only() {
    let model = peft_models::tiny::llama(5);
    let site = model
        .spec()
        .find_site("model.layers.0.self_attn.q_proj")
        .unwrap();
    let x = input(2);
    let adapter = LohaConfig {
        lycoris: LycorisFields {
            module_dropout: 0.5,
            ..fields(2)
        },
        init_weights: false,
        ..LohaConfig::default()
    }
    .build(&mut init(&model, 0))
    .unwrap();
    let eval = peft_core::grad::no_grad(|| update(adapter.as_ref(), site, &x, 32));
    let mut skipped = 0;
    for _ in 0..40 {
        let u = update(adapter.as_ref(), site, &x, 32);
        if u.iter().flatten().all(|&v| v == 0.0) {
            skipped += 1;
        } else {
            assert_eq!(u, eval, "a call that keeps the update keeps all of it");
        }
    }
    assert!((8..=32).contains(&skipped), "skipped {skipped} of 40 calls");
    for _ in 0..10 {
        assert_eq!(
            peft_core::grad::no_grad(|| update(adapter.as_ref(), site, &x, 32)),
            eval
        );
    }
}

#[test]
fn bad_configs_are_refused_with_what_to_change() {
    let model = peft_models::tiny::llama(5);
    let err = |config: &dyn PeftMethod| match config.build(&mut init(&model, 0)) {
        Ok(_) => panic!("{config:?} was accepted"),
        Err(e) => e.to_string(),
    };
    let with = |f: LycorisFields| LohaConfig {
        lycoris: f,
        ..LohaConfig::default()
    };
    assert!(err(&with(fields(0))).contains("r = 0"));
    let dropout = LycorisFields {
        rank_dropout: 1.0,
        ..fields(2)
    };
    assert!(err(&with(dropout)).contains("rank_dropout = 1"));
    let typo = LycorisFields {
        target_modules: Some(TargetModules::list(["q_projj"])),
        ..fields(2)
    };
    assert!(err(&with(typo)).contains("q_projj"));
    let pissa = lokr(2, false, LokrInitWeights::Named("pissa".into()));
    assert!(err(&pissa).contains("lycoris"));
    let head = LycorisFields {
        modules_to_save: Some(vec!["lm_head".into()]),
        ..fields(2)
    };
    assert!(err(&with(head)).contains("modules_to_save"));
}

#[test]
fn a_file_with_other_shapes_or_keys_is_refused_and_changes_nothing() {
    let model = peft_models::tiny::llama(5);
    let config = lokr(1, true, LokrInitWeights::Flag(false));
    let adapter = config.build(&mut init(&model, 0)).unwrap();
    let before = logits(&model, adapter.as_ref(), &IDS);
    let mut tensors: HashMap<String, Tensor> = adapter.tensors().unwrap().into_iter().collect();
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lokr_w1_a".to_string();
    tensors.insert(
        key.clone(),
        Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = adapter.load_tensors(&tensors).unwrap_err().to_string();
    assert!(err.contains(&key), "{err}");
    tensors.remove(&key);
    tensors.insert(
        key.replace("lokr_w1_a", "lokr_w1"),
        Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(adapter.load_tensors(&tensors).is_err());
    assert_eq!(logits(&model, adapter.as_ref(), &IDS), before);
}
