//! The tokenizer rebuilt from Gemma-3's GGUF metadata (a SentencePiece vocabulary of 262,144 tokens) gives
//! exactly the ids Hugging Face transformers gives, and decodes as transformers does
//! (`fixtures/gemma3-270m/tokenizer_ids.json`, written by `scripts/reference/gemma3_tokenizer.py`). Needs the
//! GGUF: the zoo's `gemma3-270m` (or `PEFT_GEMMA3_GGUF=<file>`); skipped without it.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::gguf_file::Content;
use peft_models::gguf_tokenizer::tokenizer_from_metadata;
use serde::Deserialize;

/// Where the Gemma-3-270M GGUF is named.
const GGUF_ENV: &str = "PEFT_GEMMA3_GGUF";

#[derive(Deserialize)]
struct Fixture {
    meta: Meta,
    texts: Vec<Case>,
}

#[derive(Deserialize)]
struct Meta {
    vocab_size: usize,
    added_tokens: AddedTokens,
}

#[derive(Deserialize)]
struct AddedTokens {
    special: usize,
    not_special_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn gemma3_gguf() -> Option<PathBuf> {
    peft_testing::zoo_model_path("gemma3-270m", GGUF_ENV)
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/gemma3-270m/tokenizer_ids.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the committed fixture")).unwrap()
}

#[test]
fn ids_and_decoding_equal_transformers() {
    let Some(path) = gemma3_gguf() else { return };
    let mut file = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut file).unwrap();
    let started = Instant::now();
    let tok = tokenizer_from_metadata(&content.metadata).unwrap();
    eprintln!(
        "built the Gemma-3 tokenizer ({} tokens) in {:.3} s",
        tok.tokenizer.get_vocab_size(true),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (
            tok.bos_token_id,
            tok.eos_token_id,
            tok.unk_token_id,
            tok.pad_token_id
        ),
        (Some(2), Some(1), Some(3), Some(0))
    );

    let fixture = fixture();
    assert_eq!(
        tok.tokenizer.get_vocab_size(true),
        fixture.meta.vocab_size,
        "the added tokens should all be in the vocabulary"
    );
    let added = tok.tokenizer.get_added_tokens_decoder();
    let special = added.values().filter(|t| t.special).count();
    let mut not_special: Vec<u32> = added
        .iter()
        .filter(|(_, t)| !t.special)
        .map(|(&id, _)| id)
        .collect();
    not_special.sort_unstable();
    assert_eq!(special, fixture.meta.added_tokens.special);
    assert_eq!(not_special, fixture.meta.added_tokens.not_special_ids);

    let cases = fixture.texts;
    assert!(
        cases.len() >= 25,
        "the fixture should hold ~30 texts, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let enc = tok.tokenizer.encode(case.text.as_str(), true).unwrap();
        if enc.get_ids() != case.ids.as_slice() {
            failures.push(format!(
                "{:?}\n  ours:         {:?}\n  transformers: {:?}",
                case.text,
                enc.get_ids(),
                case.ids
            ));
        }
        let decoded = tok.tokenizer.decode(&case.ids, false).unwrap();
        if decoded != case.decoded {
            failures.push(format!(
                "{:?} decodes to {decoded:?}, transformers gives {:?}",
                case.text, case.decoded
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} checks differ:\n{}",
        failures.len(),
        2 * cases.len(),
        failures.join("\n")
    );
}
