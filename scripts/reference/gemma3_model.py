"""Writes the Gemma-3 parity fixtures that `peft-models/tests/gemma3_parity.rs` checks.

Two fixtures, both computed by Hugging Face transformers (eager attention, CPU, float32):

- `tiny-gemma3/`          a seeded random Gemma3ForCausalLM (`model_type = "gemma3_text"`) saved with
                          save_pretrained: hidden 24, 2 layers (one sliding with a window of 3, one global), grouped-query
                          attention, head_dim 16 (not hidden / heads), query_pre_attn_scalar 24 (not head_dim),
                          different local and global RoPE bases, tied head; plus `logits.json`: the float32 logits
                          for a single sequence, a right-padded batch with its mask, and that batch after a seeded
                          key/value prefix given as the `DynamicCache` HF PEFT's prefix tuning builds for Gemma-3
                          (the mask extended by the prefix's ones).
- `tiny-gemma3/softcap/`  the same architecture with attention and final logit soft-capping set (Gemma-2 style,
                          None in Gemma-3 checkpoints; transformers' Gemma-3 applies only the final one, its
                          attention never reads `attn_logit_softcapping`), stored as float16 (the reference
                          computes in float32 from the rounded weights): single and padded-batch cases.
- `gemma3-270m/logits.json`  (only with a GGUF path) transformers loading the real Gemma-3-270M GGUF
                          (`from_pretrained(dir, gguf_file=..., dtype=float32)`, eager attention) on a few short
                          texts tokenized by transformers' GGUF tokenizer: the input ids and the 20 largest logits
                          (id, value) at every position.

Logits are rounded to 6 decimals (a fixture must stay small; the checks allow 1e-5 and 1e-3).

Set up the Python side once (CPU wheels are enough):

    python3 -m venv peft-ref-venv
    peft-ref-venv/bin/pip install torch transformers gguf sentencepiece safetensors

then, from the repository root:

    peft-ref-venv/bin/python scripts/reference/gemma3_model.py [--gguf PATH/TO/gemma-3-270m-q4_k_m.gguf] [--out OUT]

OUT defaults to `fixtures/` at the repository root. The output is deterministic for a given torch /
transformers version (seeded, CPU, float32).
"""

import argparse
import inspect
import json
from pathlib import Path

import torch
import transformers
from transformers import DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB = 100
PREFIX_LEN = 3
TOP_K = 20
DIGITS = 6

SINGLE = [[5, 17, 42, 8, 99, 0, 63]]
BATCH = [[11, 22, 33, 44, 55, 66], [7, 8, 9, 1, 1, 1]]
BATCH_MASK = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]

# Texts of the real-model fixture: short, so that every position's top-20 fits in the fixture.
TEXTS = [
    "The capital of France is",
    "def add(a, b):\n    return",
    "Le chat est sur la table, et le chien",
    "Gemma is a family of lightweight open models built from the same research",
]


def tiny_config(**extra) -> Gemma3TextConfig:
    return Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=24, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        max_position_embeddings=64, rms_norm_eps=1e-6, sliding_window=3,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 500.0},
        },
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        attn_implementation="eager", **extra,
    )


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights that make every term matter (HF's init zeroes Gemma's norm weights)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(0.3 * noise)  # the raw `w` of `1 + w`
            elif "embed_tokens" in name:
                p.copy_(0.1 * noise)  # scaled by sqrt(32) on the way in
            else:
                p.copy_(0.15 * noise)


def rounded(x):
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return round(float(x), DIGITS)


def logits_of(model, ids, mask, cache=None):
    # transformers 5 names the past key values `cache`; 4.x called them `past_key_values`.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
            use_cache=cache is not None, **{cache_arg: cache},
        )
    return rounded(out.logits.float().tolist())


def plain_cases(model):
    return [
        {"name": "single", "input_ids": SINGLE, "attention_mask": [[1] * len(SINGLE[0])],
         "logits": logits_of(model, SINGLE, [[1] * len(SINGLE[0])])},
        {"name": "right_padded_batch", "input_ids": BATCH, "attention_mask": BATCH_MASK,
         "logits": logits_of(model, BATCH, BATCH_MASK)},
    ]


def prefix_case(model, seed: int):
    """A random key/value prefix per layer, in the cache HF PEFT's prefix tuning builds for Gemma-3
    (`DynamicCache(config)` filled by `update` with cache positions 0..P): sliding layers keep it in their
    sliding-window cache layer, so the window applies to prefix positions too."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    shape = (len(BATCH), cfg.num_key_value_heads, PREFIX_LEN, cfg.head_dim)
    keys = [torch.randn(shape, generator=gen) for _ in range(cfg.num_hidden_layers)]
    values = [torch.randn(shape, generator=gen) for _ in range(cfg.num_hidden_layers)]
    cache = DynamicCache(config=cfg)
    for layer, (k, v) in enumerate(zip(keys, values)):
        cache.update(k, v, layer, cache_kwargs={"cache_position": torch.arange(PREFIX_LEN)})
    mask = [[1] * PREFIX_LEN + row for row in BATCH_MASK]
    return {
        "name": "batch_with_kv_prefix", "input_ids": BATCH, "attention_mask": mask,
        "prefix": {"len": PREFIX_LEN, "key": [k.tolist() for k in keys], "value": [v.tolist() for v in values]},
        "logits": logits_of(model, BATCH, mask, cache),
    }


def write(folder: Path, model, cases, save_kwargs=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, **(save_kwargs or {}))
    record = {
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "num_parameters": model.num_parameters(), "cases": cases,
    }
    (folder / "logits.json").write_text(json.dumps(record))
    for f in sorted(folder.iterdir()):
        if f.is_file():
            print(f"  {f.relative_to(folder.parent)}: {f.stat().st_size} bytes")


def tiny(out: Path) -> None:
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(tiny_config()).eval()
    randomise(model, 7)
    write(out / "tiny-gemma3", model, plain_cases(model) + [prefix_case(model, seed=8)])


def tiny_softcap(out: Path) -> None:
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(tiny_config(attn_logit_softcapping=2.0, final_logit_softcapping=3.0)).eval()
    randomise(model, 9)
    # Stored as float16; the reference logits come from the same rounded weights computed in float32.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    cases = plain_cases(model)
    write(out / "tiny-gemma3" / "softcap", model.half(), cases)


def real(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf.resolve()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    cases = []
    with torch.no_grad():
        for text in TEXTS:
            ids = tokenizer(text)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0].float()
            values, indices = torch.topk(logits, TOP_K, dim=-1)
            top = [[[int(i), round(float(v), DIGITS)] for i, v in zip(row_i, row_v)]
                   for row_i, row_v in zip(indices, values)]
            cases.append({"text": text, "input_ids": ids, "top": top})
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "gguf_file": gguf.name,
            "top_k": TOP_K, "model_type": model.config.model_type}
    folder = out / "gemma3-270m"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    text = f'{{"meta": {json.dumps(meta)},\n "cases": [\n{lines}\n]}}\n'
    json.loads(text)
    (folder / "logits.json").write_text(text, encoding="utf-8")
    print(f"  gemma3-270m/logits.json: {(folder / 'logits.json').stat().st_size} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="the Gemma-3-270M GGUF; without it only the tiny fixtures are written")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "fixtures")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    tiny(args.out)
    tiny_softcap(args.out)
    if args.gguf:
        real(args.gguf, args.out)


if __name__ == "__main__":
    main()
