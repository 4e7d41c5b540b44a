//! Turning raw examples into token ids with the tokenizer the caller passes in: classification prompts
//! ([`ClassEncoder`]), plain-text corpora cut into blocks ([`chunk_text`]) and prompt/completion pairs
//! ([`encode_prompt_completion`]).
//!
//! Lengths: `max_len` is what the model can take for the real tokens, i.e. its context minus the virtual
//! tokens a prompt method prepends. A classification prompt that is too long loses the end of its text fields,
//! never the template's tail, so the answer position (the last token) always survives.
//!
//! ```
//! use peft_train::data::{chunk_text, encode_prompt_completion, ClassEncoder, Template, Verbalizer, IGNORE_INDEX};
//! use tokenizers::models::wordlevel::WordLevel;
//! use tokenizers::pre_tokenizers::whitespace::Whitespace;
//! use tokenizers::Tokenizer;
//!
//! let words = ["[UNK]", "long", "text", "Sentiment", ":", "no", "yes"];
//! let vocab = words.iter().enumerate().map(|(i, w)| (w.to_string(), i as u32)).collect();
//! let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().unwrap();
//! let mut tokenizer = Tokenizer::new(model);
//! tokenizer.with_pre_tokenizer(Some(Whitespace {}));
//!
//! // max_len 4: the text is cut to two tokens, the template's tail "Sentiment :" stays.
//! let template = Template::new("{text} Sentiment:").unwrap();
//! let verbalizer = Verbalizer::new([("0", " no"), ("1", " yes")]).unwrap();
//! let encoder = ClassEncoder::new(&tokenizer, template, verbalizer, 4, false).unwrap();
//! assert_eq!(encoder.encode_prompt("long long text", None, 0).unwrap(), [1, 1, 3, 4]);
//!
//! // Causal LM: blocks of a corpus, and a completion that alone takes the loss.
//! let blocks = chunk_text(&tokenizer, "long text long text long", 2, false).unwrap();
//! assert_eq!(blocks.len(), 2);
//! let ex = encode_prompt_completion(&tokenizer, "long text :", " yes", 8, false).unwrap();
//! assert_eq!(ex.labels, [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6]);
//! ```

use std::borrow::Cow;

use tokenizers::{Encoding, Tokenizer};

use super::raw_example::RawExample;
use super::source::DataSource;
use super::template::{encode_plain, untruncated, Template, Verbalizer};
pub use crate::task::{ClassExample, LmExample};
use peft_core::error::{PeftError, Result};

/// Label value of a position that takes no loss (the Hugging Face convention).
pub const IGNORE_INDEX: i64 = -100;

/// Encodes classification examples as prompts that end at the answer position.
///
/// Special tokens: with `add_special_tokens` the tokenizer's post-processor runs (a BOS in front, say), but
/// any special token it appends after the prompt (an EOS or `[SEP]`) is dropped, since the label word must
/// directly follow the prompt's last token. The tokenizer's own truncation and padding settings, if its
/// `tokenizer.json` has any, are switched off: lengths are this encoder's business.
#[derive(Debug, Clone)]
pub struct ClassEncoder<'t> {
    tokenizer: Cow<'t, Tokenizer>,
    template: Template,
    verbalizer: Verbalizer,
    label_token_ids: Vec<u32>,
    max_len: usize,
    add_special_tokens: bool,
    keep_trailing_special: bool,
    pair_encoding: bool,
}

impl<'t> ClassEncoder<'t> {
    /// An encoder for prompts of at most `max_len` tokens. Resolves the label words to token ids (see
    /// [`Verbalizer::label_token_ids`]) and checks that the template alone fits in `max_len`.
    pub fn new(
        tokenizer: &'t Tokenizer,
        template: Template,
        verbalizer: Verbalizer,
        max_len: usize,
        add_special_tokens: bool,
    ) -> Result<Self> {
        let tokenizer = untruncated(tokenizer)?;
        let label_token_ids = verbalizer.label_token_ids(&tokenizer, &template)?;
        let encoder = ClassEncoder {
            tokenizer,
            template,
            verbalizer,
            label_token_ids,
            max_len,
            add_special_tokens,
            keep_trailing_special: false,
            pair_encoding: false,
        };
        let template_len = encoder.encode_str(&encoder.template.render("", ""))?.len();
        if template_len > max_len {
            return Err(encoder.template_too_long(template_len));
        }
        Ok(encoder)
    }

