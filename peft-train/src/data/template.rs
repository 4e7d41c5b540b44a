//! The prompt a classification example becomes, and the label words the LM is asked to produce after it.
//!
//! A [`Template`] such as `"{text} Sentiment:"` renders an example into a prompt; the answer is predicted at
//! the prompt's last token, so the next token the LM would produce is the label word of a [`Verbalizer`].
//! Besides `{text}` and `{text_pair}`, a template may name any field the data source declares in its
//! `fields` table (`{premise}`, `{choice1}`).
//!
//! ```
//! use peft_train::data::{DataSource, Template, Verbalizer};
//! let template = Template::new("Premise: {text} Hypothesis: {text_pair} Answer:").unwrap();
//! assert_eq!(template.render("It rains.", "It is wet."), "Premise: It rains. Hypothesis: It is wet. Answer:");
//! let verbalizer = Verbalizer::new([("entailment", " yes"), ("not_entailment", " no")]).unwrap();
//! assert_eq!(verbalizer.index_of("not_entailment"), Some(1));
//!
//! // Any field of the data: COPA's two choices.
//! let copa = DataSource::new("val.jsonl", "premise").with_field("choice1", "choice1").with_field("choice2", "choice2");
//! let rows = copa.parse_str(r#"{"premise": "It rained.", "choice1": "Wet.", "choice2": "Dry."}"#).unwrap();
//! let template = Template::new("{text} 1: {choice1} 2: {choice2} Answer:").unwrap();
//! assert_eq!(template.render_example(&rows[0]).unwrap(), "It rained. 1: Wet. 2: Dry. Answer:");
//! assert!(template.check_placeholders(&["text", "choice1"]).is_err());
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokenizers::Tokenizer;

use super::raw_example::RawExample;
use peft_core::error::{PeftError, Result};

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Text,
    TextPair,
    /// A field the data source declares in its `fields` table.
    Field(String),
}

/// A prompt template: literal text with the placeholders `{text}` (required), `{text_pair}` (optional) and
/// `{name}` for any field the data source declares in `fields`; `{{` and `}}` stand for literal braces.
/// `{label}` is refused: the label is the answer, never part of the prompt. Serialises as its source string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Whether `name` can be a data field placeholder: letters, digits and `_`, and none of the names with a
/// meaning of their own (`text`, `text_pair`, `label`). The error says why not.
pub(crate) fn check_field_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?} is not a placeholder name (letters, digits and _ only)"
        ));
    }
    match name {
        "text" | "text_pair" => Err(format!(
            "`{name}` is set by the data source's own `{name}` key, not by `fields`"
        )),
        "label" => Err(
            "`label` is the answer, which a prompt must not contain; name the label with `label`"
                .into(),
        ),
        _ => Ok(()),
    }
}

