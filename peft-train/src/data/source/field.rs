//! Where a value sits in a row of a data file: a column name or a 0-based column index.
//!
//! ```
//! use peft_train::data::Field;
//! assert_eq!(Field::from("sentence"), Field::Name("sentence".into()));
//! assert_eq!(Field::from(3).to_string(), "column 3");
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a value sits in a row: a column name (a header cell or a JSON key) or a 0-based column index.
///
/// In a config file an integer is an index and a string a name: `text = "sentence"`, `label = 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Field {
    /// 0-based column index (CSV / TSV, with or without a header; `lines`: 0 = label word, 1 = rest).
    Index(usize),
    /// Header cell (CSV / TSV with a header) or JSON key (JSONL); `line` = the whole line in `lines` files.
    Name(String),
}

impl From<&str> for Field {
    fn from(name: &str) -> Self {
        Field::Name(name.to_string())
    }
}

impl From<String> for Field {
    fn from(name: String) -> Self {
        Field::Name(name)
    }
}

impl From<usize> for Field {
    fn from(index: usize) -> Self {
        Field::Index(index)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Index(i) => write!(f, "column {i}"),
            Field::Name(n) => write!(f, "field `{n}`"),
        }
    }
}
