//! Reading a method's config (`adapter_config.json`) with errors that say what is wrong: a missing or unknown
//! `peft_type` lists the methods this build knows; a value of the wrong type names its key.
//!
//! ```
//! use peft_core::method_config::{known_peft_types, method_from_json};
//! // A `peft_type` that no linked crate registers is refused with the known ones listed.
//! let err = method_from_json(r#"{"peft_type": "NOPE"}"#).unwrap_err();
//! assert!(err.contains("`peft_type` = \"NOPE\" is not a method this build knows"), "{err}");
//! assert!(err.contains("STACK"), "{err}"); // the one method of peft-core itself
//! let err = method_from_json(r#"{"r": 4}"#).unwrap_err();
//! assert!(err.contains("no `peft_type`"), "{err}");
//! let err = method_from_json("{ not json").unwrap_err();
//! assert!(err.starts_with("not valid JSON"), "{err}");
//! assert!(known_peft_types().iter().all(|t| t != "NOPE"));
//! ```

use serde_json::{Map, Value};

use crate::method::PeftMethod;

/// The key that names the method.
const TAG: &str = "peft_type";

/// The `peft_type` tags of every method linked into this build, sorted (empty when none is).
pub fn known_peft_types() -> Vec<String> {
    // The registry is not public; deserialising an unknown tag makes it list the known ones.
    let probe = serde_json::json!({ TAG: "\u{1}" });
    let message = match serde_json::from_value::<Box<dyn PeftMethod>>(probe) {
        Err(e) => e.to_string(),
        Ok(_) => return Vec::new(),
    };
    let Some((_, expected)) = message.split_once("expected") else {
        return Vec::new();
    };
    let mut tags: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    tags.sort();
    tags
}

/// A method config from JSON text; the error says what is wrong (see [`method_from_value`]).
pub fn method_from_json(text: &str) -> Result<Box<dyn PeftMethod>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    method_from_value(value)
}

/// A method config from a JSON value. The error names what is wrong: a value that is not an object, a
/// missing, non-string or unknown `peft_type` (with the known ones listed), or the keys whose values the
/// method cannot read (with serde's reason).
pub fn method_from_value(value: Value) -> Result<Box<dyn PeftMethod>, String> {
    let Value::Object(object) = &value else {
        return Err(format!(
            "a method config is a JSON object with a `{TAG}`, not {}",
            json_kind(&value)
        ));
    };
    let tag = match object.get(TAG) {
        None => {
            return Err(format!(
                "no `{TAG}`: it must name a method this build knows ({})",
                known_list()
            ))
        }
        Some(Value::String(tag)) => tag.clone(),
        Some(other) => {
            return Err(format!(
                "`{TAG}` must be a string naming a method this build knows ({}), not {}",
                known_list(),
                json_kind(other)
            ))
        }
    };
    if !known_peft_types().contains(&tag) {
        return Err(format!(
            "`{TAG}` = {tag:?} is not a method this build knows ({})",
            known_list()
        ));
    }
    let error = match serde_json::from_value::<Box<dyn PeftMethod>>(value.clone()) {
        Ok(method) => return Ok(method),
        Err(e) => e.to_string(),
    };
    let culprits = keys_at_fault(object, &tag);
    if culprits.is_empty() {
        return Err(format!("{TAG} {tag}: {error}"));
    }
    Err(culprits
        .iter()
        .map(|(key, why)| format!("`{key}`: {why}"))
        .collect::<Vec<_>>()
        .join("; "))
}

