//! Gemma's SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`, architectures `gemma`, `gemma2`,
//! `gemma3`), rebuilt as transformers' `GemmaTokenizer` does from a GGUF:
//!
//! - a BPE model over the vocabulary, with `<unk>`, fused unknowns and byte fallback (`<0x00>`..`<0xFF>`);
//! - a token made only of whitespace that holds a space (`"  "`) is respelled as that many `▁`, the marker the
//!   normalizer writes, so that runs of spaces find their tokens;
//! - the file lists no merges, so they are derived from the vocabulary: every token cut in two pieces that are
//!   both tokens, ordered by the token's position in the file (Gemma's scores do not follow its merge order),
//!   then the longer left piece first;
//! - the normalizer replaces `' '` by `▁` (no prefix space is prepended); the pre-tokenizer splits on `' '`,
//!   which the normalizer has already replaced, so that each stretch between added tokens is one word; the
//!   decoder maps `▁` back to a space, then byte tokens back to bytes;
//! - CONTROL tokens are special added tokens, USER_DEFINED ones found in the vocabulary (`\n`, `\n\n`, ..)
//!   plain added tokens, both matched whole on the raw text.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::{bad, special, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};
use crate::error::{ModelError, Result};

/// `general.architecture` values whose SentencePiece vocabulary is rebuilt here.
pub(super) const GEMMA_ARCHITECTURES: &[&str] = &["gemma", "gemma2", "gemma3"];

/// SentencePiece's word-boundary marker, which stands for a space inside tokens.
const SPACE_MARKER: char = '▁';

/// The unknown token `GemmaTokenizer` names, whatever id the file gives it.
const UNK: &str = "<unk>";

/// The special tokens `GemmaTokenizer` registers by name; only those the vocabulary has are registered here,
/// so that no id beyond the embedding table appears.
const GEMMA_NAMED: &[&str] = &["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"];

/// Builds Gemma's tokenizer (no post-processor: BOS / EOS are the caller's). `named` are the ids the file
/// names (bos, eos, unk, pad), registered as special tokens as transformers registers them.
pub(super) fn gemma(tokens: &[String], types: &[i64], named: &[u32]) -> Result<Tokenizer> {
    let spelled: Vec<String> = tokens.iter().map(|t| respell(t)).collect();
    // A later duplicate wins, as in transformers' dict comprehension.
    let mut vocab = Vocab::with_capacity(spelled.len());
    for (id, token) in spelled.iter().enumerate() {
        vocab.insert(token.clone(), id as u32);
    }
    let merges = merges_by_position(&spelled, &vocab);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(UNK.into())
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| {
            bad(format!(
                "the SentencePiece vocabulary does not make a BPE model: {e}"
            ))
        })?;

    let mut tokenizer = Tokenizer::new(bpe);
    let space = SPACE_MARKER.to_string();
    let normalizer = Replace::new(" ", space.as_str())
        .map_err(|e| bad(format!("building the space normalizer: {e}")))?;
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| bad(format!("setting the space normalizer: {e}")))?;
    let split = Split::new(
        SplitPattern::String(" ".into()),
        SplitDelimiterBehavior::MergedWithPrevious,
        false,
    )
    .map_err(|e| bad(format!("building the space split: {e}")))?;
    tokenizer.with_pre_tokenizer(Some(split));
    let unspace = Replace::new(space.as_str(), " ")
        .map_err(|e| bad(format!("building the space decoder: {e}")))?;
    tokenizer.with_decoder(Some(DecoderSequence::new(vec![
        unspace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));

    let adding = |e: tokenizers::Error| {
        ModelError::Tokenizer(format!("adding the GGUF's special tokens: {e}"))
    };
    // transformers' order: the class's named specials, the file's CONTROL tokens (as the file spells them),
    // its USER_DEFINED tokens that the vocabulary holds, then the file's named specials again.
    let class_named: Vec<AddedToken> = GEMMA_NAMED
        .iter()
        .filter(|t| tokenizer.token_to_id(t).is_some())
        .map(|t| special(t))
        .collect();
    tokenizer.add_special_tokens(class_named).map_err(adding)?;
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, ty)| **ty == TOKEN_TYPE_CONTROL)
        .map(|(t, _)| special(t))
        .collect();
    tokenizer.add_special_tokens(control).map_err(adding)?;
    // "Holds" as transformers' `get_vocab()` says: the respelled vocabulary and the tokens added so far.
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(t, ty)| **ty == TOKEN_TYPE_USER_DEFINED && tokenizer.token_to_id(t).is_some())
        .map(|(t, _)| AddedToken::from(t.as_str(), false).normalized(false))
        .collect();
    tokenizer.add_tokens(user_defined).map_err(adding)?;
    let file_named: Vec<AddedToken> = named
        .iter()
        .map(|&id| special(&tokens[id as usize]))
        .collect();
    tokenizer.add_special_tokens(file_named).map_err(adding)?;
    Ok(tokenizer)
}

