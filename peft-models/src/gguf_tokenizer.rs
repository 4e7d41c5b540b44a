//! Rebuilds a [`tokenizers::Tokenizer`] from a GGUF file's metadata, so that it gives exactly the ids Hugging
//! Face transformers gives for the same file (`AutoTokenizer.from_pretrained(folder, gguf_file=..)`).
//!
//! A GGUF carries no `tokenizer.json`: llama.cpp stores the vocabulary, the merges, a type per token and the
//! special ids as metadata (`tokenizer.ggml.*`). Two kinds are rebuilt here, the way transformers does it:
//!
//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`):
//!
//! - the vocabulary as the file lists it, a token spelled outside the byte-level alphabet being respelled
//!   through its UTF-8 bytes; the merges as listed; no unknown token, no byte fallback;
//! - the GPT-2 byte-level pre-tokenizer (no prefix space), or for the Llama-3 family (`tokenizer.ggml.pre`)
//!   the Llama-3 split regex followed by the byte-level mapping; a byte-level decoder, so decoding round-trips;
//! - tokens of type CONTROL become special added tokens (matched whole, skipped by `decode(.., true)`) and
//!   USER_DEFINED ones plain added tokens; the bos/eos/unk/pad tokens are special too.
//!
//! Gemma's SentencePiece vocabulary (`"llama"` with `general.architecture` `gemma`, `gemma2` or `gemma3`;
//! [`sentencepiece`] says how): BPE with byte fallback and merges derived from the vocabulary's order, spaces
//! written as `▁` by the normalizer with no prefix space, the same special and added tokens. Other SentencePiece
//! files (LLaMA-2, Phi-3, ..) are refused by name rather than tokenized differently from transformers.
//!
//! For both:
//!
//! - BOS / EOS are added only where `tokenizer.ggml.add_bos_token` / `add_eos_token` say so; without the flag
//!   a SentencePiece vocabulary gets BOS, as in transformers and llama.cpp.
//!
//! ```
//! use std::collections::HashMap;
//! use candle_core::quantized::gguf_file::Value;
//! use peft_models::gguf_tokenizer::tokenizer_from_metadata;
//!
//! let strings = |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
//! let mut md = HashMap::new();
//! md.insert("tokenizer.ggml.model".to_string(), Value::String("gpt2".into()));
//! md.insert("tokenizer.ggml.tokens".to_string(), strings(&["<|end|>", "a", "b", "ab", "Ġ", "Ġab"]));
//! md.insert("tokenizer.ggml.merges".to_string(), strings(&["a b", "Ġ ab"]));
//! md.insert("tokenizer.ggml.token_type".to_string(), Value::Array([3, 1, 1, 1, 1, 1].map(Value::I32).to_vec()));
//! md.insert("tokenizer.ggml.eos_token_id".to_string(), Value::U32(0));
//!
//! let tok = tokenizer_from_metadata(&md).unwrap();
//! let enc = tok.tokenizer.encode("ab ab<|end|>", true).unwrap();
//! assert_eq!(enc.get_ids(), &[3, 5, 0]);
//! assert_eq!(tok.tokenizer.decode(enc.get_ids(), false).unwrap(), "ab ab<|end|>");
//! assert_eq!(tok.eos_token_id, Some(0));
//! ```

use std::collections::{HashMap, HashSet};

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{ModelError, Result};

pub mod sentencepiece;

/// llama.cpp's token type for control tokens (`<|endoftext|>`, `<|im_start|>`).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// llama.cpp's token type for user-defined tokens (added, not special, like `<think>`).
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The Llama-3 pre-tokenizer split (numbers in groups of three, contractions case-insensitive).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values that split text as Llama 3 does.
const LLAMA3_PRE: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "dbrx",
    "smaug-bpe",
];

/// `tokenizer.ggml.pre` values transformers splits with yet another regex, not rebuilt here: refused rather
/// than silently tokenized differently.
const UNSUPPORTED_PRE: &[&str] = &[
    "tekken",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "megrez",
    "qwen35",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "minimax-m2",
];

