"""Prefix-tuning (and P-tuning v2) interoperability fixtures with HF PEFT, both directions.

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root):

- `hf-tiny-gpt2-prefix/`, `hf-tiny-llama-prefix/`: PrefixTuningConfig(4 virtual tokens, prefix_projection
  false: P-tuning v2) on the tiny fixture models (`fixtures/tiny-*`; the LLaMA one has grouped-query attention).
- `hf-tiny-llama-prefix-proj/`: PrefixTuningConfig(3 virtual tokens, prefix_projection true,
  encoder_hidden_size 24); HF PEFT saves the MLP's output, folded.
- `hf-smollm2-prefix/` (when a GGUF path is given): PrefixTuningConfig(5 virtual tokens) on
  SmolLM2-135M-Instruct loaded from its GGUF (9 heads sharing 3 key/value heads of dimension 64).

Each holds the adapter as `save_pretrained` writes it, and `logits.json`:

    {"trainable_params": N,                         # HF PEFT's count for the config, before saving
     "trainable_params_with_projection": M,         # the same config with prefix_projection true (SmolLM2)
     "cases": [{"input_ids": [...], "logits": [...]}],                 # full last-position logits (tiny)
     "padded": {"input_ids": [[...]], "attention_mask": [[...]],       # right-padded batch (tiny): the full
                "logits": [[...]]}}                                     # logits at each row's last real token
    SmolLM2 cases hold "text", "input_ids" and "top" (the 20 largest last-position logits) instead.

`ours` mode (we write, HF PEFT reads): for every `ours-*-prefix*/` adapter folder under OUT (written by
`peft-prefix/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1), loads it with `PeftModel.from_pretrained` on its
base model and writes `hf_logits.json` ({"peft_loaded": true, "cases": ..., "padded": ...} as above).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Set-up as in prompt_tuning.py; then, from the repository root:

    peft-ref-venv/bin/python scripts/reference/prefix_tuning.py hf [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
    peft-ref-venv/bin/python scripts/reference/prefix_tuning.py ours [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
"""

import copy
from pathlib import Path

import torch
from peft import PrefixEncoder, PrefixTuningConfig, TaskType, get_peft_model

from common import (
    SMOL_NAME, TINY_IDS, load_smol, load_tiny, main, ours_models, rewrite_base_name, smol_cases, tiny_cases,
    write_hf_logits, write_json,
)

TINY_CONFIGS = {
    "hf-tiny-gpt2-prefix": ("tiny-gpt2", dict(num_virtual_tokens=4)),
    "hf-tiny-llama-prefix": ("tiny-llama", dict(num_virtual_tokens=4)),
    "hf-tiny-llama-prefix-proj": (
        "tiny-llama",
        dict(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=24),
    ),
}
SMOL_VIRTUAL_TOKENS = 5


@torch.no_grad()
def padded_case(model, rows):
    """A right-padded batch of `rows` (pad id 0) and the full logits at each row's last real token."""
    width = max(len(r) for r in rows)
    ids = [r + [0] * (width - len(r)) for r in rows]
    mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    logits = [out.logits[b, len(r) - 1].float().tolist() for b, r in enumerate(rows)]
    return {"input_ids": ids, "attention_mask": mask, "logits": logits}


def tiny_result(model):
    return {"cases": tiny_cases(model), "padded": padded_case(model, TINY_IDS)}


def smol_result(model, tokenizer):
    return {"cases": smol_cases(model, tokenizer)}


def expected_trainable(config):
    """The closed form of HF PEFT's PrefixEncoder parameter count (what the Rust side computes)."""
    rows = config.num_layers * 2 * config.token_dim
    if not config.prefix_projection:
        return config.num_virtual_tokens * rows
    td, h = config.token_dim, config.encoder_hidden_size
    return config.num_virtual_tokens * td + td * h + h + h * rows + rows


def trainable(model):
    count = model.get_nb_trainable_parameters()[0]
    config = model.peft_config["default"]
    assert count == expected_trainable(config), (count, expected_trainable(config))
    return count


def with_projection_count(config):
    """HF PEFT's trainable count for `config` (model-derived fields filled) with prefix_projection on."""
    config = copy.deepcopy(config)
    config.prefix_projection = True
    config.inference_mode = False
    count = sum(p.numel() for p in PrefixEncoder(config).parameters())
    assert count == expected_trainable(config), (count, expected_trainable(config))
    return count


def save(model, folder, name):
    model.save_pretrained(folder)
    rewrite_base_name(folder, name)


def hf_mode(args):
    out = Path(args.out)
    for folder_name, (name, fields) in TINY_CONFIGS.items():
        torch.manual_seed(0)
        model = get_peft_model(load_tiny(name), PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, **fields)).eval()
        count = trainable(model)
        config = model.peft_config["default"]
        print(f"{folder_name}: token_dim {config.token_dim}, heads {config.num_attention_heads}, {count} trainable")
        folder = out / folder_name
        # Logits of the live model (the projection runs here); the saved prefix is its folded output.
        result = {"trainable_params": count, **tiny_result(model)}
        save(model, folder, name)
        write_json(folder / "logits.json", result)
    if args.gguf:
        base, tokenizer = load_smol(args.gguf)
        torch.manual_seed(0)
        config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=SMOL_VIRTUAL_TOKENS)
        model = get_peft_model(base, config).eval()
        config = model.peft_config["default"]
        print(f"smollm2: token_dim {config.token_dim}, heads {config.num_attention_heads}")
        result = {
            "trainable_params": trainable(model),
            "trainable_params_with_projection": with_projection_count(config),
            **smol_result(model, tokenizer),
        }
        folder = out / "hf-smollm2-prefix"
        save(model, folder, SMOL_NAME)
        write_json(folder / "logits.json", result)


def ours_mode(args):
    out = Path(args.out)
    for folder, _, model, tokenizer in ours_models(sorted(out.glob("ours-*-prefix*")), args.gguf):
        result = smol_result(model, tokenizer) if tokenizer else tiny_result(model)
        write_hf_logits(folder, result)


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
