//! An architecture no method has heard of gets every method's defaults unchanged, because methods choose by
//! the role a site declares, not by the architecture's name: "toyformer", a model with module names of its own
//! (`blocks.0.mix.wq`, `blocks.0.ffn.proj`, ...) whose sites say what they are, trains under LoRA's default
//! targets, BitFit's `"all"` and `"paper"` presets, IA3's defaults, prompt tuning and prefix tuning, and each
//! adapter adapts exactly the sites its method's roles name.
//!
//! The toy reuses the tiny LLaMA's computation (its hooks see the same site ids) under a spec of its own.

use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::{BaseModel, Batch};
use peft_core::spec::{ModelSpec, Role, Site, SiteKind};
use peft_testing::{init, rule_lm_task, WithSpec};
use peft_train::conformance::{check_adapter, Conformance};
use serde_json::{json, Value};

/// The toy's name and role for a site of the tiny LLaMA (`model.layers.1.mlp.down_proj` ->
/// `blocks.1.ffn.proj`, the MLP's down projection). The attention output is `mix.proj` and the MLP's down
/// projection `ffn.proj`: one short name for two roles, so that saved name lists need dotted suffixes.
fn toy_site(llama_name: &str) -> (String, Role) {
    if llama_name == "model.norm" {
        return ("norm_out".into(), Role::FinalNorm);
    }
    let rest = llama_name
        .strip_prefix("model.layers.")
        .expect("a layer's module");
    let (layer, module) = rest.split_once('.').expect("layer.module");
    let (name, role) = match module {
        "input_layernorm" => ("norm_a", Role::AttentionNorm),
        "self_attn.q_proj" => ("mix.wq", Role::Query),
        "self_attn.k_proj" => ("mix.wk", Role::Key),
        "self_attn.v_proj" => ("mix.wv", Role::Value),
        "self_attn.o_proj" => ("mix.proj", Role::AttentionOutput),
        "post_attention_layernorm" => ("norm_b", Role::MlpNorm),
        "mlp.gate_proj" => ("ffn.gate", Role::MlpGate),
        "mlp.up_proj" => ("ffn.lift", Role::MlpUp),
        "mlp.down_proj" => ("ffn.proj", Role::MlpDown),
        other => panic!("the tiny LLaMA has no module {other}"),
    };
    (format!("blocks.{layer}.{name}"), role)
}

/// The toy's name of a tensor of the tiny LLaMA.
fn toy_parameter(llama_name: &str) -> String {
    match llama_name {
        "model.embed_tokens.weight" => "embed.weight".into(),
        "lm_head.weight" => "head.weight".into(),
        other => {
            let (module, tensor) = other.rsplit_once('.').expect("module.tensor");
            format!("{}.{tensor}", toy_site(module).0)
        }
    }
}

/// A made-up architecture: the tiny LLaMA's weights and forward pass under its own names and declared roles.
fn toyformer(seed: u64) -> WithSpec {
    let inner = peft_models::tiny::llama(seed);
    let from = inner.spec();
    let mut spec = ModelSpec::new(
        "toyformer",
        from.num_layers,
        from.hidden_size,
        from.num_heads,
        from.num_kv_heads,
        from.vocab_size,
        from.max_positions,
    );
    spec.head_dim = from.head_dim;
    spec.num_parameters = from.num_parameters;
    spec.name_or_path = "toyformer-tiny".into();
    // The same sites in the same order (so the same ids), declared under the toy's names and roles.
    for site in &from.sites {
        let (name, role) = toy_site(&site.name);
        let id = spec.add_site(Site {
            name,
            role,
            ..site.clone()
        });
        assert_eq!(from.site(id).name, site.name);
    }
    WithSpec::new(Box::new(inner), spec).renaming(toy_parameter)
}

fn link() {
    peft_cli::link_methods();
    peft_ia3_example::register();
}

/// The method of `config` built on `model` with nothing but its defaults.
fn build(model: &dyn BaseModel, config: Value) -> Box<dyn Adapter> {
    link();
    let method: Box<dyn PeftMethod> = serde_json::from_value(config.clone()).unwrap();
    method
        .build(&mut init(model, 1))
        .unwrap_or_else(|e| panic!("{config}: {e}"))
}

/// The config the adapter saves, as JSON.
fn saved(adapter: &dyn Adapter) -> Value {
    serde_json::to_value(adapter.config()).unwrap()
}

/// The modules of the model whose sites play one of `roles`, in site order.
fn modules_with(model: &dyn BaseModel, roles: &[Role]) -> Vec<String> {
    model
        .spec()
        .sites
        .iter()
        .filter(|s| roles.contains(&s.role))
        .map(|s| s.name.clone())
        .collect()
}

/// The distinct modules whose tensors the adapter trains (`<prefix><module>.<what>`), in the adapter's order.
fn trained_modules(adapter: &dyn Adapter, model: &dyn BaseModel) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (key, _) in adapter.trainable() {
        let site = model
            .spec()
            .sites
            .iter()
            .find(|s| key.contains(&format!("{}.", s.name)))
            .unwrap_or_else(|| panic!("{key} names no site of the toy"));
        if !out.contains(&site.name) {
            out.push(site.name.clone());
        }
    }
    out
}

