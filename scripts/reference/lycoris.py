"""LoHa and LoKr (HF PEFT's LyCORIS tuners) interoperability fixtures with HF PEFT, both directions (for
peft-lycoris).

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root), on the tiny
fixture models (`fixtures/tiny-*`, written by tiny_models.py):

- `hf-tiny-gpt2-loha/`, `hf-tiny-llama-loha/`: LoHaConfig with the architecture's default targets;
- `hf-tiny-llama-patterns-loha/`: target_modules="all-linear", r=4, rank_pattern {"down_proj": 2},
  alpha_pattern {"o_proj": 16};
- `hf-tiny-gpt2-lokr/`, `hf-tiny-llama-lokr/`: LoKrConfig with the default targets (r=8: both factors full);
- `hf-tiny-llama-both-lokr/`: decompose_both, r=2, alpha=4, all-linear (a mix of full and decomposed sides);
- `hf-tiny-llama-factor2-lokr/`: decompose_factor=2, r=4, on q_proj, v_proj and down_proj (w2 decomposed);
- `hf-smollm2-loha/`, `hf-smollm2-lokr/` (when a GGUF path is given): r=4, alpha=8, q_proj and v_proj of layers
  0, 14 and 29, on SmolLM2-135M-Instruct loaded from its GGUF.

HF PEFT's LyCORIS tuners accept only nn.Linear / nn.Conv1d / nn.Conv2d modules and refuse GPT-2's
transformers Conv1D (TypeError). The GPT-2 fixtures therefore use the tiny GPT-2 with each Conv1D replaced by the
nn.Linear that computes the same function (weight transposed to [out, in]): HF PEFT's own layers then adapt it,
with the [out, in] factor orientation peft-lycoris uses for GPT-2, and the module names are unchanged.

Every trainable tensor is moved away from its initial value (+ s * N(0, 1), seeded) so that the adapter is no
no-op, then saved with `save_pretrained`, plus `logits.json`: {"trainable_parameters": N (HF PEFT's count),
"cases": [{"input_ids": [...], "logits": [...]}]} with the full last-position logits (on SmolLM2: {"text",
"input_ids", "top": [[id, logit], ...]} with the 20 largest).

`ours` mode (we write, HF PEFT reads): for every `ours-*-loha` / `ours-*-lokr` adapter folder under OUT (written
by `peft-lycoris/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1; the SmolLM2 ones only with --gguf), loads it with
`PeftModel.from_pretrained` on its base model (GPT-2 linearised as above) and writes `hf_logits.json`
({"peft_loaded": true, "lycoris_parameters": N, "cases": [...]}).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Environment: see prompt_tuning.py. From the repository root:

    peft-ref-venv/bin/python scripts/reference/lycoris.py hf [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
    peft-ref-venv/bin/python scripts/reference/lycoris.py ours [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
"""

import copy
from pathlib import Path

import torch
from peft import LoHaConfig, LoKrConfig, TaskType, get_peft_model
from transformers.pytorch_utils import Conv1D

from common import (
    SMOL_NAME, largest_change, load_smol, load_tiny, main, model_cases, ours_models, rewrite_base_name, tiny_cases,
    write_hf_logits, write_json,
)

# Keys HF PEFT saves from a Python set: the fixture sorts them, so that regenerating it is stable.
SET_VALUED = ["target_modules", "exclude_modules"]
# Parameter name prefixes of the two methods.
PREFIXES = ("hada_", "lokr_")

ALL_LINEAR = "all-linear"
# (base model, folder, config)
CASES = [
    ("tiny-gpt2", "hf-tiny-gpt2-loha", LoHaConfig),
    ("tiny-llama", "hf-tiny-llama-loha", LoHaConfig),
    (
        "tiny-llama",
        "hf-tiny-llama-patterns-loha",
        lambda **kw: LoHaConfig(
            r=4, target_modules=ALL_LINEAR, rank_pattern={"down_proj": 2}, alpha_pattern={"o_proj": 16}, **kw
        ),
    ),
    ("tiny-gpt2", "hf-tiny-gpt2-lokr", LoKrConfig),
    ("tiny-llama", "hf-tiny-llama-lokr", LoKrConfig),
    (
        "tiny-llama",
        "hf-tiny-llama-both-lokr",
        lambda **kw: LoKrConfig(r=2, alpha=4, decompose_both=True, target_modules=ALL_LINEAR, **kw),
    ),
    (
        "tiny-llama",
        "hf-tiny-llama-factor2-lokr",
        lambda **kw: LoKrConfig(r=4, decompose_factor=2, target_modules=["q_proj", "v_proj", "down_proj"], **kw),
    ),
]
# The SmolLM2 fixtures: (folder, config, seed); few layers and a small rank, so that the files stay small.
SMOL_TARGETS = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": [0, 14, 29]}
SMOL = [
    ("hf-smollm2-loha", lambda **kw: LoHaConfig(**SMOL_TARGETS, **kw), 20),
    ("hf-smollm2-lokr", lambda **kw: LoKrConfig(**SMOL_TARGETS, **kw), 21),
]


