"""Writes the Gemma-3 tokenizer parity fixture that `peft-models/tests/gemma3_tokenizer.rs` checks.

Hugging Face transformers is the reference: `AutoTokenizer.from_pretrained(folder, gguf_file=name)` rebuilds
Gemma's SentencePiece tokenizer from the GGUF metadata alone (BPE with byte fallback, merges derived from the
vocabulary), exactly as `peft_models::gguf_tokenizer` must.

Written under OUT (default: `fixtures/gemma3-270m/` at the repository root):

- `tokenizer_ids.json`  {"meta": {.., "added_tokens"}, "texts": [{"text", "ids", "decoded"}, ...]}: ids with
                         special tokens added as transformers does by default (`add_special_tokens=True`), and
                         `tokenizer.decode(ids)` (special tokens kept). `meta.added_tokens` summarises the added
                         vocabulary: how many are special, and the ids of those that are not.

Set up the Python side once (CPU wheels are enough):

    python3 -m venv peft-ref-venv
    peft-ref-venv/bin/pip install torch transformers gguf sentencepiece

Get the GGUF (Gemma-3-270M, Q4_K_M; `peft fetch gemma3-270m` once the zoo has it), then, from the repository
root:

    peft-ref-venv/bin/python scripts/reference/gemma3_tokenizer.py PATH/TO/gemma-3-270m-q4_k_m.gguf [OUT]

transformers derives the half a million merges in Python: loading takes a minute or two.
"""

import json
import sys
from pathlib import Path

import transformers
from transformers import AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]

CHAT = "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"

# Edge cases of a SentencePiece vocabulary: spaces as `▁` (no prefix space), runs of spaces and newlines as
# their own tokens, byte fallback, special and user-defined tokens matched whole.
TEXTS = [
    "",
    "A",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "several    spaces   between     words",
    "                                  thirty-four spaces",
    "line one\nline two\n\nline four\r\n\tindented",
    "\n\n\n",
    "\ttabs\tand\ttabs\t\t",
    "Numbers: 1234567890, 3.14159 and 2024-06-01; 99999999999999999999",
    "Café crème brûlée à la française, naïve façade: déjà vu",
    "ÆØÅ æøå ß ẞ ﬁ ligature",
    "日本語のテキストと中文文本，还有한국어",
    "Русский текст, Ελληνικά, العربية, עברית",
    "Emoji 🙂🚀👍🏽 and a family 👨\u200d👩\u200d👧 and a flag 🇫🇷",
    "Zero\u200bwidth and combining e\u0301 vs é",
    "Rare scripts: 𓀀𓁐 𐌰𐌱 ꙮ \U0010fffd \x00\x01\x7f",
    "Math: ∑_{i=1}^{n} i² = n(n+1)/2 ≤ ∞",
    "def f(x):\n    return x ** 2  # square\n",
    "URL https://example.com/path?q=1&r=2#frag",
    CHAT,
    "<bos>already has a bos<eos>",
    "mixed<end_of_turn>inside text<start_of_turn>",
    "<start_of_turn is not a special token>",
    "[multimodal] <unused0> <mask>",
    "a\u00a0non-breaking\u3000ideographic space",
    "▁ a literal marker ▁▁",
    "It's, we'll, they're, I'd, you've, SHE'S",
]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    gguf = Path(sys.argv[1]).resolve()
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO_ROOT / "fixtures" / "gemma3-270m"
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    rows = []
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        rows.append({"text": text, "ids": ids, "decoded": tokenizer.decode(ids)})
    added = tokenizer.backend_tokenizer.get_added_tokens_decoder()
    meta = {
        "transformers": transformers.__version__,
        "gguf_file": gguf.name,
        "vocab_size": tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True),
        "added_tokens": {
            "special": sum(1 for t in added.values() if t.special),
            "not_special_ids": sorted(i for i, t in added.items() if not t.special),
        },
    }
    write(out / "tokenizer_ids.json", meta, "texts", rows)


def write(path, meta, key, rows):
    """`{"meta": .., key: [rows]}` with one row a line: small diffs when the reference changes."""
    lines = ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in rows)
    text = f'{{"meta": {json.dumps(meta)},\n "{key}": [\n{lines}\n]}}\n'
    json.loads(text)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
