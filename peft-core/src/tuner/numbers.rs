//! How HF PEFT writes float settings: a whole number as an integer (`"lora_alpha": 16`, not `16.0`), any
//! other value as a float. Use with `#[serde(serialize_with = "...")]` on an `f64` field or a map of them.
//!
//! ```
//! use std::collections::BTreeMap;
//! #[derive(serde::Serialize)]
//! struct Config {
//!     #[serde(serialize_with = "peft_core::tuner::numbers::whole_as_integer")]
//!     alpha: f64,
//!     #[serde(serialize_with = "peft_core::tuner::numbers::map_whole_as_integer")]
//!     alpha_pattern: BTreeMap<String, f64>,
//! }
//! let c = Config { alpha: 8.0, alpha_pattern: [("q_proj".to_string(), 0.5)].into() };
//! assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"alpha":8,"alpha_pattern":{"q_proj":0.5}}"#);
//! ```

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// Writes `value` as an integer when it is a whole number (within the range an `f64` holds exactly), else as
/// a float.
pub fn whole_as_integer<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        s.serialize_i64(*value as i64)
    } else {
        s.serialize_f64(*value)
    }
}

/// Writes each value of `map` as [`whole_as_integer`] does.
pub fn map_whole_as_integer<S: Serializer>(
    map: &BTreeMap<String, f64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    struct Number(f64);
    impl Serialize for Number {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            whole_as_integer(&self.0, s)
        }
    }
    let mut m = s.serialize_map(Some(map.len()))?;
    for (k, v) in map {
        m.serialize_entry(k, &Number(*v))?;
    }
    m.end()
}