@torch.no_grad()
def linearize_conv1d(model):
    """`model` with every transformers Conv1D replaced by the nn.Linear computing the same function."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, Conv1D):
            continue
        in_features, out_features = module.weight.shape
        linear = torch.nn.Linear(in_features, out_features, bias=module.bias is not None)
        linear.weight.copy_(module.weight.t())
        if module.bias is not None:
            linear.bias.copy_(module.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, linear)
    return model


def load_base(name):
    """The tiny fixture model `name`, with GPT-2's Conv1D modules as nn.Linear (see the module docstring)."""
    model = load_tiny(name)
    return linearize_conv1d(model) if name == "tiny-gpt2" else model


# How far the SmolLM2 fixtures' factors move: smaller than on the tiny models, whose weights are larger.
SMOL_SCALE = 0.1


@torch.no_grad()
def perturb(model, scale, seed):
    # Default inits zero one factor (an identity adapter); move every factor so the comparison tests something.
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if any(p in name for p in PREFIXES):
            param.add_(scale * torch.randn(param.shape, generator=gen))


def lycoris_parameters(model):
    return sum(p.numel() for n, p in model.named_parameters() if any(p_ in n for p_ in PREFIXES))


def hf_mode(args):
    out = Path(args.out)
    for seed, (name, folder_name, make_config) in enumerate(CASES):
        base = load_base(name)
        reference = load_tiny(name)
        model = get_peft_model(base, make_config(task_type=TaskType.CAUSAL_LM))
        trainable, _ = model.get_nb_trainable_parameters()
        perturb(model, 0.3, seed)
        model.eval()
        folder = out / folder_name
        model.save_pretrained(folder)
        rewrite_base_name(folder, name, SET_VALUED)
        cases = tiny_cases(model)
        # The linearised model is the same function: with the adapter off, the logits are the stock model's.
        with model.disable_adapter():
            for case, stock in zip(tiny_cases(model), tiny_cases(reference)):
                assert max(abs(a - b) for a, b in zip(case["logits"], stock["logits"])) < 1e-5
        write_json(folder / "logits.json", {"trainable_parameters": trainable, "cases": cases})
        print(f"{folder_name}: {trainable} trainable parameters")
    if args.gguf:
        smol, tokenizer = load_smol(args.gguf)
        for folder_name, make_config, seed in SMOL:
            torch.manual_seed(seed)  # the factors' initial draws, so that regenerating gives the same fixture
            model = get_peft_model(copy.deepcopy(smol), make_config(task_type=TaskType.CAUSAL_LM))
            trainable, _ = model.get_nb_trainable_parameters()
            perturb(model, SMOL_SCALE, seed)
            model.eval()
            folder = out / folder_name
            model.save_pretrained(folder)
            rewrite_base_name(folder, SMOL_NAME, SET_VALUED)
            cases = model_cases(model, tokenizer)
            changed = largest_change(model, cases)
            write_json(
                folder / "logits.json",
                {"trainable_parameters": trainable, "frozen_changed": changed, "cases": cases},
            )
            print(f"{folder_name}: {trainable} trainable parameters, logits moved by up to {changed:.3g}")


def ours_mode(args):
    out = Path(args.out)
    folders = sorted(out.glob("ours-*-loha")) + sorted(out.glob("ours-*-lokr"))
    for folder, _, model, tokenizer in ours_models(folders, args.gguf, load_base):
        count = lycoris_parameters(model)
        cases = model_cases(model, tokenizer)
        write_hf_logits(folder, {"lycoris_parameters": count, "cases": cases}, f", {count} parameters")


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
