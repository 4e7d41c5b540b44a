//! Which modules a LoRA config adapts, by HF PEFT's rules, on the seeded tiny models.

use peft_core::model::BaseModel;
use peft_core::spec::{ModelSpec, Site};
use peft_lora::{
    minimal_target_names, resolve_targets, LayerSelection, LayersPattern, LoraConfig, TargetModules,
};

fn names(config: &LoraConfig, model: &dyn BaseModel) -> Vec<String> {
    let (targets, _) = resolve_targets(config, model.spec()).unwrap();
    targets.into_iter().map(|t| t.name).collect()
}

fn error(config: &LoraConfig, model: &dyn BaseModel) -> String {
    resolve_targets(config, model.spec())
        .map(|(t, _)| format!("unexpectedly resolved {t:?}"))
        .unwrap_err()
        .to_string()
}

fn pattern(p: &str) -> LoraConfig {
    LoraConfig {
        target_modules: Some(TargetModules::Pattern(p.into())),
        ..LoraConfig::default()
    }
}

#[test]
fn a_list_entry_matches_the_whole_name_or_a_dotted_suffix() {
    let gpt2 = peft_models::tiny::gpt2(0);
    // `c_proj` is both the attention output and the MLP output projection.
    assert_eq!(
        names(&LoraConfig::new(4, ["c_proj"]), &gpt2),
        [
            "transformer.h.0.attn.c_proj",
            "transformer.h.0.mlp.c_proj",
            "transformer.h.1.attn.c_proj",
            "transformer.h.1.mlp.c_proj"
        ]
    );
    assert_eq!(
        names(&LoraConfig::new(4, ["attn.c_proj"]), &gpt2),
        ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    );
    assert_eq!(
        names(&LoraConfig::new(4, ["transformer.h.1.mlp.c_fc"]), &gpt2),
        ["transformer.h.1.mlp.c_fc"]
    );
    // A part of a name component is not a match: `proj` is not `c_proj`.
    let llama = peft_models::tiny::llama(0);
    let msg = error(&LoraConfig::new(4, ["proj"]), &llama);
    assert!(msg.contains("`proj` not found"), "{msg}");
    assert!(peft_lora::list_entry_matches(
        "q_proj",
        "model.layers.0.self_attn.q_proj"
    ));
    assert!(!peft_lora::list_entry_matches(
        "q_proj",
        "model.layers.0.self_attn.xq_proj"
    ));
}

#[test]
fn a_string_is_a_regular_expression_over_the_whole_name() {
    let llama = peft_models::tiny::llama(0);
    assert_eq!(
        names(&pattern(r".*\.0\.self_attn\.(q|v)_proj"), &llama),
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj"
        ]
    );
    // Full match: a bare short name as a pattern matches no full name.
    let msg = error(&pattern("q_proj"), &llama);
    assert!(
        msg.contains("pattern `q_proj`") && msg.contains("not found"),
        "{msg}"
    );
    assert_eq!(names(&pattern(".*q_proj"), &llama).len(), 2);
    let msg = error(&pattern("(unclosed"), &llama);
    assert!(msg.contains("regular expression"), "{msg}");
}

#[test]
fn all_linear_takes_every_projection_and_no_norm() {
    let gpt2 = peft_models::tiny::gpt2(0);
    let llama = peft_models::tiny::llama(0);
    for model in [&gpt2 as &dyn BaseModel, &llama] {
        let linear: Vec<String> = model
            .spec()
            .sites
            .iter()
            .filter(|s| matches!(s.kind, peft_core::spec::SiteKind::Linear { .. }))
            .map(|s| s.name.clone())
            .collect();
        for spelling in ["all-linear", "ALL-LINEAR"] {
            let config = pattern(spelling);
            assert_eq!(names(&config, model), linear);
            // The saved config lists the modules (fewer than 20: whole names, as HF PEFT saves them).
            let (_, saved) = resolve_targets(&config, model.spec()).unwrap();
            let TargetModules::List(mut saved) = saved else {
                panic!("all-linear is saved as a list")
            };
            saved.sort();
            let mut expected = linear.clone();
            expected.sort();
            assert_eq!(saved, expected);
        }
    }
}