    /// Keeps the special tokens the post-processor appends (BERT's final `[SEP]`): for a head that reads a
    /// pooled state, not a label word after the prompt.
    pub fn keeping_trailing_special_tokens(mut self) -> Self {
        self.keep_trailing_special = true;
        self
    }

    /// Encodes a `text_pair` that the template does not place as the tokenizer's second segment, as
    /// `tokenizer(text, text_pair)` does in transformers (BERT: `[CLS] text [SEP] pair [SEP]` with token types 0
    /// and 1): the template renders the first segment.
    pub fn with_pair_encoding(mut self) -> Self {
        self.pair_encoding = true;
        self
    }

    /// The token id scored for each class, in class order.
    pub fn label_token_ids(&self) -> &[u32] {
        &self.label_token_ids
    }

    /// The template.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The verbalizer.
    pub fn verbalizer(&self) -> &Verbalizer {
        &self.verbalizer
    }

    /// The longest prompt this encoder produces.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Encodes example `row` (its index, for error messages); it must have a label the verbalizer knows, and
    /// a value for every placeholder of the template. Errors name the example's index and, when known, its
    /// line in the file ([`RawExample::line`]).
    pub fn encode(&self, example: &RawExample, row: usize) -> Result<ClassExample> {
        let at = example.position(row);
        let label = example.label.as_deref().ok_or_else(|| {
            PeftError::Data(format!(
                "{at} has no label; name the label field in the data source"
            ))
        })?;
        let label = self.verbalizer.class_at(label, &at)?;
        let (input_ids, token_type_ids) = self.encode_example_prompt(example, row)?;
        Ok(ClassExample {
            input_ids,
            label,
            token_type_ids,
        })
    }

    /// Encodes every example, stopping at the first error.
    pub fn encode_all(&self, examples: &[RawExample]) -> Result<Vec<ClassExample>> {
        examples
            .iter()
            .enumerate()
            .map(|(row, e)| self.encode(e, row))
            .collect()
    }

    /// Reads `source` and encodes every example; an error names the file besides the example and its line
    /// (`train.tsv: example 4 (line 6): label "2" is not in the verbalizer; known labels: "0", "1" ...`).
    /// The template's placeholders are checked against the source before the file is read.
    pub fn encode_source(&self, source: &DataSource) -> Result<Vec<ClassExample>> {
        source.check_template(&self.template)?;
        self.encode_all(&source.read()?).map_err(|e| match e {
            PeftError::Data(msg) => PeftError::Data(format!("{}: {msg}", source.name())),
            other => other,
        })
    }

    /// The prompt ids of one (possibly unlabelled) example: at most `max_len` tokens, the last of which is
    /// the answer position. Fields are cut from their end, the longer field first, until the prompt fits.
    /// A template with field placeholders needs [`ClassEncoder::encode_example_prompt`].
    pub fn encode_prompt(
        &self,
        text: &str,
        text_pair: Option<&str>,
        row: usize,
    ) -> Result<Vec<u32>> {
        Ok(self.encode_prompt_with_types(text, text_pair, row)?.0)
    }

    /// [`ClassEncoder::encode_prompt`] with the segment ids: empty unless the pair is encoded as two segments
    /// ([`ClassEncoder::with_pair_encoding`]).
    pub fn encode_prompt_with_types(
        &self,
        text: &str,
        text_pair: Option<&str>,
        row: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let example = RawExample {
            text: text.to_string(),
            text_pair: text_pair.map(str::to_string),
            ..RawExample::default()
        };
        self.encode_example_prompt(&example, row)
    }