/// The keys of `object` (a config of method `tag` that does not deserialise) whose values are the fault, each
/// with serde's reason. A key is at fault when it alone, set into the method's default config, fails; where
/// the method has no default config (a required field), when leaving it out makes the config readable.
fn keys_at_fault(object: &Map<String, Value>, tag: &str) -> Vec<(String, String)> {
    let defaults = serde_json::from_value::<Box<dyn PeftMethod>>(serde_json::json!({ TAG: tag }))
        .ok()
        .and_then(|method| serde_json::to_value(&method).ok());
    let mut culprits = Vec::new();
    if let Some(Value::Object(defaults)) = defaults {
        for (key, value) in object.iter().filter(|(k, _)| k.as_str() != TAG) {
            let mut trial = defaults.clone();
            trial.insert(key.clone(), value.clone());
            if let Err(e) = serde_json::from_value::<Box<dyn PeftMethod>>(Value::Object(trial)) {
                culprits.push((key.clone(), e.to_string()));
            }
        }
    }
    if culprits.is_empty() {
        let original = serde_json::from_value::<Box<dyn PeftMethod>>(Value::Object(object.clone()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for key in object.keys().filter(|k| k.as_str() != TAG) {
            let mut trial = object.clone();
            trial.remove(key);
            if serde_json::from_value::<Box<dyn PeftMethod>>(Value::Object(trial)).is_ok() {
                culprits.push((key.clone(), original.clone()));
            }
        }
    }
    culprits
}

/// The known tags as a comma-separated list, or a note that none is linked.
fn known_list() -> String {
    let known = known_peft_types();
    if known.is_empty() {
        "none is linked into this build".to_string()
    } else {
        format!("known: {}", known.join(", "))
    }
}

/// What kind of JSON value `v` is, for messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::{Adapter, CommonConfig, InitCtx};
    use serde::{Deserialize, Serialize};

    /// A method whose fields all have defaults.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Defaulted {
        #[serde(flatten)]
        common: CommonConfig,
        #[serde(default)]
        r: usize,
        #[serde(default)]
        dropout: f64,
    }

    #[typetag::serde(name = "TEST_DEFAULTED")]
    impl PeftMethod for Defaulted {
        fn build(&self, _init: &mut InitCtx) -> crate::Result<Box<dyn Adapter>> {
            Err(crate::PeftError::Unsupported("test".into()))
        }
        fn common(&self) -> &CommonConfig {
            &self.common
        }
        fn common_mut(&mut self) -> &mut CommonConfig {
            &mut self.common
        }
    }

    /// A method with a required field.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Required {
        #[serde(flatten)]
        common: CommonConfig,
        size: usize,
        #[serde(default)]
        name: String,
    }

    #[typetag::serde(name = "TEST_REQUIRED")]
    impl PeftMethod for Required {
        fn build(&self, _init: &mut InitCtx) -> crate::Result<Box<dyn Adapter>> {
            Err(crate::PeftError::Unsupported("test".into()))
        }
        fn common(&self) -> &CommonConfig {
            &self.common
        }
        fn common_mut(&mut self) -> &mut CommonConfig {
            &mut self.common
        }
    }

    #[test]
    fn the_registry_lists_every_linked_method() {
        let known = known_peft_types();
        for tag in ["STACK", "TEST_DEFAULTED", "TEST_REQUIRED"] {
            assert!(known.iter().any(|k| k == tag), "{tag} not in {known:?}");
        }
        assert!(known.windows(2).all(|w| w[0] < w[1]), "{known:?}");
    }

    #[test]
    fn an_unknown_or_missing_type_lists_the_known_ones() {
        for text in [
            r#"{"peft_type": "LORAX", "r": 4}"#,
            r#"{"r": 4}"#,
            r#"{"peft_type": 7}"#,
        ] {
            let err = method_from_json(text).unwrap_err();
            assert!(
                err.contains("a method this build knows")
                    && err.contains("STACK")
                    && err.contains("TEST_DEFAULTED")
                    && err.contains("TEST_REQUIRED"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_and_not_the_type() {
        let err =
            method_from_json(r#"{"peft_type": "TEST_DEFAULTED", "r": "four", "dropout": 0.1}"#)
                .unwrap_err();
        assert!(err.starts_with("`r`: invalid type"), "{err}");
        assert!(!err.contains("dropout") && !err.contains("knows"), "{err}");
        // Without a default config, the key is found by leaving it out.
        let err = method_from_json(r#"{"peft_type": "TEST_REQUIRED", "size": 2, "name": 5}"#)
            .unwrap_err();
        assert!(err.starts_with("`name`: invalid type"), "{err}");
        // A missing required field is named by serde itself.
        let err = method_from_json(r#"{"peft_type": "TEST_REQUIRED"}"#).unwrap_err();
        assert!(err.contains("missing field `size`"), "{err}");
        assert!(!err.contains("knows"), "{err}");
    }

    #[test]
    fn a_good_config_reads() {
        let method = method_from_json(r#"{"peft_type": "TEST_DEFAULTED", "r": 4}"#).unwrap();
        assert_eq!(serde_json::to_value(&method).unwrap()["r"], 4);
    }
}