#[test]
fn twenty_or_more_modules_are_saved_as_minimal_suffixes_as_hf_peft_does() {
    let mut spec = ModelSpec::new("llama", 3, 8, 2, 2, 10, 16);
    let mut all = Vec::new();
    for layer in 0..3 {
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            all.push(format!("model.layers.{layer}.self_attn.{m}"));
        }
        for m in ["gate_proj", "up_proj", "down_proj"] {
            all.push(format!("model.layers.{layer}.mlp.{m}"));
        }
        spec.add_site(Site::norm(
            format!("model.layers.{layer}.input_layernorm"),
            Some(layer),
            8,
            false,
        ));
    }
    for name in &all {
        spec.add_site(Site::linear(name.clone(), None, 8, 8, false));
    }
    assert_eq!(all.len(), 21);
    assert_eq!(
        minimal_target_names(&all, &spec),
        [
            "down_proj",
            "gate_proj",
            "k_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj"
        ]
    );
    // Leaving k_proj of layer 2 out: the others are still separable, but k_proj needs longer names.
    let some: Vec<String> = all
        .iter()
        .filter(|n| *n != "model.layers.2.self_attn.k_proj")
        .cloned()
        .collect();
    // What HF PEFT 0.21's `_find_minimal_target_modules` returns for the same names.
    assert_eq!(
        minimal_target_names(&some, &spec),
        [
            "0.self_attn.k_proj",
            "1.self_attn.k_proj",
            "down_proj",
            "gate_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj"
        ]
    );
    // Fewer than 20: kept whole.
    assert_eq!(minimal_target_names(&all[..5], &spec), {
        let mut v = all[..5].to_vec();
        v.sort();
        v
    });
}

#[test]
fn no_target_modules_takes_hf_peft_default_for_the_architecture() {
    let gpt2 = peft_models::tiny::gpt2(0);
    let (targets, saved) = resolve_targets(&LoraConfig::default(), gpt2.spec()).unwrap();
    assert_eq!(saved, TargetModules::list(["c_attn"]));
    assert_eq!(targets.len(), 2);
    let llama = peft_models::tiny::llama(0);
    let (targets, saved) = resolve_targets(&LoraConfig::default(), llama.spec()).unwrap();
    assert_eq!(saved, TargetModules::list(["q_proj", "v_proj"]));
    assert_eq!(targets.len(), 4);
    // The default is chosen by role; what is saved is HF PEFT's per-architecture list.
    let opt = peft_models::opt::tiny(0);
    let t5 = peft_models::t5::tiny(0);
    let bert = peft_models::bert::tiny(0);
    for (model, expected) in [
        (&opt as &dyn BaseModel, &["q_proj", "v_proj"][..]),
        (&t5, &["q", "v"]),
        (&bert, &["query", "value"]),
    ] {
        let arch = &model.spec().architecture;
        assert_eq!(
            peft_lora::default_targets(model.spec()).as_deref(),
            Some(
                expected
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .as_slice()
            ),
            "{arch}"
        );
        let (targets, _) = resolve_targets(&LoraConfig::default(), model.spec()).unwrap();
        assert!(
            targets.iter().all(|t| {
                let role = model.spec().site(t.site).role;
                peft_lora::DEFAULT_ROLES.contains(&role)
            }),
            "{arch}: {targets:?}"
        );
    }
    // T5's cross-attention queries and values are adapted too, as HF PEFT's `q`, `v` select them.
    let (targets, _) = resolve_targets(&LoraConfig::default(), t5.spec()).unwrap();
    assert!(targets
        .iter()
        .any(|t| t.name.ends_with("EncDecAttention.v")));
    // A model whose sites declare no role has no default, whatever its architecture is called.
    let mut unknown = llama.spec().clone();
    unknown.architecture = "mamba".into();
    for site in &mut unknown.sites {
        site.role = peft_core::spec::Role::Other;
    }
    let msg = resolve_targets(&LoraConfig::default(), &unknown)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("no default for tiny-llama (mamba)") && msg.contains("q_proj"),
        "{msg}"
    );
}

