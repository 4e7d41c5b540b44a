//! The prompt a classification example becomes, and the label words the LM is asked to produce after it.
//!
//! A [`Template`] such as `"{text} Sentiment:"` renders an example into a prompt; the answer is predicted at
//! the prompt's last token, so the next token the LM would produce is the label word of a [`Verbalizer`].
//!
//! ```
//! use peft_core::data::{Template, Verbalizer};
//! let template = Template::new("Premise: {text} Hypothesis: {text_pair} Answer:").unwrap();
//! assert_eq!(template.render("It rains.", "It is wet."), "Premise: It rains. Hypothesis: It is wet. Answer:");
//! let verbalizer = Verbalizer::new([("entailment", " yes"), ("not_entailment", " no")]).unwrap();
//! assert_eq!(verbalizer.index_of("not_entailment"), Some(1));
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokenizers::Tokenizer;

use crate::error::{PeftError, Result};

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Text,
    TextPair,
}

/// A prompt template: literal text with the placeholders `{text}` (required) and `{text_pair}` (optional);
/// `{{` and `}}` stand for literal braces. Serialises as its source string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `source`; an unknown placeholder, an unmatched brace or a missing `{text}` is an error.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let source = source.into();
        let bad = |what: String| PeftError::Config(format!("template {source:?}: {what}"));
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    let part = match name.as_str() {
                        "text" => Part::Text,
                        "text_pair" => Part::TextPair,
                        other => {
                            return Err(bad(format!(
                                "unknown placeholder {{{other}}}; known: {{text}}, {{text_pair}} (write {{{{ for a brace)"
                            )))
                        }
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                }
                '}' => return Err(bad("unmatched `}` (write }} for a literal brace)".into())),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.contains(&Part::Text) {
            return Err(bad(
                "no {text} placeholder; every prompt would be the same".into()
            ));
        }
        Ok(Template { source, parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template has a `{text_pair}` placeholder.
    pub fn uses_text_pair(&self) -> bool {
        self.parts.contains(&Part::TextPair)
    }

    /// The prompt for `text` and `text_pair` (ignored when the template has no `{text_pair}`).
    pub fn render(&self, text: &str, text_pair: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Text => out.push_str(text),
                Part::TextPair => out.push_str(text_pair),
            }
        }
        out
    }
}

impl TryFrom<String> for Template {
    type Error = PeftError;
    fn try_from(source: String) -> Result<Self> {
        Template::new(source)
    }
}

impl From<Template> for String {
    fn from(t: Template) -> String {
        t.source
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The ordered map from label values (as the reader gives them: `"0"`, `"entailment"`) to label words
/// (`" negative"`). Class `i` is the `i`-th entry.
///
/// In a config file it is a map in written order (`{ "0" = " negative", "1" = " positive" }` in TOML, which
/// peft-core reads with toml's `preserve_order`; JSON objects likewise) or a list of `[label, word]` pairs
/// (`[["0", " negative"], ["1", " positive"]]`). It serialises as a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verbalizer {
    entries: Vec<(String, String)>,
}

impl Verbalizer {
    /// A verbalizer from `(label value, label word)` pairs in class order. It must have at least two classes
    /// and no repeated label value.
    pub fn new<L: Into<String>, W: Into<String>>(
        pairs: impl IntoIterator<Item = (L, W)>,
    ) -> Result<Self> {
        let entries: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(l, w)| (l.into(), w.into()))
            .collect();
        if entries.len() < 2 {
            return Err(PeftError::Config(format!(
                "a verbalizer needs at least two label words, got {}",
                entries.len()
            )));
        }
        for (i, (label, _)) in entries.iter().enumerate() {
            if entries[..i].iter().any(|(l, _)| l == label) {
                return Err(PeftError::Config(format!(
                    "verbalizer: label {label:?} appears twice"
                )));
            }
        }
        Ok(Verbalizer { entries })
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a verbalizer has at least two classes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Label values in class order.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(l, _)| l.as_str())
    }

    /// Label words in class order.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(_, w)| w.as_str())
    }

    /// The class index of a label value.
    pub fn index_of(&self, label: &str) -> Option<usize> {
        self.entries.iter().position(|(l, _)| l == label)
    }

    /// The class index of the label of example `row`; an unknown value is an error naming the row, the value
    /// and the known labels.
    pub fn class_of(&self, label: &str, row: usize) -> Result<usize> {
        self.index_of(label).ok_or_else(|| {
            let known: Vec<String> = self.labels().map(|l| format!("{l:?}")).collect();
            PeftError::Data(format!(
                "example {row}: label {label:?} is not in the verbalizer; known labels: {}",
                known.join(", ")
            ))
        })
    }

    /// The token id the LM must produce for each class, in class order.
    ///
    /// The rule: a label word is written exactly as it follows the prompt, leading space included
    /// (`" positive"` after `"... Sentiment:"`), and its id is the first token that encoding
    /// `context + word` adds to encoding `context` alone, where `context` is the template rendered with empty
    /// fields (special tokens off). Encoding in context is what makes byte-level BPE (`Ġpositive`) and
    /// SentencePiece (`▁positive`) agree with what the model sees. Only that first token is scored.
    ///
    /// Errors: a word that adds no token, a word that fuses with the end of the prompt (its tokens would not
    /// start at the answer position: add a leading space), and two words sharing a first token.
    pub fn label_token_ids(&self, tokenizer: &Tokenizer, template: &Template) -> Result<Vec<u32>> {
        let tokenizer = &*untruncated(tokenizer)?;
        let context = template.render("", "");
        let context_ids = encode_plain(tokenizer, &context)?;
        let mut ids: Vec<u32> = Vec::with_capacity(self.len());
        for (i, (label, word)) in self.entries.iter().enumerate() {
            let full = encode_plain(tokenizer, &format!("{context}{word}"))?;
            if !full.starts_with(&context_ids) {
                return Err(PeftError::Data(format!(
                    "label word {word:?} (label {label:?}) merges with the end of the prompt {context:?} when \
                     tokenized, so it does not start a new token at the answer position; start it with a space \
                     or end the template with one"
                )));
            }
            let Some(&id) = full.get(context_ids.len()) else {
                return Err(PeftError::Data(format!(
                    "label word {word:?} (label {label:?}) encodes to no token"
                )));
            };
            if let Some(j) = ids.iter().position(|&other| other == id) {
                let (other_label, other_word) = &self.entries[j];
                let token = tokenizer.id_to_token(id).unwrap_or_default();
                return Err(PeftError::Data(format!(
                    "label words {other_word:?} (label {other_label:?}) and {word:?} (label {label:?}) both start \
                     with token {id} ({token:?}): the classes would be indistinguishable; pick words whose first \
                     tokens differ"
                )));
            }
            debug_assert_eq!(ids.len(), i);
            ids.push(id);
        }
        Ok(ids)
    }
}