/// A tokenizer rebuilt from GGUF metadata, with the special ids the file names.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// The tokenizer (BOS / EOS added by `encode(.., true)` only where the file asks for it).
    pub tokenizer: Tokenizer,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id` (padding is left to the caller, as transformers does).
    pub pad_token_id: Option<u32>,
    /// `tokenizer.chat_template`, a Jinja template.
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_id", &self.eos_token_id)
            .field("unk_token_id", &self.unk_token_id)
            .field("pad_token_id", &self.pad_token_id)
            .finish()
    }
}

/// Builds the tokenizer a GGUF file's metadata describes (see the module docs for what is rebuilt).
pub fn tokenizer_from_metadata(metadata: &HashMap<String, Value>) -> Result<GgufTokenizer> {
    let model = string(metadata, "tokenizer.ggml.model")?
        .ok_or_else(|| bad("the file has no `tokenizer.ggml.model`: it carries no tokenizer"))?;
    let architecture = string(metadata, "general.architecture")?;
    let sentencepiece = match model.as_str() {
        "gpt2" => false,
        "llama" if sentencepiece::is_gemma(architecture.as_deref()) => true,
        "llama" => {
            return Err(bad(format!(
                "tokenizer model `llama` is rebuilt for Gemma only (architectures {:?}), not for `{}`; \
                 load the model from a Hugging Face folder with a tokenizer.json instead",
                sentencepiece::GEMMA_ARCHITECTURES,
                architecture.as_deref().unwrap_or("(none)")
            )))
        }
        _ => {
            return Err(bad(format!(
                "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`, and Gemma's \
                 SentencePiece, `llama`); load the model from a Hugging Face folder with a tokenizer.json \
                 instead"
            )))
        }
    };
    let tokens = strings(metadata, "tokenizer.ggml.tokens")?
        .ok_or_else(|| bad("the file has no `tokenizer.ggml.tokens`"))?;
    let types = integers(metadata, "tokenizer.ggml.token_type")?.unwrap_or_default();
    let token_id = |key: &str| -> Result<Option<u32>> {
        match integer(metadata, key)? {
            None => Ok(None),
            Some(id) if id >= 0 && (id as usize) < tokens.len() => Ok(Some(id as u32)),
            Some(id) => Err(bad(format!(
                "`{key}` = {id} is outside the {} tokens",
                tokens.len()
            ))),
        }
    };
    let bos_token_id = token_id("tokenizer.ggml.bos_token_id")?;
    let eos_token_id = token_id("tokenizer.ggml.eos_token_id")?;
    let unk_token_id = token_id("tokenizer.ggml.unknown_token_id")?;
    let pad_token_id = token_id("tokenizer.ggml.padding_token_id")?;
    // Without the flag transformers adds BOS to a SentencePiece vocabulary, as llama.cpp does.
    let add_bos = boolean(metadata, "tokenizer.ggml.add_bos_token")?.unwrap_or(sentencepiece);
    let add_eos = boolean(metadata, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    let named: Vec<u32> = [bos_token_id, eos_token_id, unk_token_id, pad_token_id]
        .into_iter()
        .flatten()
        .collect();
    let mut tokenizer = if sentencepiece {
        if let Some(pre) = string(metadata, "tokenizer.ggml.pre")?
            .filter(|p| LLAMA3_PRE.contains(&p.as_str()) || UNSUPPORTED_PRE.contains(&p.as_str()))
        {
            // transformers would put a byte-level split in front of a SentencePiece vocabulary here.
            return Err(bad(format!(
                "pre-tokenizer `{pre}` on a SentencePiece vocabulary is not supported"
            )));
        }
        sentencepiece::gemma(&tokens, &types, &named)?
    } else {
        byte_level(metadata, &tokens, &types, &named)?
    };
    let bos = bos_token_id
        .filter(|_| add_bos)
        .map(|id| (tokens[id as usize].clone(), id));
    let eos = eos_token_id
        .filter(|_| add_eos)
        .map(|id| (tokens[id as usize].clone(), id));
    tokenizer.with_post_processor(Some(post_processor(bos, eos)?));

    Ok(GgufTokenizer {
        tokenizer,
        bos_token_id,
        eos_token_id,
        unk_token_id,
        pad_token_id,
        chat_template: string(metadata, "tokenizer.chat_template")?,
    })
}