    /// The prompt ids and segment ids of one (possibly unlabelled) example, every placeholder filled from its
    /// fields (`text`, `text_pair`, `extra`): at most `max_len` tokens, the last of which is the answer
    /// position. Fields are cut from their end, the longest first, until the prompt fits.
    ///
    /// Errors: a placeholder the example has no value for, and a `text_pair` or `extra` field that the
    /// template does not place (it would be silently ignored), except a pair encoded as the second segment.
    pub fn encode_example_prompt(
        &self,
        example: &RawExample,
        row: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let at = || example.position(row);
        let template = &self.template;
        let as_segments =
            self.pair_encoding && !template.uses_text_pair() && example.text_pair.is_some();
        match (template.uses_text_pair(), &example.text_pair) {
            (true, None) => {
                return Err(PeftError::Data(format!(
                    "{} has no text_pair but the template {:?} uses {{text_pair}}; name the text_pair field \
                     in the data source",
                    at(),
                    template.as_str()
                )))
            }
            (false, Some(_)) if !as_segments => {
                return Err(PeftError::Data(format!(
                    "{} has a text_pair but the template {:?} has no {{text_pair}}; add it to the template or \
                     drop text_pair from the data source",
                    at(),
                    template.as_str()
                )))
            }
            _ => {}
        }
        let used = template.field_placeholders();
        if let Some(missing) = used.iter().find(|f| !example.extra.contains_key(**f)) {
            let msg = template.missing_message(missing, &example.field_names());
            return Err(PeftError::Data(format!("{}: {msg}", at())));
        }
        if let Some(unused) = example.extra.keys().find(|k| !used.contains(&k.as_str())) {
            return Err(PeftError::Data(format!(
                "{} has the field {{{unused}}} but the template {:?} does not place it; add it to the template \
                 or drop it from the data source's `fields`",
                at(),
                template.as_str()
            )));
        }
        // The values that can be cut, by placeholder name: text, the pair when it goes in, the used fields.
        let mut values: Vec<(&str, String)> = vec![("text", example.text.clone())];
        if let Some(pair) = example.text_pair.as_ref() {
            values.push(("text_pair", pair.clone()));
        }
        values.extend(used.iter().map(|&n| (n, example.extra[n].clone())));
        loop {
            let value = |name: &str| {
                values
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.as_str())
            };
            let prompt = template
                .render_with(value)
                .map_err(|missing| template.missing(missing, &example.field_names()))?;
            let (ids, types) = if as_segments {
                self.encode_segments(&prompt, value("text_pair").unwrap_or_default())?
            } else {
                (self.encode_str(&prompt)?, Vec::new())
            };
            if ids.len() <= self.max_len {
                return Ok((ids, types));
            }
            let over = ids.len() - self.max_len;
            let lens = values
                .iter()
                .map(|(_, v)| Ok(encode_plain(&self.tokenizer, v)?.len()))
                .collect::<Result<Vec<usize>>>()?;
            if lens.iter().sum::<usize>() == 0 {
                // Nothing left to cut (fields that encode to no token, e.g. only spaces).
                return Err(self.template_too_long(ids.len()));
            }
            let keep = longest_first(&lens, over);
            for ((_, value), (&len, &keep)) in values.iter_mut().zip(lens.iter().zip(&keep)) {
                if keep < len {
                    *value = cut_to_tokens(&self.tokenizer, value, keep)?;
                }
            }
        }
    }

    fn template_too_long(&self, len: usize) -> PeftError {
        PeftError::Data(format!(
            "the template {:?} alone encodes to {len} tokens (special tokens included), more than max_len = {}; \
             shorten the template or give the model more context (max_len = context - virtual tokens)",
            self.template.as_str(),
            self.max_len
        ))
    }

    /// Ids and segment ids of two segments encoded as a pair.
    fn encode_segments(&self, first: &str, second: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = self
            .tokenizer
            .encode((first, second), self.add_special_tokens)
            .map_err(|e| PeftError::Tokenizer(format!("encoding a text pair: {e}")))?;
        let end = if self.keep_trailing_special {
            enc.len()
        } else {
            let special = enc.get_special_tokens_mask();
            special.iter().rposition(|&s| s == 0).map_or(0, |i| i + 1)
        };
        Ok((
            enc.get_ids()[..end].to_vec(),
            enc.get_type_ids()[..end].to_vec(),
        ))
    }

    /// Ids of a rendered prompt, without the special tokens the post-processor appends after it.
    fn encode_str(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = encode(&self.tokenizer, prompt, self.add_special_tokens)?;
        if self.keep_trailing_special {
            return Ok(enc.get_ids().to_vec());
        }
        let special = enc.get_special_tokens_mask();
        let end = special.iter().rposition(|&s| s == 0).map_or(0, |i| i + 1);
        Ok(enc.get_ids()[..end].to_vec())
    }
}

