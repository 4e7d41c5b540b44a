"""Writes the tiny GPT-2 and LLaMA parity fixtures that `peft-models/tests/tiny_parity.rs` checks.

Each fixture is a Hugging Face model folder (`config.json`, `model.safetensors` or a sharded index) plus
`logits.json`: the float32 logits that transformers (eager attention) computes for a few id sequences,
including a right-padded batch with its attention mask, and a case with a seeded random key/value prefix
passed as a `DynamicCache` of length P (the mask extended by P ones), which checks the `attention_prefix` hook.

Folders written under OUT (default: `fixtures/` at the repository root):

- `tiny-gpt2/`         GPT2LMHeadModel (tied head), scale_attn_by_inverse_layer_idx, a word-level `tokenizer.json`
- `tiny-llama/`        LlamaForCausalLM, grouped-query attention, untied head, no tokenizer
- `tiny-llama/tied/`   LlamaForCausalLM, tied head, attention biases, rope_theta 500, float16 storage, sharded

Set up the Python side once (CPU wheels are enough):

    python3 -m venv peft-ref-venv
    peft-ref-venv/bin/pip install torch transformers peft safetensors tokenizers

then, from the repository root:

    peft-ref-venv/bin/python scripts/reference/tiny_models.py [OUT]

The output is deterministic for a given torch / transformers version (seeded, CPU, float32).
"""

import inspect
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB = 100
PREFIX_LEN = 3

# Id sequences shared by both models: a single sequence, and a right-padded batch of two.
SINGLE = [[5, 17, 42, 8, 99, 0, 63]]
BATCH = [[11, 22, 33, 44, 55, 66], [7, 8, 9, 1, 1, 1]]
BATCH_MASK = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Replaces HF's init (std 0.02, unit norms, zero biases) by weights that make every term matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name or ".ln_" in name:
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "wte" in name or "wpe" in name or "embed_tokens" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.15 * noise)


def logits_of(model, ids, mask, cache=None):
    # transformers 5 names the past key values `cache`; 4.x called them `past_key_values`.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            use_cache=cache is not None,
            **{cache_arg: cache},
        )
    return out.logits.float().tolist()


def prefix_case(model, kv_heads: int, head_dim: int, layers: int, seed: int):
    """A random key/value prefix of PREFIX_LEN positions per layer, fed as past key values."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(BATCH)
    keys = [torch.randn(batch, kv_heads, PREFIX_LEN, head_dim, generator=gen) for _ in range(layers)]
    values = [torch.randn(batch, kv_heads, PREFIX_LEN, head_dim, generator=gen) for _ in range(layers)]
    cache = DynamicCache(ddp_cache_data=list(zip(keys, values)), config=model.config)
    mask = [[1] * PREFIX_LEN + row for row in BATCH_MASK]
    return {
        "name": "batch_with_kv_prefix",
        "input_ids": BATCH,
        "attention_mask": mask,
        "prefix": {
            "len": PREFIX_LEN,
            "key": [k.tolist() for k in keys],
            "value": [v.tolist() for v in values],
        },
        "logits": logits_of(model, BATCH, mask, cache),
    }


def plain_cases(model):
    return [
        {"name": "single", "input_ids": SINGLE, "attention_mask": [[1] * len(SINGLE[0])],
         "logits": logits_of(model, SINGLE, [[1] * len(SINGLE[0])])},
        {"name": "right_padded_batch", "input_ids": BATCH, "attention_mask": BATCH_MASK,
         "logits": logits_of(model, BATCH, BATCH_MASK)},
    ]


def write(folder: Path, model, cases, save_kwargs=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, **(save_kwargs or {}))
    record = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "num_parameters": model.num_parameters(),
        "cases": cases,
    }
    (folder / "logits.json").write_text(json.dumps(record))
    for f in sorted(folder.iterdir()):
        if f.is_file():
            print(f"  {f.relative_to(folder.parent)}: {f.stat().st_size} bytes")


def word_level_tokenizer(path: Path) -> None:
    """A tiny word-level tokenizer over `w0 .. w99`, so the loader's tokenizer path is exercised."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB - 1)}
    vocab["<unk>"] = VOCAB - 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def gpt2(out: Path) -> None:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
        scale_attn_by_inverse_layer_idx=True, bos_token_id=98, eos_token_id=98,
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(cfg).eval()
    randomise(model, 1)
    cases = plain_cases(model) + [prefix_case(model, 4, 8, 2, seed=2)]
    folder = out / "tiny-gpt2"
    write(folder, model, cases)
    word_level_tokenizer(folder / "tokenizer.json")


def llama(out: Path) -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).eval()
    randomise(model, 3)
    cases = plain_cases(model) + [prefix_case(model, 2, 8, 2, seed=4)]
    write(out / "tiny-llama", model, cases)


def llama_tied(out: Path) -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, attention_bias=True, rope_theta=500.0,
        bos_token_id=1, eos_token_id=2, attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).eval()
    randomise(model, 5)
    # Stored as float16; the reference logits come from the same rounded weights computed in float32. Only the
    # parameters are rounded: `model.half()` would also round the rotary inv_freq buffer.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    cases = plain_cases(model) + [prefix_case(model, 2, 8, 2, seed=6)]
    folder = out / "tiny-llama" / "tied"
    write(folder, model.half(), cases, {"max_shard_size": "30KB"})


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "fixtures"
    torch.use_deterministic_algorithms(True)
    gpt2(out)
    llama(out)
    llama_tied(out)


if __name__ == "__main__":
    main()
