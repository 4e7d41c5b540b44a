//! Helpers for the data tests, this crate's and other crates': tiny tokenizers built in code (GPT-2-style
//! byte-level BPE, so leading spaces become `Ġ`, with whole-word merges for a handful of words and single bytes
//! for everything else), and the labels of read rows. Not part of the API.
//!
//! ```
//! use peft_train::data::testing::{byte_bpe, byte_bpe_of};
//! let ids = |t: &tokenizers::Tokenizer, s: &str| t.encode(s, false).unwrap().get_ids().len();
//! assert_eq!(ids(&byte_bpe(), "great fun"), 2);
//! assert_eq!(ids(&byte_bpe_of(&[" fun"]), "great fun"), 6);
//! ```

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::Tokenizer;

use super::RawExample;

/// Words that encode to one token (`Ġ` = a leading space). Words with a leading space come first so that
/// their merges outrank those of the bare words.
const WORDS: &[&str] = &[
    "Ġpositive",
    "Ġnegative",
    "ĠSentiment",
    "Ġgreat",
    "Ġfun",
    "ĠQuestion",
    "ĠAnswer",
    "great",
    "fun",
];

/// Byte-level BPE without special tokens in its encodings, whose merges make a handful of words (`great`,
/// `fun`, ` positive`, ` negative`, ` Sentiment`, ` Question`, ` Answer`) single tokens.
pub fn byte_bpe() -> Tokenizer {
    byte_bpe_of(WORDS)
}

/// Byte-level BPE without special tokens in its encodings (`<s>` and `</s>` are in its vocabulary, ids 0 and 1,
/// for [`byte_bpe_with_bos`]), whose only merges make each of `words` one token; a leading space may be
/// written ` ` or `Ġ`. Without words, every byte is a token.
pub fn byte_bpe_of(words: &[&str]) -> Tokenizer {
    let mut tokens: Vec<String> = vec!["<s>".into(), "</s>".into()];
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    let mut merges: Vec<(String, String)> = Vec::new();
    for word in words {
        let chars: Vec<char> = word.replace(' ', "Ġ").chars().collect();
        let mut prefix = chars[0].to_string();
        for c in &chars[1..] {
            let merged = format!("{prefix}{c}");
            if !tokens.contains(&merged) {
                merges.push((prefix.clone(), c.to_string()));
                tokens.push(merged.clone());
            }
            prefix = merged;
        }
    }
    let vocab: Vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .expect("valid BPE");
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer
}

/// [`byte_bpe`] whose post-processor wraps a sequence as `<s> ... </s>`.
pub fn byte_bpe_with_bos() -> Tokenizer {
    let mut tokenizer = byte_bpe();
    let processor = TemplateProcessing::builder()
        .try_single("<s> $A </s>")
        .expect("valid template")
        .special_tokens(vec![("<s>", 0), ("</s>", 1)])
        .build()
        .expect("valid processor");
    tokenizer.with_post_processor(Some(processor));
    tokenizer
}

/// Ids of whole tokens.
pub fn ids_of(tokenizer: &Tokenizer, tokens: &[&str]) -> Vec<u32> {
    tokens
        .iter()
        .map(|t| {
            tokenizer
                .token_to_id(t)
                .unwrap_or_else(|| panic!("no token {t:?}"))
        })
        .collect()
}

/// The label of each row, `-` where it has none.
pub fn labels(rows: &[RawExample]) -> Vec<&str> {
    rows.iter()
        .map(|r| r.label.as_deref().unwrap_or("-"))
        .collect()
}

/// The values of one column of a test Parquet file.
#[derive(Debug, Clone)]
pub enum Column {
    /// UTF-8 strings.
    Text(Vec<String>),
    /// UTF-8 strings, `None` written as null.
    OptionalText(Vec<Option<String>>),
    /// 64-bit integers (as HF datasets store a `ClassLabel`).
    Int(Vec<i64>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::OptionalText(v) => v.len(),
            Column::Int(v) => v.len(),
        }
    }
}

/// Writes a one-row-group, snappy-compressed Parquet file of nullable columns, as HF datasets write theirs.
pub fn write_parquet(path: &std::path::Path, columns: &[(&str, Column)]) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let fields: Vec<String> = columns
        .iter()
        .map(|(name, column)| match column {
            Column::Int(_) => format!("OPTIONAL INT64 {name};"),
            _ => format!("OPTIONAL BYTE_ARRAY {name} (UTF8);"),
        })
        .collect();
    let schema = parse_message_type(&format!("message schema {{ {} }}", fields.join(" ")))
        .expect("valid schema");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let file = std::fs::File::create(path).expect("create parquet file");
    let mut writer =
        SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).expect("parquet writer");
    let mut group = writer.next_row_group().expect("row group");
    for (_, column) in columns {
        let mut out = group.next_column().expect("column").expect("a column left");
        let present: Vec<i16> = match column {
            Column::OptionalText(v) => v.iter().map(|x| i16::from(x.is_some())).collect(),
            other => vec![1; other.len()],
        };
        match column {
            Column::Int(v) => {
                out.typed::<Int64Type>()
                    .write_batch(v, Some(&present), None)
                    .expect("write ints");
            }
            Column::Text(v) => {
                let v: Vec<ByteArray> = v.iter().map(|s| ByteArray::from(s.as_str())).collect();
                out.typed::<ByteArrayType>()
                    .write_batch(&v, Some(&present), None)
                    .expect("write strings");
            }
            Column::OptionalText(v) => {
                let v: Vec<ByteArray> = v
                    .iter()
                    .flatten()
                    .map(|s| ByteArray::from(s.as_str()))
                    .collect();
                out.typed::<ByteArrayType>()
                    .write_batch(&v, Some(&present), None)
                    .expect("write strings");
            }
        }
        out.close().expect("close column");
    }
    group.close().expect("close row group");
    writer.close().expect("close parquet file");
}

/// A hub endpoint that refuses every connection at once: a local port just bound and released, on which
/// nothing listens.
pub fn refusing_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a local port")
        .local_addr()
        .expect("its address")
        .port();
    format!("http://127.0.0.1:{port}")
}
