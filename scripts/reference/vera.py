"""VeRA interoperability fixtures with HF PEFT, both directions (for peft-vera).

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root), on the tiny
fixture models (`fixtures/tiny-*`, written by tiny_models.py):

- `hf-tiny-gpt2-vera/`: VeraConfig(r=16) with the default target modules (`c_attn`, Conv1D);
- `hf-tiny-llama-vera/`: the default VeraConfig (r=256, `q_proj`, `v_proj`);
- `hf-tiny-llama-vera-noproj/`: r=32, target_modules="all-linear", projection_prng_key=7, d_initial=0.05 and
  save_projection=False: the file holds no projections, so a reader must draw them as torch does;
- `hf-tiny-gpt2-vera-noproj/`: r=8, layers_to_transform=[1], projection_prng_key=3, save_projection=False;
- `hf-smollm2-vera/` (when a GGUF path is given): r=8, q_proj and v_proj of layers 0, 14 and 29,
  projection_prng_key=11, on SmolLM2-135M-Instruct loaded from its GGUF.

The trained vectors are moved away from their initial values (lambda_b from zeros: s * N(0, 1); lambda_d:
d_initial + s * N(0, 1), seeded) so that the adapter is no no-op, then saved with `save_pretrained`, plus
`logits.json`: {"trainable_parameters": N (HF PEFT's count), "frozen_changed": max |logit change| over the
frozen model, "cases": [{"input_ids": [...], "logits": [...]}]} with the full last-position logits (on SmolLM2:
{"text", "input_ids", "top": [[id, logit], ...]} with the 20 largest).

`ours` mode (we write, HF PEFT reads): for every `ours-*-vera*/` adapter folder under OUT (written by the Rust test
`peft-vera/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1; `ours-smollm2-vera/` only with --gguf), loads it with `PeftModel.from_pretrained` on its base
model and writes `hf_logits.json` ({"peft_loaded": true, "vera_parameters": N, "cases": [...]}).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Environment: see prompt_tuning.py. From the repository root:

    peft-ref-venv/bin/python scripts/reference/vera.py hf [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
    peft-ref-venv/bin/python scripts/reference/vera.py ours [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
"""

from pathlib import Path

import torch
from peft import TaskType, VeraConfig, get_peft_model

from common import (
    SMOL_NAME, largest_change, load_smol, load_tiny, main, model_cases, ours_models, rewrite_base_name,
    write_hf_logits, write_json,
)

# Keys HF PEFT saves from a Python set: the fixture sorts them, so that regenerating it is stable.
SET_VALUED = ["target_modules"]

TINY = [
    ("tiny-gpt2", "hf-tiny-gpt2-vera", {"r": 16}),
    ("tiny-llama", "hf-tiny-llama-vera", {}),
    (
        "tiny-llama",
        "hf-tiny-llama-vera-noproj",
        {
            "r": 32,
            "target_modules": "all-linear",
            "projection_prng_key": 7,
            "d_initial": 0.05,
            "save_projection": False,
        },
    ),
    (
        "tiny-gpt2",
        "hf-tiny-gpt2-vera-noproj",
        {"r": 8, "layers_to_transform": [1], "projection_prng_key": 3, "save_projection": False},
    ),
]
# The SmolLM2 fixture: few layers and a small r, so that the file stays small; its vectors move by SMOL_SCALE
# (s = 1 on the tiny models would move SmolLM2's logits by tens).
SMOL_SCALE = 0.2
SMOL = {"r": 8, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": [0, 14, 29], "projection_prng_key": 11}


@torch.no_grad()
def perturb(model, d_initial, scale, seed):
    # init_weights gives lambda_b = 0 (an identity adapter); move every vector so the comparison tests something.
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "vera_lambda_b" in name:
            param.copy_(scale * torch.randn(param.shape, generator=gen))
        elif "vera_lambda_d" in name:
            param.copy_(d_initial + scale * torch.randn(param.shape, generator=gen))


def vera_parameters(model):
    return sum(p.numel() for n, p in model.named_parameters() if "vera_lambda_" in n)


def save_hf(base, folder, base_name, extra, seed, scale=1.0, tokenizer=None):
    """Wraps `base` with VeraConfig(**extra), moves its vectors by `scale` (seeded by `seed`), saves the adapter
    into `folder` and writes `logits.json` (`tokenizer`: SmolLM2's)."""
    config = VeraConfig(task_type=TaskType.CAUSAL_LM, **extra)
    model = get_peft_model(base, config)
    trainable, _ = model.get_nb_trainable_parameters()
    perturb(model, config.d_initial, scale, seed)
    model.eval()
    model.save_pretrained(folder)
    rewrite_base_name(folder, base_name, SET_VALUED)
    cases = model_cases(model, tokenizer)
    changed = largest_change(model, cases)
    write_json(
        folder / "logits.json",
        {"trainable_parameters": trainable, "frozen_changed": changed, "cases": cases},
    )
    print(f"{folder.name}: {trainable} trainable parameters, logits moved by up to {changed:.3g}")


def hf_mode(args):
    out = Path(args.out)
    for seed, (name, folder_name, extra) in enumerate(TINY):
        save_hf(load_tiny(name), out / folder_name, name, extra, seed)
    if args.gguf:
        base, tokenizer = load_smol(args.gguf)
        save_hf(base, out / "hf-smollm2-vera", SMOL_NAME, SMOL, len(TINY), SMOL_SCALE, tokenizer)


def ours_mode(args):
    out = Path(args.out)
    for folder, _, model, tokenizer in ours_models(sorted(out.glob("ours-*-vera*")), args.gguf):
        count = vera_parameters(model)
        cases = model_cases(model, tokenizer)
        write_hf_logits(folder, {"vera_parameters": count, "cases": cases}, f", {count} VeRA parameters")


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
