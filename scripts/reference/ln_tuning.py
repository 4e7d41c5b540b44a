"""LayerNorm-tuning (LN_TUNING) interoperability fixtures with HF PEFT, both directions (for peft-ln-tuning).

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root), on the tiny
fixture models (`fixtures/tiny-*`, written by tiny_models.py):

- `hf-tiny-gpt2-ln-tuning/`: the default LNTuningConfig (`ln_1`, `ln_2`, `ln_f`: LayerNorms, weight and bias);
- `hf-tiny-llama-ln-tuning/`: the default LNTuningConfig (`input_layernorm`, `post_attention_layernorm`, `norm`:
  RMS norms, weight only);
- `hf-tiny-gpt2-ln-tuning-regex/`: target_modules as a regular expression (`.*\\.ln_[12]`) with
  exclude_modules = ["transformer.h.0.ln_2"];
- `hf-smollm2-ln-tuning/` (when a GGUF path is given): the norms of layers 0, 14 and 29 and the final norm (a
  regular expression, so that the file stays small) on SmolLM2-135M-Instruct loaded from its GGUF.

Every tuned tensor is moved away from its frozen value (w + s * N(0, 1), seeded) so that the adapter is no no-op,
then saved with `save_pretrained`, plus `logits.json`: {"trainable_parameters": N (HF PEFT's count),
"frozen_changed": max |logit change| over the frozen model, "cases": [{"input_ids": [...], "logits": [...]}]}
with the full last-position logits (on SmolLM2: {"text", "input_ids", "top": [[id, logit], ...]} with the 20
largest).

`ours` mode (we write, HF PEFT reads): for every `ours-*-ln-tuning*/` adapter folder under OUT (written by the
Rust test `peft-ln-tuning/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1; `ours-smollm2-ln-tuning/` only with
--gguf), loads it with `PeftModel.from_pretrained` on its base model and writes `hf_logits.json`
({"peft_loaded": true, "trainable_parameters": N, "cases": [...]}).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Environment: see prompt_tuning.py. From the repository root:

    peft-ref-venv/bin/python scripts/reference/ln_tuning.py hf [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
    peft-ref-venv/bin/python scripts/reference/ln_tuning.py ours [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
"""

from pathlib import Path

import torch
from peft import LNTuningConfig, TaskType, get_peft_model

from common import (
    SMOL_NAME, largest_change, load_smol, load_tiny, main, model_cases, ours_models, rewrite_base_name,
    write_hf_logits, write_json,
)

# Keys HF PEFT saves from a Python set: the fixture sorts them, so that regenerating it is stable.
SET_VALUED = ["target_modules", "exclude_modules"]

TINY = [
    ("tiny-gpt2", "hf-tiny-gpt2-ln-tuning", {}),
    ("tiny-llama", "hf-tiny-llama-ln-tuning", {}),
    (
        "tiny-gpt2",
        "hf-tiny-gpt2-ln-tuning-regex",
        {"target_modules": r".*\.ln_[12]", "exclude_modules": ["transformer.h.0.ln_2"]},
    ),
]
# SmolLM2's norm weights are large (some above 10), so they move by a fraction of the tiny models' step.
SMOL_SCALE = 0.01
SMOL = {"target_modules": r"model\.(layers\.(0|14|29)\..*layernorm|norm)"}


@torch.no_grad()
def perturb(model, scale, seed):
    # A fresh adapter is a copy of the frozen norms (a no-op); move every tuned tensor so the comparison tests
    # something.
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "ln_tuning_layers" in name:
            param.add_(scale * torch.randn(param.shape, generator=gen))


def ln_tuning_parameters(model):
    return sum(p.numel() for n, p in model.named_parameters() if "ln_tuning_layers" in n)


def save_hf(base, folder, base_name, extra, seed, scale=0.3, tokenizer=None):
    """Wraps `base` with LNTuningConfig(**extra), moves its tuned tensors by `scale` (seeded by `seed`), saves the
    adapter into `folder` and writes `logits.json` (`tokenizer`: SmolLM2's)."""
    config = LNTuningConfig(task_type=TaskType.CAUSAL_LM, **extra)
    model = get_peft_model(base, config)
    trainable, _ = model.get_nb_trainable_parameters()
    perturb(model, scale, seed)
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
        save_hf(base, out / "hf-smollm2-ln-tuning", SMOL_NAME, SMOL, len(TINY), SMOL_SCALE, tokenizer)


def ours_mode(args):
    out = Path(args.out)
    for folder, _, model, tokenizer in ours_models(sorted(out.glob("ours-*-ln-tuning*")), args.gguf):
        count = ln_tuning_parameters(model)
        cases = model_cases(model, tokenizer)
        write_hf_logits(folder, {"trainable_parameters": count, "cases": cases}, f", {count} LN tuning parameters")


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