#[test]
fn layers_to_transform_keeps_the_given_layer_indices() {
    let llama = peft_models::tiny::llama(0);
    let one = LoraConfig {
        layers_to_transform: Some(LayerSelection::One(1)),
        ..LoraConfig::new(4, ["q_proj", "down_proj"])
    };
    assert_eq!(
        names(&one, &llama),
        [
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.mlp.down_proj"
        ]
    );
    let with_pattern = LoraConfig {
        layers_to_transform: Some(LayerSelection::Many(vec![0])),
        layers_pattern: Some(LayersPattern::One("layers".into())),
        ..LoraConfig::new(4, ["q_proj"])
    };
    assert_eq!(
        names(&with_pattern, &llama),
        ["model.layers.0.self_attn.q_proj"]
    );
    // GPT-2's layer list is `h`; `layers` names nothing there.
    let gpt2 = peft_models::tiny::gpt2(0);
    let h = LoraConfig {
        layers_pattern: Some(LayersPattern::Many(vec!["h".into()])),
        ..with_pattern.clone()
    };
    assert_eq!(
        names(
            &LoraConfig {
                target_modules: Some(TargetModules::list(["c_attn"])),
                ..h
            },
            &gpt2
        ),
        ["transformer.h.0.attn.c_attn"]
    );
    let msg = error(
        &LoraConfig {
            target_modules: Some(TargetModules::list(["c_attn"])),
            ..with_pattern
        },
        &gpt2,
    );
    assert!(msg.contains("selects no linear module"), "{msg}");
    // An empty list selects nothing, which HF PEFT reads as "every layer".
    let empty = LoraConfig {
        layers_to_transform: Some(LayerSelection::Many(vec![])),
        ..LoraConfig::new(4, ["q_proj"])
    };
    assert_eq!(names(&empty, &llama).len(), 2);
    let msg = error(
        &LoraConfig {
            layers_to_transform: Some(LayerSelection::One(5)),
            ..LoraConfig::new(4, ["q_proj"])
        },
        &llama,
    );
    assert!(msg.contains("2 layers"), "{msg}");
}

#[test]
fn exclude_modules_removes_matches() {
    let gpt2 = peft_models::tiny::gpt2(0);
    let config = LoraConfig {
        exclude_modules: Some(TargetModules::list(["mlp.c_proj", "c_fc"])),
        ..pattern("all-linear")
    };
    assert_eq!(
        names(&config, &gpt2),
        [
            "transformer.h.0.attn.c_attn",
            "transformer.h.0.attn.c_proj",
            "transformer.h.1.attn.c_attn",
            "transformer.h.1.attn.c_proj"
        ]
    );
    let config = LoraConfig {
        exclude_modules: Some(TargetModules::Pattern(r".*\.1\..*".into())),
        ..LoraConfig::new(4, ["c_attn"])
    };
    assert_eq!(names(&config, &gpt2), ["transformer.h.0.attn.c_attn"]);
}

#[test]
fn rank_and_alpha_patterns_override_per_module() {
    let llama = peft_models::tiny::llama(0);
    let config = LoraConfig {
        rank_pattern: [
            ("o_proj".to_string(), 2),
            ("layers.0.self_attn.q_proj".to_string(), 16),
        ]
        .into(),
        alpha_pattern: [("down_proj".to_string(), 4.0)].into(),
        lora_alpha: 32.0,
        ..LoraConfig::new(8, ["q_proj", "o_proj", "down_proj"])
    };
    let (targets, _) = resolve_targets(&config, llama.spec()).unwrap();
    let of = |name: &str| targets.iter().find(|t| t.name == name).unwrap();
    assert_eq!(of("model.layers.0.self_attn.q_proj").r, 16);
    assert_eq!(of("model.layers.1.self_attn.q_proj").r, 8);
    assert_eq!(of("model.layers.1.self_attn.o_proj").r, 2);
    assert_eq!(of("model.layers.0.mlp.down_proj").alpha, 4.0);
    assert_eq!(of("model.layers.0.self_attn.o_proj").alpha, 32.0);
}

#[test]
fn a_missing_target_names_the_modules_this_model_has() {
    let gpt2 = peft_models::tiny::gpt2(0);
    let msg = error(&LoraConfig::new(4, ["c_attn", "q_proj"]), &gpt2);
    assert!(msg.contains("`q_proj` not found"), "{msg}");
    assert!(msg.contains("c_attn, c_proj, c_fc"), "{msg}");
    // A norm is a module, but not one LoRA adapts.
    let msg = error(&LoraConfig::new(4, ["ln_1"]), &gpt2);
    assert!(
        msg.contains("a norm") && msg.contains("linear modules only"),
        "{msg}"
    );
    let msg = error(&LoraConfig::new(4, Vec::<String>::new()), &gpt2);
    assert!(msg.contains("empty list"), "{msg}");
}
