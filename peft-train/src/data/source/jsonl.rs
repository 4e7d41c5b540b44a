//! The JSONL reader: one JSON object per line, fields named by key; strings, numbers and booleans become
//! strings (`true` -> `"true"`, `1` -> `"1"`).
//!
//! ```
//! use peft_train::data::DataSource;
//! let source = DataSource::new("cb.jsonl", "premise").with_label("label");
//! let rows = source.parse_str("{\"premise\": \"It rained.\", \"label\": 1}\n\n").unwrap();
//! assert_eq!(rows[0].text, "It rained.");
//! assert_eq!(rows[0].label.as_deref(), Some("1"));
//! ```

use peft_core::error::{PeftError, Result};

use super::{DataSource, Field};
use crate::data::RawExample;

/// Appends the examples of JSONL `content` to `out` (up to the source's `limit`, after its `skip`).
pub(super) fn parse(source: &DataSource, content: &str, out: &mut Vec<RawExample>) -> Result<()> {
    let columns = source.columns();
    if let Some(Field::Index(i)) = columns
        .iter()
        .copied()
        .flatten()
        .find(|f| matches!(f, Field::Index(_)))
    {
        return Err(PeftError::Data(format!(
            "{}: JSONL fields are named by key, not by column index ({i})",
            source.name()
        )));
    }
    let mut seen = 0;
    for (n, line) in content.lines().enumerate() {
        if source.full(out) {
            break;
        }
        if line.trim().is_empty() || source.skipped(&mut seen) {
            continue;
        }
        let at = || format!("{} line {}", source.name(), n + 1);
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| PeftError::Data(format!("{}: invalid JSON: {e}", at())))?;
        let object = value.as_object().ok_or_else(|| {
            PeftError::Data(format!("{}: expected a JSON object, found {value}", at()))
        })?;
        let mut values: Vec<Option<String>> = vec![None; columns.len()];
        for (slot, field) in values.iter_mut().zip(&columns) {
            let Some(Field::Name(key)) = field else {
                continue;
            };
            let v = object.get(key).ok_or_else(|| {
                let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                PeftError::Data(format!(
                    "{}: no field `{key}`; available: {}",
                    at(),
                    keys.join(", ")
                ))
            })?;
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(x) => x.to_string(),
                other => {
                    return Err(PeftError::Data(format!(
                        "{}: field `{key}` is {other}, not a string, number or boolean",
                        at()
                    )))
                }
            };
            *slot = Some(source.clean(&s));
        }
        out.push(source.example(values, n + 1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::data::testing::labels;
    use crate::data::DataSource;

    #[test]
    fn jsonl_values_become_label_strings() {
        let src = DataSource::new("x.jsonl", "premise")
            .with_text_pair("hypothesis")
            .with_label("label");
        let content = "{\"premise\": \"p\", \"hypothesis\": \"h\", \"label\": true}\n\n\
                       {\"premise\": \"q\", \"hypothesis\": \"i\", \"label\": 1}\n\
                       {\"premise\": \"r\", \"hypothesis\": \"j\", \"label\": \"neutral\"}\n";
        let rows = src.parse_str(content).unwrap();
        assert_eq!(labels(&rows), ["true", "1", "neutral"]);
        assert_eq!(rows[2].text_pair.as_deref(), Some("j"));
    }

    #[test]
    fn missing_keys_are_named_with_what_is_available() {
        let src = DataSource::new("cb.jsonl", "premise").with_label("labels");
        let err = src
            .parse_str("{\"premise\": \"p\", \"label\": \"x\"}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cb.jsonl line 1")
                && err.contains("`labels`")
                && err.contains("label, premise"),
            "{err}"
        );

        let src = DataSource::new("x.jsonl", 0);
        assert!(src
            .parse_str("{}\n")
            .unwrap_err()
            .to_string()
            .contains("named by key"));
    }

    #[test]
    fn fields_are_read_with_their_lines() {
        let jsonl = DataSource::new("copa.jsonl", "premise")
            .with_field("choice1", "choice1")
            .with_field("question", "question")
            .with_label("label");
        let rows = jsonl
            .parse_str(
                "\n{\"premise\": \"p\", \"choice1\": \"c\", \"question\": \"cause\", \"label\": 0}\n",
            )
            .unwrap();
        assert_eq!(rows[0].field("choice1"), Some("c"));
        assert_eq!(rows[0].field("question"), Some("cause"));
        assert_eq!(rows[0].field_names(), ["text", "choice1", "question"]);
        assert_eq!(rows[0].line, 2);
        let err = jsonl
            .parse_str("{\"premise\": \"p\", \"label\": 0, \"question\": \"q\"}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no field `choice1`"), "{err}");
    }
}
