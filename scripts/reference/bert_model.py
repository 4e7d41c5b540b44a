"""Writes the tiny BERT parity fixture that `peft-models/tests/bert_parity.rs` checks.

The fixture is a Hugging Face model folder, `fixtures/tiny-bert/` (`config.json`, `model.safetensors`, saved by a
bare `BertModel` with its pooler, so tensor names carry no `bert.` prefix), plus `states.json`: the float32
last hidden states (`last_hidden_state`, after the last layer's output LayerNorm) and pooler outputs
(`pooler_output`, tanh of `pooler.dense` over position 0) that transformers computes (eager attention) for:

- `single`                a single unpadded sequence, no token type ids (all zeros);
- `right_padded_batch`    a right-padded batch of two with its attention mask and token type ids (some 1s);
- `batch_with_kv_prefix`  the same batch with a seeded random key/value prefix of PREFIX_LEN positions per layer,
                          passed as a `DynamicCache` (the mask extended by PREFIX_LEN ones). transformers 5.24's
                          BertModel takes a cache even as an encoder: the self-attention prepends the cached keys
                          and values, the position ids start at the cache length, and the bidirectional mask is
                          sized from the 2D attention mask (the "prefix tuning in PEFT" case of masking_utils);
- `batch_with_virtual_tokens`  the batch with VIRTUAL seeded random embeddings prepended to the word embeddings
                          (`inputs_embeds`), their mask 1 and token type 0, as HF PEFT's prompt tuning does; the
                          pooler then reads the first virtual token.

Set up the Python side once (CPU wheels are enough):

    python3 -m venv peft-ref-venv
    peft-ref-venv/bin/pip install torch transformers peft safetensors tokenizers

then, from the repository root:

    peft-ref-venv/bin/python scripts/reference/bert_model.py [OUT]

which writes OUT/tiny-bert/ (default OUT: `fixtures/` at the repository root). The output is deterministic for a
given torch / transformers version (seeded, CPU, float32).
"""

import inspect
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertModel, DynamicCache

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB = 100
PREFIX_LEN = 3
VIRTUAL = 2

SINGLE = [[2, 17, 42, 8, 99, 5, 63, 3]]
BATCH = [[2, 22, 33, 44, 55, 3], [2, 8, 9, 3, 0, 0]]
BATCH_MASK = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
BATCH_TYPES = [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]]


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Replaces HF's init (std 0.02, unit norms, zero biases) by weights that make every term matter, as
    tiny_models.py does (BERT spells its norms `LayerNorm`)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "LayerNorm" in name:
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "_embeddings" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.15 * noise)


def states(model, mask, token_type_ids=None, input_ids=None, inputs_embeds=None, cache=None):
    # transformers 5 names the past key values `cache`; 4.x called them `past_key_values`.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kwargs = {"attention_mask": torch.tensor(mask)}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.tensor(token_type_ids)
    if input_ids is not None:
        kwargs["input_ids"] = torch.tensor(input_ids)
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds
    if cache is not None:
        kwargs[cache_arg] = cache
    with torch.no_grad():
        out = model(**kwargs)
    return {
        "last_hidden_state": out.last_hidden_state.float().tolist(),
        "pooler_output": out.pooler_output.float().tolist(),
    }


def prefix_case(model, seed: int):
    """A random key/value prefix of PREFIX_LEN positions per layer, fed as past key values."""
    cfg = model.config
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    gen = torch.Generator().manual_seed(seed)
    batch = len(BATCH)
    keys = [torch.randn(batch, heads, PREFIX_LEN, head_dim, generator=gen) for _ in range(cfg.num_hidden_layers)]
    values = [torch.randn(batch, heads, PREFIX_LEN, head_dim, generator=gen) for _ in range(cfg.num_hidden_layers)]
    cache = DynamicCache(ddp_cache_data=list(zip(keys, values)), config=cfg)
    mask = [[1] * PREFIX_LEN + row for row in BATCH_MASK]
    result = states(model, mask, BATCH_TYPES, input_ids=BATCH, cache=cache)
    # The encoder must really have read the cache: the states differ from the plain batch's.
    plain = states(model, BATCH_MASK, BATCH_TYPES, input_ids=BATCH)
    assert result["last_hidden_state"] != plain["last_hidden_state"], "BertModel ignored the cache"
    return {
        "name": "batch_with_kv_prefix",
        "input_ids": BATCH,
        "attention_mask": mask,
        "token_type_ids": BATCH_TYPES,
        "prefix": {
            "len": PREFIX_LEN,
            "key": [k.tolist() for k in keys],
            "value": [v.tolist() for v in values],
        },
        **result,
    }


def virtual_case(model, seed: int):
    """VIRTUAL random embeddings prepended to the word embeddings, as HF PEFT's prompt tuning does: mask 1,
    token type 0, positions counted from the first virtual token."""
    gen = torch.Generator().manual_seed(seed)
    prompt = 0.5 * torch.randn(VIRTUAL, model.config.hidden_size, generator=gen)
    batch = len(BATCH)
    with torch.no_grad():
        words = model.embeddings.word_embeddings(torch.tensor(BATCH))
    embeds = torch.cat([prompt.unsqueeze(0).expand(batch, -1, -1), words], dim=1)
    mask = [[1] * VIRTUAL + row for row in BATCH_MASK]
    types = [[0] * VIRTUAL + row for row in BATCH_TYPES]
    return {
        "name": "batch_with_virtual_tokens",
        "input_ids": BATCH,
        "attention_mask": BATCH_MASK,
        "token_type_ids": BATCH_TYPES,
        "virtual": {"embeddings": prompt.tolist()},
        **states(model, mask, types, inputs_embeds=embeds),
    }


def tiny_bert(out: Path) -> None:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu", pad_token_id=0,
        attn_implementation="eager",
    )
    model = BertModel(cfg, add_pooling_layer=True).eval()
    randomise(model, 7)
    cases = [
        {"name": "single", "input_ids": SINGLE, "attention_mask": [[1] * len(SINGLE[0])],
         **states(model, [[1] * len(SINGLE[0])], input_ids=SINGLE)},
        {"name": "right_padded_batch", "input_ids": BATCH, "attention_mask": BATCH_MASK,
         "token_type_ids": BATCH_TYPES, **states(model, BATCH_MASK, BATCH_TYPES, input_ids=BATCH)},
        prefix_case(model, seed=8),
        virtual_case(model, seed=9),
    ]
    folder = out / "tiny-bert"
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    record = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "num_parameters": model.num_parameters(),
        "cases": cases,
    }
    (folder / "states.json").write_text(json.dumps(record))
    for f in sorted(folder.iterdir()):
        if f.is_file():
            print(f"  {f.relative_to(folder.parent)}: {f.stat().st_size} bytes")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "fixtures"
    torch.use_deterministic_algorithms(True)
    tiny_bert(out)


if __name__ == "__main__":
    main()