/// Byte-level BPE (`gpt2`): the vocabulary, the file's merges, the byte-level pre-tokenizer and decoder, and
/// the added tokens (no post-processor: BOS / EOS are the caller's).
fn byte_level(
    metadata: &HashMap<String, Value>,
    tokens: &[String],
    types: &[i64],
    named: &[u32],
) -> Result<Tokenizer> {
    let merges = strings(metadata, "tokenizer.ggml.merges")?
        .ok_or_else(|| bad("the byte-level tokenizer has no `tokenizer.ggml.merges`"))?;
    let alphabet: HashSet<char> = (0..=255u8).map(byte_char).collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));

    // A later duplicate wins, as in transformers' dict comprehension.
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(token) {
            token.clone()
        } else {
            token.bytes().map(byte_char).collect()
        };
        vocab.insert(spelled, id as u32);
    }
    let merges = merges
        .iter()
        .map(|m| match m.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Ok((a.to_string(), b.to_string())),
            _ => Err(bad(format!(
                "merge `{m}` is not two tokens separated by one space"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.clone(), merges)
        .fuse_unk(false)
        .byte_fallback(false)
        .build()
        .map_err(|e| {
            bad(format!(
                "vocabulary and merges do not make a BPE model: {e}"
            ))
        })?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(
        string(metadata, "tokenizer.ggml.pre")?.as_deref(),
    )?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens spelled outside the byte alphabet are llama.cpp mislabels that transformers skips.
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(t, ty)| **ty == TOKEN_TYPE_CONTROL && in_alphabet(t))
        .map(|(t, _)| special(t))
        .collect();
    tokenizer
        .add_special_tokens(control)
        .map_err(|e| ModelError::Tokenizer(format!("adding the GGUF's special tokens: {e}")))?;
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(t, ty)| **ty == TOKEN_TYPE_USER_DEFINED && vocab.contains_key(*t))
        .map(|(t, _)| AddedToken::from(t.as_str(), false).normalized(false))
        .collect();
    tokenizer
        .add_tokens(user_defined)
        .map_err(|e| ModelError::Tokenizer(format!("adding the GGUF's special tokens: {e}")))?;
    // transformers registers the named special tokens, and GPT-2's default `<|endoftext|>`, as special; the
    // default only where the vocabulary has it, so that no id beyond the embedding table appears.
    let named: Vec<AddedToken> = named
        .iter()
        .map(|&id| special(&tokens[id as usize]))
        .chain(
            vocab
                .contains_key("<|endoftext|>")
                .then(|| special("<|endoftext|>")),
        )
        .collect();
    tokenizer
        .add_special_tokens(named)
        .map_err(|e| ModelError::Tokenizer(format!("adding the GGUF's special tokens: {e}")))?;
    Ok(tokenizer)
}

/// GPT-2's reversible byte -> printable character map: printable Latin-1 bytes stand for themselves, the
/// others are moved, in order, to U+0100 and up (so a space is `Ġ`, a newline `Ċ`).
pub fn byte_char(b: u8) -> char {
    let printable = |x: u8| {
        (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x)
    };
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("U+0100..U+0143 are valid characters")
}

fn special(content: &str) -> AddedToken {
    AddedToken::from(content, true).normalized(false)
}

/// Byte-level pre-tokenizer, after the Llama-3 split where the file's `tokenizer.ggml.pre` asks for it.
fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper> {
    match pre {
        Some(p) if LLAMA3_PRE.contains(&p) => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| bad(format!("the Llama-3 split regex does not compile: {e}")))?;
            Ok(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into())
        }
        Some(p) if UNSUPPORTED_PRE.contains(&p) => Err(bad(format!(
            "pre-tokenizer `{p}` is not supported (its split regex is not rebuilt here); \
             load the model from a Hugging Face folder with a tokenizer.json instead"
        ))),
        _ => Ok(ByteLevel::new(false, true, true).into()),
    }
}

/// transformers' template: `[bos] $A [eos]` for one sequence, `[bos] $A [eos] [bos] $B [eos]` for a pair.
fn post_processor(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> Result<TemplateProcessing> {
    let piece =
        |t: &Option<(String, u32)>, type_id: u8| t.as_ref().map(|(s, _)| format!("{s}:{type_id}"));
    let single: Vec<String> = [piece(&bos, 0), Some("$A:0".into()), piece(&eos, 0)]
        .into_iter()
        .flatten()
        .collect();
    let pair: Vec<String> = single
        .iter()
        .cloned()
        .chain(
            [piece(&bos, 1), Some("$B:1".into()), piece(&eos, 1)]
                .into_iter()
                .flatten(),
        )
        .collect();
    let specials: Vec<(String, u32)> = bos.into_iter().chain(eos).collect();
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| bad(format!("building the BOS/EOS template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| bad(format!("building the BOS/EOS template: {e}")))
}

fn bad(message: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(format!("GGUF metadata: {}", message.into()))
}

fn string(md: &HashMap<String, Value>, key: &str) -> Result<Option<String>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(bad(format!(
            "`{key}` should be a string, found {:?}",
            v.value_type()
        ))),
    }
}

fn boolean(md: &HashMap<String, Value>, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(bad(format!(
            "`{key}` should be a boolean, found {:?}",
            v.value_type()
        ))),
    }
}

/// Any integer value widened to i64 (writers differ in the integer type they pick).
pub(crate) fn as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn integer(md: &HashMap<String, Value>, key: &str) -> Result<Option<i64>> {
    md.get(key)
        .map(|v| {
            as_i64(v).ok_or_else(|| {
                bad(format!(
                    "`{key}` should be an integer, found {:?}",
                    v.value_type()
                ))
            })
        })
        .transpose()
}

