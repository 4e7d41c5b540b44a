//! One example as a data file holds it: text, optional second text, optional label, and the further values a
//! template places, before any template or tokenizer is applied.
//!
//! ```
//! use peft_train::data::RawExample;
//! let mut example = RawExample { text: "a gem".into(), label: Some("1".into()), line: 3, ..RawExample::default() };
//! example.extra.insert("question".into(), "cause".into());
//! assert_eq!(example.field("question"), Some("cause"));
//! assert_eq!(example.field_names(), ["text", "question"]);
//! assert_eq!(example.position(0), "example 0 (line 3)");
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One example as read from a file, before any template or tokenizer is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawExample {
    /// The main text.
    pub text: String,
    /// The second text of a pair task (RTE's hypothesis, say), when the source names one.
    pub text_pair: Option<String>,
    /// The label as a string (`"1"`, `"entailment"`; JSON `true` becomes `"true"`, `1` becomes `"1"`), when
    /// the source names a label field.
    pub label: Option<String>,
    /// The values of the source's `fields` table, by placeholder name (COPA's `choice1`, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
    /// The 1-based line of the file where the row starts, for messages; 0 when not known.
    #[serde(default)]
    pub line: usize,
}

impl RawExample {
    /// The value of placeholder `name`: `text`, `text_pair` (when present) or a name of `extra`.
    pub fn field(&self, name: &str) -> Option<&str> {
        match name {
            "text" => Some(&self.text),
            "text_pair" => self.text_pair.as_deref(),
            other => self.extra.get(other).map(String::as_str),
        }
    }

    /// The placeholder names this example has values for: `text`, `text_pair` (when present), then `extra`'s.
    pub fn field_names(&self) -> Vec<&str> {
        let mut names = vec!["text"];
        if self.text_pair.is_some() {
            names.push("text_pair");
        }
        names.extend(self.extra.keys().map(String::as_str));
        names
    }

    /// Where the example is, for messages: `example 3 (line 5)` (`row` is its 0-based index).
    pub fn position(&self, row: usize) -> String {
        if self.line > 0 {
            format!("example {row} (line {})", self.line)
        } else {
            format!("example {row}")
        }
    }
}
