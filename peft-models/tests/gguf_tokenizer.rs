//! The tokenizer rebuilt from SmolLM2's GGUF metadata gives exactly the ids Hugging Face transformers gives
//! (`fixtures/smollm2/tokenizer_ids.json`, written by `scripts/reference/smollm2_gguf.py`), and decoding
//! round-trips. Needs the GGUF: `PEFT_SMOLLM2_GGUF=<file>` or `peft fetch smollm2-135m`; skipped without it.

use std::path::PathBuf;

use peft_models::gguf::read_gguf_tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    texts: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

/// The GGUF named by `PEFT_SMOLLM2_GGUF`, else the zoo cache's copy, else `None` (the test is skipped).
fn smollm2_gguf() -> Option<PathBuf> {
    peft_models::zoo::local_path("smollm2-135m", "PEFT_SMOLLM2_GGUF")
}

fn fixture() -> Fixture {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/smollm2/tokenizer_ids.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the committed fixture")).unwrap()
}

#[test]
fn ids_equal_transformers_and_decode_round_trips() {
    let Some(gguf) = smollm2_gguf() else {
        eprintln!(
            "SKIPPED: no SmolLM2 GGUF (set PEFT_SMOLLM2_GGUF or run `peft fetch smollm2-135m`)"
        );
        return;
    };
    let tok = read_gguf_tokenizer(&gguf).unwrap();
    assert_eq!(
        (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id),
        (Some(1), Some(2), Some(2))
    );
    let cases = fixture().texts;
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
        let decoded = tok.tokenizer.decode(enc.get_ids(), false).unwrap();
        if decoded != case.text {
            failures.push(format!("{:?} decodes to {decoded:?}", case.text));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} texts differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
