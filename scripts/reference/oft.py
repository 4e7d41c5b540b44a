"""OFT interoperability fixtures with HF PEFT, both directions (for peft-oft).

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root), on the tiny
fixture models (`fixtures/tiny-*`, written by tiny_models.py), each with `init_weights=False` (HF PEFT draws
`oft_R` from N(0, 0.1^2), seeded) so that the rotation is no identity:

- `hf-tiny-gpt2-oft/`: default targets (`c_attn`), oft_block_size=8, the Cayley-Neumann series (HF's default),
  bias="oft_only" with the biases moved too;
- `hf-tiny-llama-oft/`: q_proj, v_proj and down_proj, oft_block_size=8, the exact Cayley transform;
- `hf-tiny-llama-oft-shared/`: "all-linear", r=4 (blocks follow each module's width), block_share, the series
  with num_cayley_neumann_terms=7;
- `hf-tiny-llama-oft-coft/`: q_proj, o_proj and up_proj, oft_block_size=16, coft with eps=0.5 (the drawn blocks
  lie outside the radius, so HF PEFT's projection acts in every forward call), exact transform.

HF PEFT's OFT adapts nn.Linear, nn.Conv2d and nn.Embedding only and refuses GPT-2's transformers Conv1D
(TypeError). The GPT-2 fixtures therefore use the tiny GPT-2 with each Conv1D replaced by the nn.Linear that
computes the same function (`linearize_conv1d` of lycoris.py); the module names are unchanged, so the adapter is
the one peft-oft builds on the stock GPT-2.

Each is saved with `save_pretrained`, plus `logits.json`: {"trainable_parameters": N (HF PEFT's count when the
adapter was made), "cases": [{"input_ids": [...], "logits": [...]}]}, the full last-position logits of the adapter
as HF PEFT loads it again (`PeftModel.from_pretrained`).

`ours` mode (we write, HF PEFT reads): for every `ours-*-oft*/` folder under OUT (written by the Rust test
`peft-oft/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1), loads it with `PeftModel.from_pretrained(...,
is_trainable=True)` on its base model (GPT-2 linearised as above) and writes `hf_logits.json` ({"peft_loaded":
true, "trainable_parameters": N (HF PEFT's count, trained biases included), "cases": [...]}).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Environment: see prompt_tuning.py. From the repository root:

    peft-ref-venv/bin/python scripts/reference/oft.py hf [--out OUT]
    peft-ref-venv/bin/python scripts/reference/oft.py ours [--out OUT]
"""

from pathlib import Path

import torch
from peft import OFTConfig, PeftModel, TaskType, get_peft_model

from common import (
    load_tiny, main, model_cases, ours_models, rewrite_base_name, tiny_cases, write_hf_logits, write_json,
)
from lycoris import linearize_conv1d

# Keys HF PEFT saves from a Python set: the fixture sorts them, so that regenerating it is stable.
SET_VALUED = ["target_modules", "exclude_modules"]

# (base model, folder, OFTConfig arguments)
CASES = [
    ("tiny-gpt2", "hf-tiny-gpt2-oft", {"oft_block_size": 8, "bias": "oft_only"}),
    (
        "tiny-llama",
        "hf-tiny-llama-oft",
        {"oft_block_size": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "use_cayley_neumann": False},
    ),
    (
        "tiny-llama",
        "hf-tiny-llama-oft-shared",
        {
            "r": 4,
            "oft_block_size": 0,
            "target_modules": "all-linear",
            "block_share": True,
            "num_cayley_neumann_terms": 7,
        },
    ),
    (
        "tiny-llama",
        "hf-tiny-llama-oft-coft",
        {
            "oft_block_size": 16,
            "target_modules": ["q_proj", "o_proj", "up_proj"],
            "coft": True,
            "eps": 0.5,
            "use_cayley_neumann": False,
        },
    ),
]


def load_base(name):
    """The tiny fixture model `name`, with GPT-2's Conv1D modules as nn.Linear (see the module docstring)."""
    model = load_tiny(name)
    return linearize_conv1d(model) if name == "tiny-gpt2" else model


@torch.no_grad()
def move_biases(model, seed):
    # A trained bias equal to the frozen one would test nothing: move every trainable bias.
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if param.requires_grad and name.endswith("bias"):
            param.add_(0.3 * torch.randn(param.shape, generator=gen))


def hf_mode(args):
    out = Path(args.out)
    for seed, (name, folder_name, extra) in enumerate(CASES):
        torch.manual_seed(seed)  # oft_R's draws, so that regenerating gives the same fixture
        model = get_peft_model(
            load_base(name), OFTConfig(task_type=TaskType.CAUSAL_LM, init_weights=False, **extra)
        )
        trainable, _ = model.get_nb_trainable_parameters()
        move_biases(model, seed)
        model.eval()
        folder = out / folder_name
        model.save_pretrained(folder)
        rewrite_base_name(folder, name, SET_VALUED)
        loaded = PeftModel.from_pretrained(load_base(name), folder).eval()
        cases = tiny_cases(loaded)
        # The reloaded adapter is the one that was saved (COFT projects both the same way in each call).
        for case, saved in zip(cases, tiny_cases(model)):
            assert max(abs(a - b) for a, b in zip(case["logits"], saved["logits"])) < 1e-5, folder_name
        # The linearised model is the same function as the stock one.
        for case, stock in zip(tiny_cases(load_base(name)), tiny_cases(load_tiny(name))):
            assert max(abs(a - b) for a, b in zip(case["logits"], stock["logits"])) < 1e-5
        write_json(folder / "logits.json", {"trainable_parameters": trainable, "cases": cases})
        print(f"{folder_name}: {trainable} trainable parameters")


def ours_mode(args):
    out = Path(args.out)
    for folder, _, model, tokenizer in ours_models(
        sorted(out.glob("ours-*-oft*")), args.gguf, load_base=load_base, is_trainable=True
    ):
        count, _ = model.get_nb_trainable_parameters()
        model.eval()
        cases = model_cases(model, tokenizer)
        write_hf_logits(folder, {"trainable_parameters": count, "cases": cases}, f", {count} OFT parameters")


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