/// How many tokens each field keeps when `over` tokens must go, taken from the longest first: the longest
/// field is brought down to the next one, then both down to the third, and so on; a remainder that does not
/// split evenly is taken from the fields that were longer to begin with (the earlier one on a tie).
fn longest_first(lens: &[usize], over: usize) -> Vec<usize> {
    let mut keep = lens.to_vec();
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lens[i]), i));
    let mut left = over;
    // `order[..top]` are the fields at the current (highest) length.
    let mut top = 1;
    while left > 0 && !order.is_empty() {
        let level = keep[order[0]];
        if level == 0 {
            break;
        }
        while top < order.len() && keep[order[top]] == level {
            top += 1;
        }
        let next = order.get(top).map_or(0, |&i| keep[i]);
        let step = level - next;
        if left >= step * top {
            for &i in &order[..top] {
                keep[i] = next;
            }
            left -= step * top;
        } else {
            let (each, extra) = (left / top, left % top);
            for (j, &i) in order[..top].iter().enumerate() {
                keep[i] -= each + usize::from(j < extra);
            }
            left = 0;
        }
    }
    keep
}

/// The prefix of `text` made of its first `keep` tokens, always strictly shorter than `text` when `keep` is
/// less than its token count, so that the truncation loop terminates.
fn cut_to_tokens(tokenizer: &Tokenizer, text: &str, keep: usize) -> Result<String> {
    if keep == 0 {
        return Ok(String::new());
    }
    let enc = encode(tokenizer, text, false)?;
    let mut end = enc
        .get_offsets()
        .get(keep - 1)
        .map_or(text.len(), |o| o.1)
        .min(text.len());
    // Byte-level tokens can end inside a multi-byte character.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end >= text.len() {
        end = text.char_indices().next_back().map_or(0, |(i, _)| i);
    }
    Ok(text[..end].to_string())
}

fn encode(tokenizer: &Tokenizer, text: &str, add_special_tokens: bool) -> Result<Encoding> {
    tokenizer.encode(text, add_special_tokens).map_err(|e| {
        let shown: String = text.chars().take(60).collect();
        PeftError::Tokenizer(format!("encoding {shown:?}...: {e}"))
    })
}

/// Cuts the token stream of a plain-text corpus into blocks of `block_size` tokens with labels equal to the
/// ids (not shifted: the loss shifts them, as Hugging Face does). The last partial block is dropped, as in
/// HF's `run_clm`; a text shorter than one block is an error. With `add_special_tokens` the tokenizer's
/// special tokens wrap the whole text once (not every block). The tokenizer's own truncation and padding,
/// if any, are switched off.
pub fn chunk_text(
    tokenizer: &Tokenizer,
    text: &str,
    block_size: usize,
    add_special_tokens: bool,
) -> Result<Vec<LmExample>> {
    if block_size < 2 {
        return Err(PeftError::Config(format!(
            "block_size must be at least 2 to predict a token, got {block_size}"
        )));
    }
    let tokenizer = &*untruncated(tokenizer)?;
    let ids = encode(tokenizer, text, add_special_tokens)?
        .get_ids()
        .to_vec();
    if ids.len() < block_size {
        return Err(PeftError::Data(format!(
            "the text encodes to {} tokens, fewer than one block of {block_size}; lower block_size or add text",
            ids.len()
        )));
    }
    Ok(ids
        .chunks_exact(block_size)
        .map(|block| LmExample {
            input_ids: block.to_vec(),
            labels: block.iter().map(|&i| i64::from(i)).collect(),
        })
        .collect())
}

