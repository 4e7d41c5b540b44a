//! Token-classification data: JSONL rows holding a list of words and a list of tags (the layout of HF datasets'
//! CoNLL-style sets: `{"tokens": ["EU", "rejects", ...], "ner_tags": ["B-ORG", "O", ...]}`), encoded over the
//! model's tokenizer with HF's `run_ner` alignment: the first sub-token of each word carries the word's label,
//! other sub-tokens and special tokens get -100.
//!
//! ```
//! use peft_train::data::tagged::{encode_tagged, parse_tagged};
//! use tokenizers::models::wordlevel::WordLevel;
//! use tokenizers::pre_tokenizers::whitespace::Whitespace;
//! use tokenizers::Tokenizer;
//! let vocab = ["[UNK]", "EU", "rejects"].iter().enumerate().map(|(i, w)| (w.to_string(), i as u32)).collect();
//! let mut tok = Tokenizer::new(WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().unwrap());
//! tok.with_pre_tokenizer(Some(Whitespace {}));
//! let rows = parse_tagged(r#"{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}"#, "tokens", "tags", "x").unwrap();
//! let labels = vec!["O".to_string(), "B-ORG".to_string()];
//! let ex = encode_tagged(&tok, &rows[0], &labels, 64, true, 0).unwrap();
//! assert_eq!((ex.input_ids, ex.labels), (vec![1, 2], vec![1, 0]));
//! ```

use serde_json::Value;
use tokenizers::{EncodeInput, InputSequence, Tokenizer};

use crate::task::TokenExample;
use peft_core::error::{PeftError, Result};

/// One row: words and their tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedRow {
    /// The words.
    pub words: Vec<String>,
    /// One tag per word (a label name, or a class index written as a number).
    pub tags: Vec<String>,
}

/// Parses JSONL `content` (from `source`, for messages) whose `words_key` holds a list of strings and
/// `tags_key` a list of strings or integers of the same length.
pub fn parse_tagged(
    content: &str,
    words_key: &str,
    tags_key: &str,
    source: &str,
) -> Result<Vec<TaggedRow>> {
    let mut rows = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| PeftError::Data(format!("{source} line {}: {what}", i + 1));
        let value: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON ({e})")))?;
        let list = |key: &str| -> Result<Vec<String>> {
            let items = value
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("no list under `{key}`")))?;
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(bad(format!(
                        "`{key}` holds {other}, not a string or number"
                    ))),
                })
                .collect()
        };
        let (words, tags) = (list(words_key)?, list(tags_key)?);
        if words.len() != tags.len() {
            return Err(bad(format!(
                "{} words but {} tags",
                words.len(),
                tags.len()
            )));
        }
        rows.push(TaggedRow { words, tags });
    }
    if rows.is_empty() {
        return Err(PeftError::Data(format!("no examples in {source}")));
    }
    Ok(rows)
}

/// Encodes `row` as pre-tokenized words (with the tokenizer's special tokens where `add_special_tokens`),
/// cut to `max_len` tokens; `labels` lists the class names in class order (a tag may also be a class index).
/// `row_index` is used in messages.
pub fn encode_tagged(
    tokenizer: &Tokenizer,
    row: &TaggedRow,
    labels: &[String],
    max_len: usize,
    add_special_tokens: bool,
    row_index: usize,
) -> Result<TokenExample> {
    let words: Vec<&str> = row.words.iter().map(String::as_str).collect();
    let input = EncodeInput::Single(InputSequence::from(words));
    let enc = tokenizer
        .encode(input, add_special_tokens)
        .map_err(|e| PeftError::Tokenizer(format!("example {row_index}: {e}")))?;
    let class_of = |tag: &str| -> Result<i64> {
        if let Some(c) = labels.iter().position(|l| l == tag) {
            return Ok(c as i64);
        }
        match tag.parse::<usize>() {
            Ok(c) if c < labels.len() => Ok(c as i64),
            _ => Err(PeftError::Data(format!(
                "example {row_index} has tag `{tag}`, which is not among the labels {labels:?}"
            ))),
        }
    };
    let mut previous = None;
    let mut out_labels = Vec::with_capacity(enc.len());
    for word in enc.get_word_ids() {
        let label = match word {
            Some(w) if Some(*w) != previous => class_of(&row.tags[*w as usize])?,
            _ => -100,
        };
        previous = *word;
        out_labels.push(label);
    }
    let mut input_ids = enc.get_ids().to_vec();
    input_ids.truncate(max_len);
    out_labels.truncate(max_len);
    Ok(TokenExample {
        input_ids,
        labels: out_labels,
    })
}
