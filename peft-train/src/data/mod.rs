//! The data pipeline: files -> raw examples -> prompts -> token ids -> padded batches.
//!
//! - [`source`]: [`DataSource`] reads JSONL / CSV / TSV / `label text` / Parquet files, or a dataset of the
//!   Hugging Face hub by id, config and split ([`hub_dataset`]), into [`RawExample`]s ([`raw_example`]), with
//!   the columns named by the user (text, text pair, label, and any further `fields` a template places), and
//!   `skip` / `limit` to cut one file into parts; [`read_text`] ([`corpus`]) reads a plain-text corpus.
//! - [`template`]: a [`Template`] renders an example into a prompt whose last token is the answer position
//!   (`{text}`, `{text_pair}` and `{name}` for each field); a [`Verbalizer`] maps label values to label words
//!   and those to token ids.
//! - [`encode`]: [`ClassEncoder`] makes [`ClassExample`]s (truncating text, never the template's tail);
//!   [`chunk_text`] and [`encode_prompt_completion`] make [`LmExample`]s.
//! - [`batch`]: [`ClassBatch`] / [`LmBatch`] pad on the right, with masks, -100 labels, answer positions and
//!   candle tensors; [`epoch_order`] is the seeded order of an epoch.
//!
//! The tokenizer is always the caller's (the model's own); nothing here names a model.
//!
//! ```
//! use peft_train::data::{ClassBatch, ClassEncoder, DataSource, Template, Verbalizer};
//! use tokenizers::models::wordlevel::WordLevel;
//! use tokenizers::pre_tokenizers::whitespace::Whitespace;
//! use tokenizers::Tokenizer;
//!
//! // A toy word-level tokenizer; real use passes the model's tokenizer.
//! let words = ["[UNK]", "a", "great", "dull", "film", "Sentiment", ":", "negative", "positive"];
//! let vocab = words.iter().enumerate().map(|(i, w)| (w.to_string(), i as u32)).collect();
//! let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().unwrap();
//! let mut tokenizer = Tokenizer::new(model);
//! tokenizer.with_pre_tokenizer(Some(Whitespace {}));
//!
//! let source = DataSource::new("train.tsv", "sentence").with_label("label");
//! let raw = source.parse_str("sentence\tlabel\na great film\t1\na dull film\t0\n").unwrap();
//!
//! let template = Template::new("{text} Sentiment:").unwrap();
//! let verbalizer = Verbalizer::new([("0", " negative"), ("1", " positive")]).unwrap();
//! let encoder = ClassEncoder::new(&tokenizer, template, verbalizer, 16, false).unwrap();
//! assert_eq!(encoder.label_token_ids(), [7, 8]);
//! let examples = encoder.encode_all(&raw).unwrap();
//! assert_eq!(examples[0].input_ids, [1, 2, 4, 5, 6]);
//! assert_eq!(examples[0].label, 1);
//!
//! let batch = ClassBatch::collate(&examples, 0).unwrap();
//! assert_eq!(batch.answer_positions, [4, 4]);
//! ```

pub mod batch;
pub mod corpus;
pub mod digest;
pub mod encode;
pub mod hub_dataset;
pub mod raw_example;
pub mod source;
pub mod tagged;
pub mod template;

// Public for the tests of other crates (peft-testing reads the shared datasets with the same tokenizer).
#[doc(hidden)]
pub mod testing;

pub use batch::{epoch_order, ClassBatch, ClassTensors, LmBatch, LmTensors, PaddedIds};
pub use corpus::read_text;
pub use encode::{
    chunk_text, encode_prompt_completion, ClassEncoder, ClassExample, LmExample, IGNORE_INDEX,
};
pub use hub_dataset::HubDataset;
pub use raw_example::RawExample;
pub use source::{DataSource, Field, Format, Located};
pub use template::{Template, Verbalizer};