/// Gemma files store a token of two or more spaces as real spaces, which the normalizer never leaves in the
/// text: such an all-whitespace token holding a space becomes one `▁` per character, as transformers does.
fn respell(token: &str) -> String {
    if token.contains(' ') && token.chars().all(python_isspace) {
        SPACE_MARKER.to_string().repeat(token.chars().count())
    } else {
        token.to_string()
    }
}

/// Python's `str.isspace` (what transformers' `strip()` removes): Unicode White_Space plus the four
/// separator controls U+001C..U+001F.
fn python_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The merges a vocabulary without any implies: each token cut at every character boundary where both pieces
/// are tokens, tokens in the order of their (last) position in the file, a token's cuts with the longest left
/// piece first. A token's rank is its position, so that BPE rebuilds the earlier token first.
fn merges_by_position(spelled: &[String], vocab: &Vocab) -> Vec<(String, String)> {
    let mut merges = Vec::new();
    for (id, token) in spelled.iter().enumerate() {
        // A token spelled twice takes the later position (the one the vocabulary keeps).
        if vocab.get(token) != Some(&(id as u32)) {
            continue;
        }
        // Character boundaries from the last one down, the whole-token boundary 0 left out.
        for (cut, _) in token.char_indices().rev().filter(|&(i, _)| i > 0) {
            let (left, right) = token.split_at(cut);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push((left.to_string(), right.to_string()));
            }
        }
    }
    merges
}