/// `tokenizer` with its own truncation and padding switched off (a `tokenizer.json` may carry them): they
/// would cut the answer position or pad behind our back. Borrowed when there is nothing to switch off.
pub(crate) fn untruncated(tokenizer: &Tokenizer) -> Result<Cow<'_, Tokenizer>> {
    if tokenizer.get_truncation().is_none() && tokenizer.get_padding().is_none() {
        return Ok(Cow::Borrowed(tokenizer));
    }
    let mut plain = tokenizer.clone();
    plain
        .with_truncation(None)
        .map_err(|e| PeftError::Tokenizer(format!("switching truncation off: {e}")))?;
    plain.with_padding(None);
    Ok(Cow::Owned(plain))
}

/// Token ids of `text` without special tokens.
pub(crate) fn encode_plain(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| PeftError::Tokenizer(format!("encoding {text:?}: {e}")))?;
    Ok(encoding.get_ids().to_vec())
}

impl Serialize for Verbalizer {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (label, word) in &self.entries {
            map.serialize_entry(label, word)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Verbalizer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        // A custom visitor keeps the entries in written order, which fixes the class indices.
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Vec<(String, String)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a map from label values to label words, or a list of [label, word] pairs",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element::<(String, String)>()? {
                    entries.push(entry);
                }
                Ok(entries)
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, String>()? {
                    entries.push(entry);
                }
                Ok(entries)
            }
        }
        let entries = deserializer.deserialize_any(Ordered)?;
        Verbalizer::new(entries).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_placeholders_and_escapes() {
        let t = Template::new("{{json}}: {text}").unwrap();
        assert_eq!(t.render("x", ""), "{json}: x");
        assert!(!t.uses_text_pair());
        for bad in ["no text here", "{text} {label}", "{text} }", "{text_pair}"] {
            assert!(Template::new(bad).is_err(), "{bad:?} should be refused");
        }
        let err = Template::new("{text} {label}").unwrap_err().to_string();
        assert!(
            err.contains("{label}") && err.contains("{text_pair}"),
            "{err}"
        );
    }

    #[test]
    fn templates_and_verbalizers_round_trip_through_config_files_in_order() {
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        struct Cfg {
            template: Template,
            verbalizer: Verbalizer,
        }
        // Written order, not sorted order, fixes the class indices.
        let toml_text = "template = \"{text} Answer:\"\nverbalizer = [[\"not_entailment\", \" no\"], [\"entailment\", \" yes\"]]";
        let cfg: Cfg = toml::from_str(toml_text).unwrap();
        assert_eq!(
            cfg.verbalizer.labels().collect::<Vec<_>>(),
            ["not_entailment", "entailment"]
        );
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(
            json,
            r#"{"template":"{text} Answer:","verbalizer":{"not_entailment":" no","entailment":" yes"}}"#
        );
        assert_eq!(serde_json::from_str::<Cfg>(&json).unwrap(), cfg);
        assert!(serde_json::from_str::<Cfg>(r#"{"template":"{txt}","verbalizer":{}}"#).is_err());
        // peft-core turns on toml's `preserve_order`, so a TOML table keeps its written order too.
        let table: Cfg = toml::from_str(
            "template = \"{text}\"\nverbalizer = { \"b\" = \" x\", \"a\" = \" y\" }",
        )
        .unwrap();
        assert_eq!(table.verbalizer.labels().collect::<Vec<_>>(), ["b", "a"]);
    }

    #[test]
    fn verbalizers_refuse_repeats_and_name_unknown_labels() {
        assert!(Verbalizer::new([("0", " a"), ("0", " b")]).is_err());
        assert!(Verbalizer::new([("0", " a")]).is_err());
        let v = Verbalizer::new([("0", " negative"), ("1", " positive")]).unwrap();
        let err = v.class_of("2", 7).unwrap_err().to_string();
        assert!(
            err.contains("example 7") && err.contains("\"2\"") && err.contains("\"0\", \"1\""),
            "{err}"
        );
        assert_eq!(v.words().collect::<Vec<_>>(), [" negative", " positive"]);
    }
}
