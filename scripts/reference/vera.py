"""VeRA interoperability fixtures with HF PEFT, both directions (for peft-vera).

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root), on the tiny
fixture models (`fixtures/tiny-*`, written by tiny_models.py):

- `hf-tiny-gpt2-vera/`: VeraConfig(r=16) with the default target modules (`c_attn`, Conv1D);
- `hf-tiny-llama-vera/`: the default VeraConfig (r=256, `q_proj`, `v_proj`);
- `hf-tiny-llama-vera-noproj/`: r=32, target_modules="all-linear", projection_prng_key=7, d_initial=0.05 and
  save_projection=False: the file holds no projections, so a reader must draw them as torch does;
- `hf-tiny-gpt2-vera-noproj/`: r=8, layers_to_transform=[1], projection_prng_key=3, save_projection=False.

The trained vectors are moved away from their initial values (lambda_b from zeros: s * N(0, 1); lambda_d:
d_initial + s * N(0, 1), seeded) so that the adapter is no no-op, then saved with `save_pretrained`, plus
`logits.json`: {"trainable_parameters": N (HF PEFT's count), "frozen_changed": max |logit change| over the
frozen model, "cases": [{"input_ids": [...], "logits": [...]}]} with the full last-position logits.

`ours` mode (we write, HF PEFT reads): for every `ours-*-vera*/` adapter folder under OUT (written by the Rust test
`peft-vera/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1), loads it with `PeftModel.from_pretrained` on its base
model and writes `hf_logits.json` ({"peft_loaded": true, "vera_parameters": N, "cases": [...]}).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Environment: see prompt_tuning.py. From the repository root:

    peft-ref-venv/bin/python scripts/reference/vera.py hf [--out OUT]
    peft-ref-venv/bin/python scripts/reference/vera.py ours [--out OUT]
"""

from pathlib import Path

import torch
from peft import TaskType, VeraConfig, get_peft_model

from common import load_tiny, main, ours_models, rewrite_base_name, tiny_cases, write_hf_logits, write_json

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


@torch.no_grad()
def largest_change(model, cases):
    """The largest |logit| change the adapter makes over the frozen model (so the fixture tests something)."""
    with model.disable_adapter():
        frozen = tiny_cases(model)
    return max(
        max(abs(a - b) for a, b in zip(c["logits"], f["logits"])) for c, f in zip(cases, frozen)
    )


def hf_mode(args):
    out = Path(args.out)
    for seed, (name, folder_name, extra) in enumerate(TINY):
        config = VeraConfig(task_type=TaskType.CAUSAL_LM, **extra)
        model = get_peft_model(load_tiny(name), config)
        trainable, _ = model.get_nb_trainable_parameters()
        perturb(model, config.d_initial, 1.0, seed)
        model.eval()
        folder = out / folder_name
        model.save_pretrained(folder)
        rewrite_base_name(folder, name, SET_VALUED)
        cases = tiny_cases(model)
        changed = largest_change(model, cases)
        write_json(
            folder / "logits.json",
            {"trainable_parameters": trainable, "frozen_changed": changed, "cases": cases},
        )
        print(f"{folder_name}: {trainable} trainable parameters, logits moved by up to {changed:.3g}")


def ours_mode(args):
    out = Path(args.out)
    for folder, _, model, _ in ours_models(sorted(out.glob("ours-*-vera*")), None):
        count = vera_parameters(model)
        write_hf_logits(folder, {"vera_parameters": count, "cases": tiny_cases(model)}, f", {count} VeRA parameters")


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
