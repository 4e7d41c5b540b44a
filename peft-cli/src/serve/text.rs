//! Text out of generated tokens, one piece at a time: [`IncrementalDecoder`] turns each new token into the
//! text it adds (never half a multi-byte character: a token that ends inside one adds nothing until the
//! character is whole), and [`StopStrings`] ends the text where a stop string appears, holding back a tail
//! that might be the start of one, so that no piece sent to a client is ever taken back. The pieces of a
//! stream add up to the text of the whole generation.
//!
//! ```
//! use peft_cli::serve::text::StopStrings;
//! let mut stops = StopStrings::new(vec!["\n\n".to_string()]);
//! // A lone newline may start the stop string: it waits.
//! assert_eq!(stops.feed("Hello\n"), ("Hello".to_string(), false));
//! // The stop string is found: the text ends before it, and it is not sent.
//! assert_eq!(stops.feed("\nBye"), (String::new(), true));
//! ```

use std::sync::Arc;

use tokenizers::Tokenizer;

/// Decodes a growing list of token ids piece by piece. Each step decodes a short window only (the tokens of
/// the last piece and the new ones), so a long generation costs no more per token than a short one.
pub struct IncrementalDecoder {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    /// The window starts here: the tokens of the last piece sent, kept so that the tokenizer sees what comes
    /// before the new tokens (a leading space, the first bytes of a character).
    prefix_index: usize,
    /// Tokens before this index have been turned into text.
    read_index: usize,
}

impl IncrementalDecoder {
    /// A decoder with no tokens yet; special tokens are skipped, as `peft generate` does.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        IncrementalDecoder {
            tokenizer,
            ids: Vec::new(),
            prefix_index: 0,
            read_index: 0,
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| format!("decoding the generated tokens: {e}"))
    }

    /// The text `token` adds; empty while it ends inside a character (or adds no text).
    pub fn push(&mut self, token: u32) -> Result<String, String> {
        self.ids.push(token);
        let before = self.decode(&self.ids[self.prefix_index..self.read_index])?;
        let now = self.decode(&self.ids[self.prefix_index..])?;
        // A replacement character at the end is a character whose last bytes are still to come.
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            self.prefix_index = self.read_index;
            self.read_index = self.ids.len();
            return Ok(now[before.len()..].to_string());
        }
        Ok(String::new())
    }

    /// The text of tokens pushed but not yet turned into text (an unfinished character at the very end comes
    /// out as the replacement character, as a whole decode gives it).
    pub fn finish(&mut self) -> Result<String, String> {
        if self.read_index == self.ids.len() {
            return Ok(String::new());
        }
        let before = self.decode(&self.ids[self.prefix_index..self.read_index])?;
        let now = self.decode(&self.ids[self.prefix_index..])?;
        self.prefix_index = self.read_index;
        self.read_index = self.ids.len();
        Ok(now
            .strip_prefix(before.as_str())
            .unwrap_or_default()
            .to_string())
    }
}

/// Cuts a text at the first of some stop strings, as OpenAI's `stop` does (the stop string is not part of
/// the text). Text is released only once it cannot be the start of a stop string.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Text received but not released: a tail that may begin a stop string.
    pending: String,
    stopped: bool,
}

impl StopStrings {
    /// Watches for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Adds `piece`; returns the text released by it, and whether a stop string was found (then the text is
    /// over, and later pieces are ignored).
    pub fn feed(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        // Released text never ends with the start of a stop string nor holds one, so a stop string can only
        // begin inside the pending text.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.stopped = true;
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| held_back(&self.pending, s))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The text held back, released at the end of the generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// The length of the longest end of `text` that is a proper beginning of `stop`.
fn held_back(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .filter(|&k| stop.is_char_boundary(k))
        .find(|&k| text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// A byte-level tokenizer with one token per byte (GPT-2's byte-to-character table, no merges): every
    /// character of more than one byte spans several tokens.
    fn byte_tokenizer() -> Arc<Tokenizer> {
        let printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
        let mut vocab = serde_json::Map::new();
        let mut extra = 0;
        for b in 0..=255u32 {
            let c = if printable.contains(&b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            };
            vocab.insert(c.to_string(), b.into());
        }
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
            "trim_offsets": true, "use_regex": true});
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
            "model": {"type": "BPE", "vocab": vocab, "merges": []}
        });
        Arc::new(Tokenizer::from_str(&json.to_string()).unwrap())
    }

    #[test]
    fn pieces_never_split_a_character_and_add_up_to_the_whole_decode() {
        let tok = byte_tokenizer();
        let text = "héllo 日本 ok 🙂!";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), text.len(), "one token per byte");
        let mut dec = IncrementalDecoder::new(tok.clone());
        let mut pieces = Vec::new();
        for &id in &ids {
            let piece = dec.push(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            pieces.push(piece);
        }
        pieces.push(dec.finish().unwrap());
        assert_eq!(pieces.concat(), text);
        // The three bytes of 日 give nothing, nothing, then the character.
        let at = text.find('日').unwrap();
        assert_eq!(pieces[at..at + 3], ["", "", "日"]);
        assert_eq!(pieces[at + 3..at + 6], ["", "", "本"]);
    }

    #[test]
    fn an_unfinished_character_comes_out_at_the_end_as_a_whole_decode_gives_it() {
        let tok = byte_tokenizer();
        let ids = tok.encode("a日", false).unwrap().get_ids().to_vec();
        let cut = &ids[..ids.len() - 1];
        let mut dec = IncrementalDecoder::new(tok.clone());
        let mut out = String::new();
        for &id in cut {
            out += &dec.push(id).unwrap();
        }
        assert_eq!(out, "a");
        out += &dec.finish().unwrap();
        assert_eq!(out, tok.decode(cut, true).unwrap());
    }

    #[test]
    fn stop_strings_cut_the_text_and_hold_back_only_what_may_start_one() {
        let mut s = StopStrings::new(vec!["END".into(), "xy".into(), String::new()]);
        assert_eq!(s.feed("abc E"), ("abc ".into(), false));
        assert_eq!(s.feed("N"), (String::new(), false));
        // "ENx" cannot start END any more; "x" may start "xy".
        assert_eq!(s.feed("x"), ("EN".into(), false));
        assert_eq!(s.feed("z"), ("xz".into(), false));
        assert_eq!(s.feed("q EN"), ("q ".into(), false));
        assert_eq!(s.feed("Dtail"), (String::new(), true));
        assert_eq!(s.feed("more"), (String::new(), true));
        assert_eq!(s.flush(), "");

        // The earliest stop string wins, whatever the order given.
        let mut s = StopStrings::new(vec!["cd".into(), "b".into()]);
        assert_eq!(s.feed("abcd"), ("a".into(), true));

        // At the end, what was held back is the text's end.
        let mut s = StopStrings::new(vec!["日本語".into()]);
        assert_eq!(s.feed("x日本"), ("x".into(), false));
        assert_eq!(s.flush(), "日本");

        // No stop strings: everything goes out at once.
        let mut s = StopStrings::new(Vec::new());
        assert_eq!(s.feed("a b"), ("a b".into(), false));
    }
}
