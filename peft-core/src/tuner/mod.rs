//! What the module-wrapping methods share (LoRA, VeRA, LoHa / LoKr, IA3, or a third-party method built on this
//! crate alone), stated once in terms of sites and roles: the target fields of HF PEFT's tuner configs and
//! their JSON forms ([`selection`]), HF's name-matching rules ([`matching`]), target resolution with defaults by
//! role and per-module ranks ([`targets`]), the config checks HF makes ([`checks`]), HF's integer formatting of
//! whole floats ([`numbers`]), the branch dropout ([`dropout`]), trainable biases ([`bias`]), the merged state and its refusals ([`merged`]), where an adapter's layer for a site is ([`site_index`]) and the check of a
//! weights file's tensor set before loading it ([`file_tensors`]). A method keeps only what differs: its own
//! fields, keys and forward pass.
//!
//! ```
//! use peft_core::spec::{ModelSpec, Role, Site};
//! use peft_core::tuner::{select_linear, TargetFields, TargetModules, QUERY_VALUE_ROLES};
//! let mut spec = ModelSpec::new("llama", 1, 8, 2, 2, 10, 16);
//! for (name, role) in [("q_proj", Role::Query), ("k_proj", Role::Key), ("v_proj", Role::Value)] {
//!     spec.add_site(Site::linear(format!("model.layers.0.self_attn.{name}"), Some(0), 8, 8, false).with_role(role));
//! }
//! let targets: TargetModules = serde_json::from_str(r#"".*\\.(k|v)_proj""#).unwrap();
//! let fields = TargetFields { target_modules: Some(&targets), ..TargetFields::default() };
//! fields.check_layer_selection().unwrap();
//! let (chosen, _) = select_linear(&fields, &spec, QUERY_VALUE_ROLES, "MyMethod").unwrap();
//! let names: Vec<&str> = chosen.iter().map(|t| t.name.as_str()).collect();
//! assert_eq!(names, ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"]);
//! ```

pub mod bias;
pub mod checks;
pub mod dropout;
pub mod file_tensors;
pub mod matching;
pub mod merged;
pub mod numbers;
pub mod selection;
pub mod site_index;
pub mod targets;

pub use bias::{bias_key, trainable_biases, BiasScope, TrainableBias, MODULE_KEY_PREFIX};
pub use checks::{check_probability, check_rank, check_rank_pattern};
pub use dropout::Dropout;
pub use file_tensors::{check_file_tensors, ExpectedTensors};
pub use matching::{list_entry_matches, LayerFilter, ModuleMatcher, PatternMap};
pub use merged::{check_merge_targets, MergeFlag};
pub use selection::{LayerSelection, LayersPattern, TargetModules, ALL_LINEAR};
pub use site_index::SiteIndex;
pub use targets::{
    default_targets, describe_model, describe_roles, linear_module_names, saved_target_modules,
    select_linear, select_ranked, LinearTarget, RankFields, RankedTarget, TargetFields,
    QUERY_VALUE_ROLES,
};