fn array<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a Vec<Value>>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(v) => Err(bad(format!(
            "`{key}` should be an array, found {:?}",
            v.value_type()
        ))),
    }
}

fn strings(md: &HashMap<String, Value>, key: &str) -> Result<Option<Vec<String>>> {
    let Some(items) = array(md, key)? else {
        return Ok(None);
    };
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(bad(format!(
                "`{key}` should hold strings, found {:?}",
                other.value_type()
            ))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn integers(md: &HashMap<String, Value>, key: &str) -> Result<Option<Vec<i64>>> {
    let Some(items) = array(md, key)? else {
        return Ok(None);
    };
    items
        .iter()
        .map(|v| {
            as_i64(v).ok_or_else(|| {
                bad(format!(
                    "`{key}` should hold integers, found {:?}",
                    v.value_type()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
    }

    /// A toy byte-level vocabulary: every byte of "abc Ġ" plus a few merges and two added tokens.
    fn metadata() -> HashMap<String, Value> {
        let tokens = [
            "<s>", "</s>", "<think>", "a", "b", "c", "Ġ", "ab", "Ġab", "Ċ", "€",
        ];
        let types = [3, 3, 4, 1, 1, 1, 1, 1, 1, 1, 1];
        HashMap::from([
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            ("tokenizer.ggml.tokens".to_string(), strs(&tokens)),
            ("tokenizer.ggml.merges".to_string(), strs(&["a b", "Ġ ab"])),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(types.map(Value::I32).to_vec()),
            ),
            ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(0)),
            ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(1)),
        ])
    }

    #[test]
    fn byte_alphabet_is_gpt2s() {
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(byte_char(b'a'), 'a');
        assert_eq!(byte_char(0xAD), 'Ń');
        let all: HashSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn control_and_user_defined_tokens_stay_whole() {
        let tok = tokenizer_from_metadata(&metadata()).unwrap().tokenizer;
        let enc = tok.encode("<s>ab<think> ab</s>", true).unwrap();
        assert_eq!(enc.get_ids(), &[0, 7, 2, 8, 1]);
        // Control tokens are special (skipped on request), user-defined ones are not.
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "ab<think> ab");
    }

    #[test]
    fn non_alphabet_tokens_are_respelled_through_their_bytes() {
        // `€` is outside the byte alphabet, so it is stored as its three UTF-8 byte characters `â‚¬`.
        let tok = tokenizer_from_metadata(&metadata()).unwrap().tokenizer;
        let respelled: String = "€".bytes().map(byte_char).collect();
        assert_eq!(respelled.chars().count(), 3);
        assert_eq!(tok.token_to_id(&respelled), Some(10));
        assert_eq!(tok.token_to_id("€"), None);
    }

    #[test]
    fn bos_and_eos_only_where_the_file_asks() {
        let mut md = metadata();
        let tok = tokenizer_from_metadata(&md).unwrap().tokenizer;
        assert_eq!(tok.encode("ab", true).unwrap().get_ids(), &[7]);
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        md.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
        let tok = tokenizer_from_metadata(&md).unwrap().tokenizer;
        assert_eq!(tok.encode("ab", true).unwrap().get_ids(), &[0, 7, 1]);
        assert_eq!(tok.encode("ab", false).unwrap().get_ids(), &[7]);
        assert_eq!(
            tok.encode(("ab", "c"), true).unwrap().get_ids(),
            &[0, 7, 1, 0, 5, 1]
        );
    }

    #[test]
    fn llama3_split_compiles_and_round_trips() {
        let mut md = metadata();
        md.insert(
            "tokenizer.ggml.pre".into(),
            Value::String("llama-bpe".into()),
        );
        let tok = tokenizer_from_metadata(&md).unwrap().tokenizer;
        let enc = tok.encode("ab ab\nc", false).unwrap();
        assert_eq!(enc.get_ids(), &[7, 8, 9, 5]);
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "ab ab\nc");
    }

    #[test]
    fn unsupported_files_are_refused_by_name() {
        let mut md = metadata();
        md.insert("tokenizer.ggml.pre".into(), Value::String("qwen2".into()));
        assert!(tokenizer_from_metadata(&md)
            .unwrap_err()
            .to_string()
            .contains("qwen2"));
        let mut md = metadata();
        md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        assert!(tokenizer_from_metadata(&md)
            .unwrap_err()
            .to_string()
            .contains("`llama`"));
        let mut md = metadata();
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(99));
        assert!(tokenizer_from_metadata(&md)
            .unwrap_err()
            .to_string()
            .contains("99"));
        let mut md = metadata();
        md.insert("tokenizer.ggml.merges".into(), strs(&["a b c"]));
        assert!(tokenizer_from_metadata(&md)
            .unwrap_err()
            .to_string()
            .contains("a b c"));
    }
}
