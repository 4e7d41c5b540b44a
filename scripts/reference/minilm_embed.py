"""Writes `fixtures/minilm/embeddings.json`, which `peft-models/tests/minilm.rs` checks against our BERT on the real
all-MiniLM-L6-v2 weights (the zoo's `minilm-l6`).

For each of SENTENCES (punctuation, accents and other non-ASCII letters, an emoji, a long-ish sentence) it records:

- `input_ids`: the tokenizer's ids with special tokens (`[CLS] ... [SEP]`), from transformers' AutoTokenizer over
  the folder's `tokenizer.json` (checked equal to the `tokenizers` library's encoding with padding switched off:
  that `tokenizer.json` pads every encoding to 128 by itself);
- `embedding`: the sentence-transformers embedding, computed as its modules.json prescribes (Transformer ->
  Pooling with `pooling_mode_mean_tokens` -> Normalize): the mean of BertModel's `last_hidden_state` over the
  non-padding tokens, L2-normalised. Each sentence is encoded alone (float32, eager attention);

and `pooler_output` of the first sentence (BertModel's pooler: tanh(pooler.dense(state of [CLS]))).
No weights are written: the folder comes from the zoo cache.

Set up the Python side once (see tiny_models.py), fetch the model with `peft fetch minilm-l6` (into
`~/.cache/peft/models/minilm-l6`, or `$PEFT_HOME/models/minilm-l6`), then, from the repository root:

    peft-ref-venv/bin/python scripts/reference/minilm_embed.py [MODEL_FOLDER] [OUT_JSON]

The output is deterministic for a given torch / transformers version.
"""

import json
import os
import sys
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoTokenizer, BertModel

REPO_ROOT = Path(__file__).resolve().parents[2]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Crème brûlée à Zürich — naïve café!",
    "I loved this movie so much 😍 would watch again",
    "Wait... what?! (It's 3:45 p.m., isn't it?) #confused @friend",
    "Parameter-efficient fine-tuning adapts a large frozen pretrained model to a new task by training only a "
    "small number of extra parameters, such as low-rank updates to the attention projections, learned prompt "
    "vectors prepended to the input, or prefixes added to every layer's keys and values, which keeps memory "
    "and storage costs low while matching full fine-tuning on many benchmarks.",
    "Καλημέρα κόσμε, 東京は晴れです.",
]


def default_folder() -> Path:
    home = os.environ.get("PEFT_HOME") or str(Path.home() / ".cache" / "peft")
    return Path(home) / "models" / "minilm-l6"


@torch.no_grad()
def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else default_folder()
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO_ROOT / "fixtures" / "minilm" / "embeddings.json"
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"], modules
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"], pooling

    tokenizer = AutoTokenizer.from_pretrained(folder)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    raw.no_padding()
    model = BertModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()

    cases = []
    pooler_output = None
    for text in SENTENCES:
        ids = tokenizer(text)["input_ids"]
        assert ids == raw.encode(text).ids, (text, ids, raw.encode(text).ids)
        result = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        mask = torch.ones(1, len(ids), 1)
        mean = (result.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        embedding = torch.nn.functional.normalize(mean, p=2, dim=1)[0]
        if pooler_output is None:
            pooler_output = result.pooler_output[0].tolist()
        cases.append({
            "text": text,
            "tokens": tokenizer.convert_ids_to_tokens(ids),
            "input_ids": ids,
            "embedding": embedding.tolist(),
        })
        print(f"{len(ids):3} tokens: {text[:60]}")
    record = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (zoo: minilm-l6)",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "pooler_output_of_first": pooler_output,
        "cases": cases,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