/// Encodes `prompt + completion` (concatenated as given: put any separating space in one of them) with loss
/// on the completion only: tokens before the first token that starts inside the completion get
/// [`IGNORE_INDEX`] (a token straddling the boundary counts as prompt), the rest, special tokens appended
/// after the completion included (an EOS teaches the model to stop), are their own label.
///
/// Longer than `max_len`: the prompt loses tokens from its start (after any leading special tokens), then,
/// if the completion alone is still too long, the completion loses its end.
/// The tokenizer's own truncation and padding, if any, are switched off.
pub fn encode_prompt_completion(
    tokenizer: &Tokenizer,
    prompt: &str,
    completion: &str,
    max_len: usize,
    add_special_tokens: bool,
) -> Result<LmExample> {
    let tokenizer = &*untruncated(tokenizer)?;
    let enc = encode(
        tokenizer,
        &format!("{prompt}{completion}"),
        add_special_tokens,
    )?;
    let (ids, offsets, special) = (
        enc.get_ids(),
        enc.get_offsets(),
        enc.get_special_tokens_mask(),
    );
    let first = (0..ids.len())
        .find(|&i| special[i] == 0 && offsets[i].0 >= prompt.len())
        .ok_or_else(|| {
            PeftError::Data(format!(
                "the completion {completion:?} adds no token of its own after the prompt"
            ))
        })?;
    let lead = special.iter().take_while(|&&s| s == 1).count().min(first);
    if max_len <= lead {
        return Err(PeftError::Data(format!(
            "max_len = {max_len} leaves no room after the {lead} leading special token(s)"
        )));
    }
    let mut input_ids = ids.to_vec();
    let mut labels: Vec<i64> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            if i < first {
                IGNORE_INDEX
            } else {
                i64::from(id)
            }
        })
        .collect();
    if input_ids.len() > max_len {
        let drop = (input_ids.len() - max_len).min(first - lead);
        input_ids.drain(lead..lead + drop);
        labels.drain(lead..lead + drop);
        input_ids.truncate(max_len);
        labels.truncate(max_len);
    }
    Ok(LmExample { input_ids, labels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testing::{byte_bpe, byte_bpe_with_bos, ids_of};

    fn sst2_encoder(tok: &Tokenizer, max_len: usize) -> Result<ClassEncoder<'_>> {
        ClassEncoder::new(
            tok,
            Template::new("{text} Sentiment:")?,
            Verbalizer::new([("0", " negative"), ("1", " positive")])?,
            max_len,
            false,
        )
    }

    #[test]
    fn longest_first_splits_the_overflow() {
        assert_eq!(longest_first(&[10, 4], 3), [7, 4]);
        assert_eq!(longest_first(&[10, 4], 8), [3, 3]);
        assert_eq!(longest_first(&[4, 10], 9), [3, 2]);
        assert_eq!(longest_first(&[3, 0], 5), [0, 0]);
        // Three fields: the longest comes down to the second, then both to the third, then all three.
        assert_eq!(longest_first(&[9, 5, 3], 4), [5, 5, 3]);
        assert_eq!(longest_first(&[9, 5, 3], 9), [2, 3, 3]);
        assert_eq!(longest_first(&[2, 9, 5], 100), [0, 0, 0]);
        assert_eq!(longest_first(&[], 3), Vec::<usize>::new());
    }

    #[test]
    fn label_words_map_to_their_first_token_in_context() {
        let tok = byte_bpe();
        let enc = sst2_encoder(&tok, 64).unwrap();
        assert_eq!(
            enc.label_token_ids(),
            &ids_of(&tok, &["Ġnegative", "Ġpositive"])[..]
        );
    }

    #[test]
    fn a_prompt_that_fits_is_encoded_whole() {
        let tok = byte_bpe();
        let enc = sst2_encoder(&tok, 64).unwrap();
        let raw = RawExample {
            text: "great fun".into(),
            text_pair: None,
            label: Some("1".into()),
            ..RawExample::default()
        };
        let ex = enc.encode(&raw, 0).unwrap();
        assert_eq!(ex.label, 1);
        assert_eq!(
            ex.input_ids,
            encode_plain(&tok, "great fun Sentiment:").unwrap()
        );
    }

    #[test]
    fn truncation_keeps_the_template_tail_and_the_answer_position() {
        let tok = byte_bpe();
        let tail = encode_plain(&tok, " Sentiment:").unwrap();
        let enc = sst2_encoder(&tok, tail.len() + 5).unwrap();
        let long = "great fun great fun great fun great fun great fun great fun";
        let raw = RawExample {
            text: long.into(),
            text_pair: None,
            label: Some("0".into()),
            ..RawExample::default()
        };
        let ex = enc.encode(&raw, 3).unwrap();
        assert!(ex.input_ids.len() <= tail.len() + 5);
        assert!(
            ex.input_ids.ends_with(&tail),
            "{:?} lost the template tail {tail:?}",
            ex.input_ids
        );
        // The kept text is the start of the original one.
        let kept = tok
            .decode(&ex.input_ids[..ex.input_ids.len() - tail.len()], false)
            .unwrap();
        assert!(long.starts_with(&kept) && !kept.is_empty(), "kept {kept:?}");
    }

    #[test]
    fn truncation_takes_from_the_longer_of_two_fields() {
        let tok = byte_bpe();
        let template = Template::new("{text} Question: {text_pair} Answer:").unwrap();
        let verbalizer =
            Verbalizer::new([("entailment", " positive"), ("not_entailment", " negative")])
                .unwrap();
        let empty = encode_plain(&tok, &template.render("", "")).unwrap().len();
        let enc = ClassEncoder::new(&tok, template, verbalizer, empty + 12, false).unwrap();
        let raw = RawExample {
            text: "great fun ".repeat(20),
            text_pair: Some("fun".into()),
            label: Some("not_entailment".into()),
            ..RawExample::default()
        };
        let ex = enc.encode(&raw, 0).unwrap();
        assert!(ex.input_ids.len() <= empty + 12);
        let prompt = tok.decode(&ex.input_ids, false).unwrap();
        assert!(prompt.ends_with(" Question: fun Answer:"), "{prompt:?}");
    }

    #[test]
    fn a_template_longer_than_max_len_is_an_error() {
        let tok = byte_bpe();
        let err = sst2_encoder(&tok, 1).unwrap_err().to_string();
        assert!(
            err.contains("max_len = 1") && err.contains("Sentiment:"),
            "{err}"
        );
    }

    #[test]
    fn a_label_outside_the_verbalizer_is_an_error() {
        let tok = byte_bpe();
        let enc = sst2_encoder(&tok, 64).unwrap();
        let raw = RawExample {
            text: "fun".into(),
            text_pair: None,
            label: Some("2".into()),
            ..RawExample::default()
        };
        let err = enc
            .encode_all(&[
                RawExample {
                    label: Some("1".into()),
                    ..raw.clone()
                },
                raw,
            ])
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("example 1") && msg.contains("\"2\"") && msg.contains("\"0\", \"1\""),
            "{msg}"
        );
    }

    #[test]
    fn field_placeholders_are_encoded_and_cut_longest_first() {
        let tok = byte_bpe();
        let template = Template::new("{text} Question: {choice1} or {choice2} Answer:").unwrap();
        let verbalizer = Verbalizer::new([("0", " positive"), ("1", " negative")]).unwrap();
        let empty = encode_plain(&tok, &template.render("", "")).unwrap().len();
        let enc = ClassEncoder::new(&tok, template, verbalizer, empty + 6, false).unwrap();
        let mut raw = RawExample {
            text: "fun".into(),
            label: Some("1".into()),
            line: 7,
            ..RawExample::default()
        };
        raw.extra.insert("choice1".into(), "great ".repeat(10));
        raw.extra.insert("choice2".into(), "fun".into());
        let ex = enc.encode(&raw, 2).unwrap();
        assert_eq!(ex.label, 1);
        assert!(ex.input_ids.len() <= empty + 6);
        let prompt = tok.decode(&ex.input_ids, false).unwrap();
        // Only the long choice lost tokens; the short fields and the template's tail are whole.
        assert!(prompt.starts_with("fun Question: great"), "{prompt:?}");
        assert!(prompt.ends_with(" or fun Answer:"), "{prompt:?}");

        let mut missing = raw.clone();
        missing.extra.remove("choice2");
        let err = enc.encode(&missing, 2).unwrap_err().to_string();
        assert!(
            err.contains("example 2 (line 7)")
                && err.contains("{choice2}")
                && err.contains("known placeholders: {text}, {choice1}"),
            "{err}"
        );
        let mut unused = raw;
        unused.extra.insert("question".into(), "cause".into());
        let err = enc.encode(&unused, 0).unwrap_err().to_string();
        assert!(
            err.contains("{question}") && err.contains("does not place it"),
            "{err}"
        );
    }

    #[test]
    fn two_words_with_the_same_first_token_are_an_error() {
        let tok = byte_bpe();
        // Neither word is in the merges: both start with the bare `Ġ` token.
        let verbalizer = Verbalizer::new([("0", " bad"), ("1", " zzz")]).unwrap();
        let err = ClassEncoder::new(
            &tok,
            Template::new("{text} Sentiment:").unwrap(),
            verbalizer,
            64,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\" bad\"") && err.contains("\" zzz\""),
            "{err}"
        );
    }

    #[test]
    fn a_word_that_fuses_with_the_prompt_is_an_error() {
        let tok = byte_bpe();
        // " Senti" + "ment" is the single token `ĠSentiment`: "ment" starts no token of its own.
        let verbalizer = Verbalizer::new([("0", "ment"), ("1", " positive")]).unwrap();
        let err = ClassEncoder::new(
            &tok,
            Template::new("{text} Senti").unwrap(),
            verbalizer,
            64,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("merges with the end of the prompt"), "{err}");
    }

    #[test]
    fn special_tokens_are_a_parameter_and_trailing_ones_are_dropped() {
        let tok = byte_bpe_with_bos();
        let template = Template::new("{text} Sentiment:").unwrap();
        let verbalizer = Verbalizer::new([("0", " negative"), ("1", " positive")]).unwrap();
        let with = ClassEncoder::new(&tok, template.clone(), verbalizer.clone(), 64, true).unwrap();
        let without = ClassEncoder::new(&tok, template, verbalizer, 64, false).unwrap();
        let a = with.encode_prompt("fun", None, 0).unwrap();
        let b = without.encode_prompt("fun", None, 0).unwrap();
        let (bos, eos) = (ids_of(&tok, &["<s>"])[0], ids_of(&tok, &["</s>"])[0]);
        assert_eq!(a[0], bos);
        assert_eq!(&a[1..], &b[..]);
        assert!(
            !a.contains(&eos),
            "the EOS after the prompt must be dropped: {a:?}"
        );
    }

    #[test]
    fn the_tokenizers_own_truncation_and_padding_are_ignored() {
        use tokenizers::{PaddingParams, PaddingStrategy, TruncationParams};
        let mut tok = byte_bpe();
        tok.with_truncation(Some(TruncationParams {
            max_length: 2,
            ..Default::default()
        }))
        .unwrap();
        tok.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(40),
            ..Default::default()
        }));
        let plain = byte_bpe();
        let enc = sst2_encoder(&tok, 64).unwrap();
        let ids = enc.encode_prompt("great fun", None, 0).unwrap();
        assert_eq!(ids, encode_plain(&plain, "great fun Sentiment:").unwrap());
        assert_eq!(
            enc.label_token_ids(),
            sst2_encoder(&plain, 64).unwrap().label_token_ids()
        );
        let blocks = chunk_text(&tok, "great fun great fun", 2, false).unwrap();
        assert_eq!(blocks.len(), 2);
    }

    #[test]
    fn text_pair_presence_must_match_the_template() {
        let tok = byte_bpe();
        let enc = sst2_encoder(&tok, 64).unwrap();
        let err = enc
            .encode_prompt("a", Some("b"), 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("example 4") && err.contains("text_pair"),
            "{err}"
        );
    }

    #[test]
    fn pairs_become_two_segments_with_token_types() {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        use tokenizers::processors::template::TemplateProcessing;
        // A BERT-like tokenizer: [CLS] a [SEP] (b [SEP] with type 1).
        let words = [
            "[UNK]", "[CLS]", "[SEP]", "it", "rains", "wet", "negative", "positive",
        ];
        let vocab = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Whitespace {}));
        tok.with_post_processor(Some(
            TemplateProcessing::builder()
                .try_single("[CLS] $A [SEP]")
                .unwrap()
                .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
                .unwrap()
                .special_tokens(vec![("[CLS]", 1), ("[SEP]", 2)])
                .build()
                .unwrap(),
        ));
        let encoder = |max_len| {
            ClassEncoder::new(
                &tok,
                Template::new("{text}").unwrap(),
                Verbalizer::new([("0", "negative"), ("1", "positive")]).unwrap(),
                max_len,
                true,
            )
            .unwrap()
            .keeping_trailing_special_tokens()
        };
        // Without pair encoding a pair the template does not place is refused; with it, two segments.
        assert!(encoder(16)
            .encode_prompt("it rains", Some("wet"), 0)
            .is_err());
        let (ids, types) = encoder(16)
            .with_pair_encoding()
            .encode_prompt_with_types("it rains", Some("wet"), 0)
            .unwrap();
        assert_eq!(ids, [1, 3, 4, 2, 5, 2]);
        assert_eq!(types, [0, 0, 0, 0, 1, 1]);
        // Too long: the longer field loses its end first; the types stay aligned.
        let (ids, types) = encoder(5)
            .with_pair_encoding()
            .encode_prompt_with_types("it rains", Some("wet"), 0)
            .unwrap();
        assert_eq!((ids, types), (vec![1, 3, 2, 5, 2], vec![0, 0, 0, 1, 1]));
        // A single text keeps no types.
        let (_, types) = encoder(16)
            .with_pair_encoding()
            .encode_prompt_with_types("it rains", None, 0)
            .unwrap();
        assert!(types.is_empty());
    }

    #[test]
    fn chunks_have_labels_equal_to_ids_and_drop_the_remainder() {
        let tok = byte_bpe();
        let text = "great fun ".repeat(10);
        let n = encode_plain(&tok, &text).unwrap().len();
        let blocks = chunk_text(&tok, &text, 4, false).unwrap();
        assert_eq!(blocks.len(), n / 4);
        for b in &blocks {
            assert_eq!(b.input_ids.len(), 4);
            assert_eq!(
                b.labels,
                b.input_ids
                    .iter()
                    .map(|&i| i64::from(i))
                    .collect::<Vec<_>>()
            );
        }
        assert!(chunk_text(&tok, "fun", 64, false)
            .unwrap_err()
            .to_string()
            .contains("fewer than one block"));
    }

    #[test]
    fn prompt_tokens_take_no_loss() {
        let tok = byte_bpe_with_bos();
        let ex =
            encode_prompt_completion(&tok, "great fun Sentiment:", " positive", 64, true).unwrap();
        let positive = ids_of(&tok, &["Ġpositive"])[0];
        let labelled: Vec<i64> = ex
            .labels
            .iter()
            .copied()
            .filter(|&l| l != IGNORE_INDEX)
            .collect();
        let eos = ids_of(&tok, &["</s>"])[0];
        assert_eq!(labelled, vec![i64::from(positive), i64::from(eos)]);
        assert_eq!(ex.labels.len(), ex.input_ids.len());

        // Too long: the prompt loses its start, BOS and the completion stay.
        let short =
            encode_prompt_completion(&tok, "great fun Sentiment:", " positive", 4, true).unwrap();
        assert_eq!(short.input_ids.len(), 4);
        assert_eq!(short.input_ids[0], ids_of(&tok, &["<s>"])[0]);
        assert_eq!(&short.labels[2..], &[i64::from(positive), i64::from(eos)]);
        assert_eq!(short.labels[1], IGNORE_INDEX);
    }
}