impl Template {
    /// Parses `source`; a malformed or reserved placeholder (`{label}`), an unmatched brace or a missing
    /// `{text}` is an error. Whether the data provides each field placeholder is checked against the data
    /// ([`Template::check_placeholders`], or when an example is rendered).
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
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(bad(format!(
                            "`{{{name}` is never closed (write {{{{ for a literal brace)"
                        )));
                    }
                    let part = match name.as_str() {
                        "text" => Part::Text,
                        "text_pair" => Part::TextPair,
                        other => match check_field_name(other) {
                            Ok(()) => Part::Field(other.to_string()),
                            Err(why) => {
                                return Err(bad(format!(
                                    "unknown placeholder {{{other}}}: {why}; known: {{text}}, {{text_pair}} and \
                                     the names in the data source's `fields` (write {{{{ for a brace)"
                                )))
                            }
                        },
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

    /// Every placeholder name once, in order of first use: `text`, `text_pair` and the field names.
    pub fn placeholders(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for part in &self.parts {
            let name = match part {
                Part::Literal(_) => continue,
                Part::Text => "text",
                Part::TextPair => "text_pair",
                Part::Field(name) => name,
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// The field placeholders (those other than `{text}` and `{text_pair}`), once each, in order of first use.
    pub fn field_placeholders(&self) -> Vec<&str> {
        self.placeholders()
            .into_iter()
            .filter(|n| !matches!(*n, "text" | "text_pair"))
            .collect()
    }

    /// Checks that the data provides every placeholder: `known` lists the names it provides (`text`, and
    /// `text_pair` and field names where the data source names them; see `DataSource::placeholders`).
    /// The error names the first missing placeholder and the known ones.
    pub fn check_placeholders<S: AsRef<str>>(&self, known: &[S]) -> Result<()> {
        let known: Vec<&str> = known.iter().map(AsRef::as_ref).collect();
        match self.placeholders().into_iter().find(|p| !known.contains(p)) {
            Some(missing) => Err(self.missing(missing, &known)),
            None => Ok(()),
        }
    }

    /// The error for a placeholder the data does not provide.
    pub(crate) fn missing(&self, placeholder: &str, known: &[&str]) -> PeftError {
        PeftError::Data(self.missing_message(placeholder, known))
    }

    /// The message of [`Template::missing`], for callers that say where first.
    pub(crate) fn missing_message(&self, placeholder: &str, known: &[&str]) -> String {
        let known: Vec<String> = known.iter().map(|k| format!("{{{k}}}")).collect();
        let hint = if placeholder == "text_pair" {
            "name it with `text_pair` in the data source".to_string()
        } else {
            format!("declare it in the data source's `fields`, e.g. fields = {{ {placeholder} = \"<column>\" }}")
        };
        format!(
            "the template {:?} uses {{{placeholder}}}, which the data does not provide; known placeholders: {}; {hint}",
            self.source,
            known.join(", ")
        )
    }

    /// The prompt for `text` and `text_pair` (ignored when the template has no `{text_pair}`); field
    /// placeholders render as empty text (see [`Template::render_example`] for an example's fields).
    pub fn render(&self, text: &str, text_pair: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Text => out.push_str(text),
                Part::TextPair => out.push_str(text_pair),
                Part::Field(_) => {}
            }
        }
        out
    }

    /// The prompt for a read example, every placeholder filled from its fields; a placeholder the example
    /// lacks is an error naming it and the ones the example has.
    pub fn render_example(&self, example: &RawExample) -> Result<String> {
        self.render_with(|name| example.field(name))
            .map_err(|missing| self.missing(missing, &example.field_names()))
    }

    /// The prompt with each placeholder's value from `value(name)`; `Err(name)` for the first placeholder
    /// that has none.
    pub(crate) fn render_with<'s, 'v>(
        &'s self,
        value: impl Fn(&str) -> Option<&'v str>,
    ) -> std::result::Result<String, &'s str> {
        // Look every placeholder up once before rendering, so the error names the first missing one.
        let values: Vec<Option<&'v str>> = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Literal(_) => Ok(None),
                Part::Text => value("text").map(Some).ok_or("text"),
                Part::TextPair => value("text_pair").map(Some).ok_or("text_pair"),
                Part::Field(name) => value(name).map(Some).ok_or(name.as_str()),
            })
            .collect::<std::result::Result<_, _>>()?;
        let mut out = String::new();
        for (part, v) in self.parts.iter().zip(values) {
            match (part, v) {
                (Part::Literal(s), _) => out.push_str(s),
                (_, Some(v)) => out.push_str(v),
                (_, None) => {}
            }
        }
        Ok(out)
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
        self.class_at(label, &format!("example {row}"))
    }

    /// [`Verbalizer::class_of`] with the example's position as the message gives it (`example 3 (line 5)`).
    pub(crate) fn class_at(&self, label: &str, at: &str) -> Result<usize> {
        self.index_of(label).ok_or_else(|| {
            let known: Vec<String> = self.labels().map(|l| format!("{l:?}")).collect();
            PeftError::Data(format!(
                "{at}: label {label:?} is not in the verbalizer; known labels: {} (every label value of the \
                 data needs a label word)",
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

impl Verbalizer {
    /// Checks that every label word can be scored as it is written, for a task that scores the LM's
    /// prediction at the answer position ([`Verbalizer::label_token_ids`] takes each word's first token):
    /// a word of several tokens would be scored by its first alone (`" abbreviation"` as `" ab"`), and a word
    /// the tokenizer maps to its unknown token would train the model to say `<unk>`. Both are refused, naming
    /// the word and its tokens; a word that should stay (a class name in a head task, say) belongs in a
    /// `classification-head` task, which scores no word.
    pub fn check_scorable(&self, tokenizer: &Tokenizer, template: &Template) -> Result<()> {
        let tokenizer = &*untruncated(tokenizer)?;
        let context_ids = encode_plain(tokenizer, &template.render("", ""))?;
        let unknown = unknown_token_ids(tokenizer);
        for (label, word) in &self.entries {
            let full = encode_plain(tokenizer, &format!("{}{word}", template.render("", "")))?;
            let added = full.get(context_ids.len()..).unwrap_or_default();
            let tokens: Vec<String> = added
                .iter()
                .map(|&id| tokenizer.id_to_token(id).unwrap_or_else(|| id.to_string()))
                .collect();
            if let Some(&id) = added.iter().find(|id| unknown.contains(id)) {
                return Err(PeftError::Data(format!(
                    "label word {word:?} (label {label:?}) is unknown to the model's tokenizer: it encodes to \
                     {tokens:?}, with the unknown token {id}; the model would learn to predict `<unk>`. Pick a word \
                     its vocabulary holds"
                )));
            }
            if added.len() > 1 {
                return Err(PeftError::Data(format!(
                    "label word {word:?} (label {label:?}) is {} tokens for this model ({tokens:?}), and a \
                     verbalizer scores one token at the answer position, so only {:?} would be scored; pick a \
                     word that is one token for this model, or use a `classification-head` task",
                    added.len(),
                    tokens[0]
                )));
            }
        }
        Ok(())
    }
}

/// The ids of the tokenizer's unknown token: its model's `unk_token` and the usual spellings where the
/// vocabulary holds them.
fn unknown_token_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    let declared = serde_json::to_value(tokenizer.get_model())
        .ok()
        .and_then(|model| model.get("unk_token")?.as_str().map(str::to_string));
    declared
        .into_iter()
        .chain(["<unk>", "[UNK]", "<|unk|>"].map(String::from))
        .filter_map(|token| tokenizer.token_to_id(&token))
        .collect()
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
    fn field_placeholders_are_named_checked_and_rendered() {
        let t = Template::new("{text} 1: {choice1} 2: {choice2} ({choice1}) {{x}}").unwrap();
        assert_eq!(t.placeholders(), ["text", "choice1", "choice2"]);
        assert_eq!(t.field_placeholders(), ["choice1", "choice2"]);
        // `render` fills text and text_pair only: the rest render empty (the template's own context).
        assert_eq!(t.render("P", "unused"), "P 1:  2:  () {x}");
        let mut row = RawExample {
            text: "P".into(),
            ..RawExample::default()
        };
        row.extra.insert("choice1".into(), "A".into());
        let err = t.render_example(&row).unwrap_err().to_string();
        assert!(
            err.contains("{choice2}") && err.contains("known placeholders: {text}, {choice1}"),
            "{err}"
        );
        row.extra.insert("choice2".into(), "B".into());
        assert_eq!(t.render_example(&row).unwrap(), "P 1: A 2: B (A) {x}");
        assert!(t
            .check_placeholders(&["text", "choice1", "choice2"])
            .is_ok());
        let err = t
            .check_placeholders(&["text", "choice2"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("{choice1}")
                && err.contains("{text}, {choice2}")
                && err.contains("fields"),
            "{err}"
        );
        for bad in [
            "{text} {choice 1}",
            "{text} {}",
            "{text} {word",
            "{text} {text-pair}",
        ] {
            assert!(Template::new(bad).is_err(), "{bad:?} should be refused");
        }
        let unclosed = Template::new("{text} {word").unwrap_err().to_string();
        assert!(unclosed.contains("never closed"), "{unclosed}");
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