/// Whether transformers rebuilds this file's SentencePiece vocabulary as Gemma's.
pub(super) fn is_gemma(architecture: Option<&str>) -> bool {
    architecture.is_some_and(|a| GEMMA_ARCHITECTURES.contains(&a))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::quantized::gguf_file::Value;

    use super::super::tokenizer_from_metadata;
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn respelling_touches_only_whitespace_tokens_with_a_space() {
        assert_eq!(respell("   "), "▁▁▁");
        assert_eq!(respell(" \n"), "▁▁");
        assert_eq!(respell("\n\n"), "\n\n");
        assert_eq!(respell(" a"), " a");
        assert_eq!(respell("▁"), "▁");
    }

    #[test]
    fn merges_follow_file_position_then_the_longer_left_piece() {
        let spelled = strings(&["a", "b", "c", "abc", "ab", "bc"]);
        let vocab: Vocab = spelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = merges_by_position(&spelled, &vocab);
        let want = [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")];
        assert_eq!(
            merges,
            want.map(|(l, r)| (l.to_string(), r.to_string())).to_vec()
        );
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        let spelled = strings(&["é", "▁", "▁é"]);
        let vocab: Vocab = spelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        assert_eq!(
            merges_by_position(&spelled, &vocab),
            vec![("▁".to_string(), "é".to_string())]
        );
    }

    #[test]
    fn a_duplicate_token_keeps_its_later_position() {
        // `"  "` respells to `▁▁`, which the file also lists later: the later id wins, and its merge is ranked
        // there, after `▁x`'s.
        let tokens = strings(&["<unk>", "▁", "x", "  ", "▁x", "▁▁"]);
        let spelled: Vec<String> = tokens.iter().map(|t| respell(t)).collect();
        let vocab: Vocab = spelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        assert_eq!(vocab["▁▁"], 5);
        let merges = merges_by_position(&spelled, &vocab);
        assert_eq!(
            merges,
            vec![
                ("▁".to_string(), "x".to_string()),
                ("▁".to_string(), "▁".to_string())
            ]
        );
    }

    /// A toy Gemma file: five named specials, `<start_of_turn>`, `\n` (user-defined), the 256 byte tokens, then
    /// `▁`, `a`, `b`, `▁a`, `ab` and a run of two spaces stored as spaces.
    fn gemma_metadata() -> HashMap<String, Value> {
        let mut tokens = strings(&["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "\n"]);
        let mut types = vec![3, 3, 3, 2, 3, 4];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        types.extend([6; 256]);
        tokens.extend(strings(&["▁", "a", "b", "▁a", "ab", "  "]));
        types.extend([1, 1, 1, 1, 1, 4]);
        HashMap::from([
            (
                "general.architecture".to_string(),
                Value::String("gemma3".into()),
            ),
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("llama".into()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(2)),
            ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(1)),
            ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(3)),
            ("tokenizer.ggml.padding_token_id".to_string(), Value::U32(0)),
        ])
    }

    /// Ids of the toy file: the byte token of `b`, and the words after the bytes.
    fn byte(b: u8) -> u32 {
        6 + b as u32
    }
    const SPACE: u32 = 262;
    const A: u32 = 263;
    const B: u32 = 264;
    const SPACE_A: u32 = 265;
    const AB: u32 = 266;
    const TWO_SPACES: u32 = 267;

    #[test]
    fn merge_order_is_the_files_order() {
        let tok = tokenizer_from_metadata(&gemma_metadata())
            .unwrap()
            .tokenizer;
        // `▁a` precedes `ab` in the file, so `▁ a` merges first and `a b` only at the start: scoring the other
        // way would give `ab ▁ ab`.
        let enc = tok.encode("ab ab", true).unwrap();
        assert_eq!(enc.get_ids(), &[2, AB, SPACE_A, B]);
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "<bos>ab ab");
    }

    #[test]
    fn spaces_are_markers_without_a_prefix_and_runs_find_their_token() {
        let tok = tokenizer_from_metadata(&gemma_metadata())
            .unwrap()
            .tokenizer;
        assert_eq!(tok.encode("a", false).unwrap().get_ids(), &[A]);
        let enc = tok.encode("   a ", false).unwrap();
        assert_eq!(enc.get_ids(), &[TWO_SPACES, SPACE_A, SPACE]);
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "   a ");
    }

    #[test]
    fn specials_added_tokens_and_byte_fallback() {
        let tok = tokenizer_from_metadata(&gemma_metadata())
            .unwrap()
            .tokenizer;
        let text = "<start_of_turn>a\nñ<eos>";
        let enc = tok.encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), &[2, 4, A, 5, byte(0xC3), byte(0xB1), 1]);
        assert_eq!(
            tok.decode(enc.get_ids(), false).unwrap(),
            format!("<bos>{text}")
        );
        // CONTROL tokens are special, the user-defined newline is not.
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "a\nñ");
    }

    #[test]
    fn bos_by_default_and_as_the_file_says() {
        let mut md = gemma_metadata();
        assert_eq!(tok_ids(&md, "a"), [2, A]);
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
        md.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
        assert_eq!(tok_ids(&md, "a"), [A, 1]);
    }

    fn tok_ids(md: &HashMap<String, Value>, text: &str) -> Vec<u32> {
        let tok = tokenizer_from_metadata(md).unwrap().tokenizer;
        tok.encode(text, true).unwrap().get_ids().to_vec()
    }

    #[test]
    fn other_sentencepiece_files_are_refused_by_name() {
        let mut md = gemma_metadata();
        md.insert("general.architecture".into(), Value::String("llama".into()));
        let err = tokenizer_from_metadata(&md).unwrap_err().to_string();
        assert!(err.contains("`llama`") && err.contains("Gemma"), "{err}");
        let mut md = gemma_metadata();
        md.insert(
            "tokenizer.ggml.pre".into(),
            Value::String("llama-bpe".into()),
        );
        let err = tokenizer_from_metadata(&md).unwrap_err().to_string();
        assert!(err.contains("llama-bpe"), "{err}");
    }

    #[test]
    fn only_gemma_architectures_are_rebuilt() {
        assert!(is_gemma(Some("gemma3")));
        assert!(!is_gemma(Some("llama")));
        assert!(!is_gemma(None));
    }
}