/// Trains the adapter a few steps and checks the method contract (the loss falls, every trainable tensor
/// moves and no frozen one does, save -> load keeps the logits).
fn keeps_the_contract(model: &dyn BaseModel, adapter: &dyn Adapter, what: &str) {
    let how = Conformance {
        steps: 12,
        ..Conformance::default()
    };
    let report = check_adapter(model, None, adapter, &rule_lm_task(), &how)
        .unwrap_or_else(|e| panic!("{what} on the toyformer: {e}"));
    assert_eq!(
        report.trainable_tensors,
        adapter.trainable().len(),
        "{what}"
    );
}

#[test]
fn the_toy_is_an_architecture_no_method_names() {
    let toy = toyformer(0);
    assert_eq!(toy.spec().architecture, "toyformer");
    assert!(toy.spec().sites.iter().all(|s| s.role != Role::Other));
    // Its forward pass is the tiny LLaMA's, so what differs below is the names and roles alone.
    let batch = Batch::single(&[3, 14, 15, 92], toy.device()).unwrap();
    let ours = toy.forward(&batch, &NoHooks).unwrap().hidden;
    let llama = toy.inner().forward(&batch, &NoHooks).unwrap().hidden;
    assert_eq!(
        peft_core::compare::max_abs_diff(&ours, &llama).unwrap(),
        0.0
    );
}

#[test]
fn lora_defaults_to_the_query_and_value_projections() {
    let toy = toyformer(1);
    let adapter = build(&toy, json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8}));
    assert_eq!(
        saved(adapter.as_ref())["target_modules"],
        json!(["wq", "wv"])
    );
    assert_eq!(
        trained_modules(adapter.as_ref(), &toy),
        modules_with(&toy, &[Role::Query, Role::Value])
    );
    assert_eq!(adapter.trainable().len(), 2 * 2 * 2);
    keeps_the_contract(&toy, adapter.as_ref(), "LoRA");
}

#[test]
fn bitfit_all_and_paper_presets_follow_the_roles() {
    let toy = toyformer(2);
    // "all": every linear site gets a (zero, added) bias, as the toy has none.
    let all = build(&toy, json!({"peft_type": "BITFIT"}));
    let linear = toy
        .spec()
        .sites
        .iter()
        .filter(|s| !s.role.is_norm())
        .count();
    assert_eq!(trained_modules(all.as_ref(), &toy).len(), linear);
    keeps_the_contract(&toy, all.as_ref(), "BitFit all");
    // "paper": the query and both widening projections of the gated MLP.
    let paper = build(&toy, json!({"peft_type": "BITFIT", "targets": "paper"}));
    assert_eq!(
        trained_modules(paper.as_ref(), &toy),
        modules_with(&toy, &[Role::Query, Role::MlpGate, Role::MlpUp])
    );
    assert_eq!(
        trained_modules(paper.as_ref(), &toy)[..3],
        ["blocks.0.mix.wq", "blocks.0.ffn.gate", "blocks.0.ffn.lift"]
    );
    // No fused query projection here, so no note about one.
    assert!(
        paper.notes().iter().all(|n| !n.contains("fuses")),
        "{:?}",
        paper.notes()
    );
    keeps_the_contract(&toy, paper.as_ref(), "BitFit paper");
}

#[test]
fn ia3_defaults_to_key_value_and_the_mlp_down_projection() {
    let toy = toyformer(3);
    let adapter = build(&toy, json!({"peft_type": "IA3"}));
    let config = saved(adapter.as_ref());
    // `proj` alone would also select the attention output `mix.proj`: the saved name says `ffn.proj`.
    assert_eq!(config["target_modules"], json!(["wk", "wv", "ffn.proj"]));
    assert_eq!(config["feedforward_modules"], json!(["ffn.proj"]));
    assert_eq!(
        trained_modules(adapter.as_ref(), &toy),
        modules_with(&toy, &[Role::Key, Role::Value, Role::MlpDown])
    );
    // A feed-forward vector scales the input (`[1, in]`), the others the output (`[out, 1]`).
    for (key, var) in adapter.trainable() {
        let site = toy
            .spec()
            .sites
            .iter()
            .find(|s| key.contains(&format!(".{}.", s.name)))
            .unwrap();
        let SiteKind::Linear {
            in_features,
            out_features,
            ..
        } = site.kind
        else {
            panic!("{key} is not a projection")
        };
        let expected = match site.role {
            Role::MlpDown => [1, in_features],
            _ => [out_features, 1],
        };
        assert_eq!(var.as_tensor().dims(), expected, "{key}");
    }
    keeps_the_contract(&toy, adapter.as_ref(), "IA3");
}

#[test]
fn prompt_and_prefix_tuning_build_and_train_on_the_toy() {
    let toy = toyformer(4);
    let batch = Batch::single(&[3, 14, 15, 92], toy.device()).unwrap();
    for (what, config) in [
        (
            "prompt tuning",
            json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}),
        ),
        (
            "prefix tuning",
            json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}),
        ),
    ] {
        let adapter = build(&toy, config);
        assert!(!adapter.trainable().is_empty(), "{what}");
        let hidden = toy.forward(&batch, adapter.as_ref()).unwrap().hidden;
        assert_eq!(hidden.dim(2).unwrap(), toy.spec().hidden_size, "{what}");
        keeps_the_contract(&toy, adapter.as_ref(), what);
    }
}
