//! `LoraConfig` reads HF PEFT's `adapter_config.json` (defaults, every field of 0.21, lenient about fields of
//! other versions), writes it back, and refuses what this crate cannot reproduce with a message saying what to do.

use peft_core::method::PeftMethod;
use peft_lora::{BiasMode, InitLoraWeights, LayerSelection, LoraConfig, LoraInit, TargetModules};
use peft_testing::fixture;
use serde_json::{json, Value};

fn parse(value: Value) -> LoraConfig {
    serde_json::from_value(value).unwrap()
}

#[test]
fn defaults_are_hf_peft_defaults() {
    let boxed: Box<dyn PeftMethod> =
        serde_json::from_str(r#"{"peft_type": "LORA"}"#).expect("LORA is registered");
    assert_eq!(boxed.typetag_name(), "LORA");
    let c = parse(json!({}));
    assert_eq!(c.r, 8);
    assert_eq!(c.lora_alpha, 8.0);
    assert_eq!(c.lora_dropout, 0.0);
    assert_eq!(c.bias, BiasMode::None);
    assert_eq!(c.init_lora_weights, InitLoraWeights::Flag(true));
    assert_eq!(
        c.init_lora_weights.resolve().unwrap(),
        LoraInit::KaimingUniform
    );
    assert!(c.target_modules.is_none() && !c.use_rslora && !c.fan_in_fan_out && !c.use_dora);
    assert!(c.rank_pattern.is_empty() && c.alpha_pattern.is_empty());
    assert_eq!(c.hf.megatron_core.as_deref(), Some("megatron.core"));
    assert_eq!(c.hf.qalora_group_size, 16);
}

#[test]
fn union_fields_take_every_form_hf_peft_allows() {
    let c = parse(json!({"target_modules": ["q_proj", "v_proj"], "layers_to_transform": 3}));
    assert_eq!(
        c.target_modules,
        Some(TargetModules::list(["q_proj", "v_proj"]))
    );
    assert_eq!(c.layers_to_transform, Some(LayerSelection::One(3)));
    let c = parse(json!({"target_modules": ".*\\.q_proj", "layers_to_transform": [0, 2]}));
    assert_eq!(
        c.target_modules,
        Some(TargetModules::Pattern(".*\\.q_proj".into()))
    );
    assert!(c.layers_to_transform.unwrap().contains(2));
    assert!(parse(json!({"target_modules": "all-linear"}))
        .target_modules
        .unwrap()
        .is_all_linear());
    let gaussian = parse(json!({"init_lora_weights": "gaussian"}));
    assert_eq!(
        gaussian.init_lora_weights.resolve().unwrap(),
        LoraInit::Gaussian
    );
    let random = parse(json!({"init_lora_weights": false}));
    assert_eq!(
        random.init_lora_weights.resolve().unwrap(),
        LoraInit::Random
    );
    for (text, init) in [
        ("pissa", LoraInit::Pissa { niter: None }),
        ("pissa_niter_16", LoraInit::Pissa { niter: Some(16) }),
        ("OLoRA", LoraInit::Olora),
    ] {
        let read = parse(json!({ "init_lora_weights": text }));
        assert_eq!(read.init_lora_weights.resolve().unwrap(), init);
    }
    let loftq = parse(json!({"init_lora_weights": "loftq"}));
    let msg = loftq.init_lora_weights.resolve().unwrap_err().to_string();
    assert!(
        msg.contains("\"loftq\"") && msg.contains("gaussian") && msg.contains("olora"),
        "{msg}"
    );
    for (text, mode) in [
        ("none", BiasMode::None),
        ("all", BiasMode::All),
        ("lora_only", BiasMode::LoraOnly),
    ] {
        assert_eq!(parse(json!({ "bias": text })).bias, mode);
    }
}

#[test]
fn every_hf_written_config_parses_and_writes_back_what_hf_wrote() {
    for folder in [
        "hf-tiny-gpt2-lora",
        "hf-tiny-llama-lora",
        "hf-tiny-llama-lora-rslora",
        "hf-smollm2-lora",
    ] {
        let path = fixture(&format!("adapters/{folder}/adapter_config.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        let original: Value = serde_json::from_str(&text).unwrap();
        let boxed: Box<dyn PeftMethod> = serde_json::from_str(&text).unwrap();
        let written = serde_json::to_value(&boxed).unwrap();
        for (key, value) in original.as_object().unwrap() {
            let ours = &written[key];
            let same = if key == "target_modules" {
                // HF PEFT saves a set: compare as sets.
                let set = |v: &Value| {
                    let mut s: Vec<String> = serde_json::from_value(v.clone()).unwrap_or_default();
                    s.sort();
                    s
                };
                set(ours) == set(value)
            } else {
                ours == value
            };
            assert!(same, "{folder} `{key}`: HF wrote {value}, we write {ours}");
        }
    }
}

#[test]
fn the_hf_gpt2_config_reads_as_hf_peft_wrote_it() {
    let path = fixture("adapters/hf-tiny-gpt2-lora/adapter_config.json");
    let c: LoraConfig = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!((c.r, c.lora_alpha), (4, 8.0));
    assert!(c.fan_in_fan_out, "HF PEFT sets fan_in_fan_out for Conv1D");
    assert_eq!(c.bias, BiasMode::LoraOnly);
    assert_eq!(c.init_lora_weights, InitLoraWeights::Flag(false));
    assert_eq!(c.lora_dropout, 0.1);
    assert!(c.common.inference_mode);
    assert_eq!(c.common.task_type.as_deref(), Some("CAUSAL_LM"));
}

#[test]
fn whole_alphas_are_written_as_integers_as_hf_peft_writes_them() {
    let c = LoraConfig {
        lora_alpha: 16.0,
        alpha_pattern: [("o_proj".to_string(), 0.5)].into(),
        ..LoraConfig::default()
    };
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["lora_alpha"], json!(16));
    assert!(v["lora_alpha"].is_u64());
    assert_eq!(v["alpha_pattern"]["o_proj"], json!(0.5));
}

#[test]
fn fields_of_other_peft_versions_are_ignored() {
    // `enable_lora` / `merge_weights` come from PEFT 0.2; they do not change plain LoRA.
    let c = parse(json!({"r": 4, "enable_lora": null, "merge_weights": false}));
    assert_eq!(c.r, 4);
}

fn refusal(c: LoraConfig) -> String {
    c.check_supported().unwrap_err().to_string()
}

#[test]
fn unsupported_settings_are_refused_saying_what_to_change() {
    let msg = refusal(LoraConfig {
        r: 0,
        ..LoraConfig::default()
    });
    assert!(msg.contains("r = 0") && msg.contains("at least 1"), "{msg}");
    // DoRA itself is supported; with a bias on lora_B HF PEFT refuses it.
    let msg = refusal(LoraConfig {
        use_dora: true,
        lora_bias: true,
        ..LoraConfig::default()
    });
    assert!(
        msg.contains("DoRA") && msg.contains("use_dora = false"),
        "{msg}"
    );
    let msg = refusal(LoraConfig {
        modules_to_save: Some(vec!["score".into()]),
        ..LoraConfig::default()
    });
    assert!(
        msg.contains("modules_to_save") && msg.contains("score"),
        "{msg}"
    );
    assert!(LoraConfig {
        modules_to_save: Some(vec![]),
        ..LoraConfig::default()
    }
    .check_supported()
    .is_ok());
    let msg = refusal(LoraConfig {
        lora_bias: true,
        ..LoraConfig::default()
    });
    assert!(msg.contains("lora_bias = false"), "{msg}");
    let msg = refusal(LoraConfig {
        lora_dropout: 1.0,
        ..LoraConfig::default()
    });
    assert!(msg.contains("lora_dropout"), "{msg}");
    let msg = refusal(LoraConfig {
        rank_pattern: [("q_proj".to_string(), 0)].into(),
        ..LoraConfig::default()
    });
    assert!(
        msg.contains("rank_pattern") && msg.contains("q_proj"),
        "{msg}"
    );
    let msg = refusal(LoraConfig {
        target_modules: Some(TargetModules::Pattern(".*q_proj".into())),
        layers_to_transform: Some(LayerSelection::One(0)),
        ..LoraConfig::default()
    });
    assert!(msg.contains("layers_to_transform cannot be used"), "{msg}");
    let msg = refusal(parse(json!({"layers_pattern": "layers"})));
    assert!(msg.contains("layers_to_transform"), "{msg}");
    let msg = refusal(parse(json!({"use_qalora": true})));
    assert!(msg.contains("QALoRA"), "{msg}");
    let msg = refusal(parse(json!({"trainable_token_indices": [1, 2]})));
    assert!(msg.contains("trainable_token_indices"), "{msg}");
    // A saved adapter made with LoftQ also changed the base weights in a way not rebuilt here: refused; PiSSA's
    // B0 A0 are rebuilt from the base on load; EVA only chose A's start.
    let msg = refusal(parse(
        json!({"init_lora_weights": "loftq", "inference_mode": true}),
    ));
    assert!(msg.contains("changes the base model"), "{msg}");
    assert!(
        parse(json!({"init_lora_weights": "pissa", "inference_mode": true}))
            .check_supported()
            .is_ok()
    );
    assert!(
        parse(json!({"init_lora_weights": "eva", "inference_mode": true}))
            .check_supported()
            .is_ok()
    );
}

#[test]
fn an_experiment_method_table_parses_and_names_every_key_it_knows() {
    // What `peft train` does with `[method]`: TOML into the registry, then every given key must serialise back.
    let table: toml::Table = toml::from_str(
        r#"
        peft_type = "LORA"
        task_type = "CAUSAL_LM"
        r = 8
        lora_alpha = 16
        lora_dropout = 0.05
        target_modules = ["q_proj", "v_proj"]
        layers_to_transform = [0, 1]
        rank_pattern = { o_proj = 4 }
        init_lora_weights = "gaussian"
        bias = "lora_only"
        use_rslora = true
        "#,
    )
    .unwrap();
    let method: Box<dyn PeftMethod> = toml::Value::Table(table.clone()).try_into().unwrap();
    let written = serde_json::to_value(&method).unwrap();
    for key in table.keys() {
        assert!(
            written.get(key).is_some(),
            "`{key}` does not serialise back"
        );
    }
    assert_eq!(written["lora_alpha"], json!(16));
    assert_eq!(written["rank_pattern"], json!({"o_proj": 4}));
    assert_eq!(written["init_lora_weights"], json!("gaussian"));
}
