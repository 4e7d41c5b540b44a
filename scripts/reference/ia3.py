"""IA3 interoperability fixtures with HF PEFT, both directions (for examples/ia3, the method added from outside).

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root):

- `hf-tiny-gpt2-ia3/`, `hf-tiny-llama-ia3/`: IA3Config with the architecture's default target and
  feed-forward modules on the tiny fixture models (`fixtures/tiny-*`, written by tiny_models.py);
- `hf-tiny-llama-ia3-all-linear/`: target_modules="all-linear" with feedforward_modules=["up_proj",
  "down_proj"] (HF PEFT saves the expanded full module names);
- `hf-smollm2-ia3/` (when a GGUF path is given): the default IA3Config on SmolLM2-135M-Instruct from its GGUF.

Each vector `ia3_l` is moved away from its initial ones (1 + s * N(0, 1), seeded) so that the adapter is no
no-op, then saved with `save_pretrained`, plus `logits.json`: {"trainable_parameters": N (HF PEFT's count),
"cases": [{"input_ids": [...], "logits": [...]}]} with the full last-position logits on the tiny models, or
{"text", "input_ids", "top": [[id, logit], ...]} with the 20 largest on SmolLM2.

`ours` mode (we write, HF PEFT reads): for every `ours-*-ia3*/` adapter folder under OUT (written by the Rust
test `examples/ia3/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1), loads it with `PeftModel.from_pretrained`
on its base model and writes `hf_logits.json` ({"peft_loaded": true, "ia3_parameters": N, "cases": [...]}, cases
as above).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Environment: see prompt_tuning.py. From the repository root:

    peft-ref-venv/bin/python scripts/reference/ia3.py hf [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
    peft-ref-venv/bin/python scripts/reference/ia3.py ours [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
"""

from pathlib import Path

import torch
from peft import IA3Config, TaskType, get_peft_model

from common import (
    SMOL_NAME, load_smol, load_tiny, main, ours_models, rewrite_base_name, smol_cases, tiny_cases, write_hf_logits,
    write_json,
)

# Keys HF PEFT saves from a Python set: the fixture sorts them, so that regenerating it is stable.
SET_VALUED = ["target_modules", "feedforward_modules"]


@torch.no_grad()
def perturb(model, scale, seed):
    # init_ia3_weights gives ones (an identity adapter); move every vector so the comparison tests something.
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "ia3_l" in name:
            param.copy_(1.0 + scale * torch.randn(param.shape, generator=gen))


def ia3_parameters(model):
    return sum(p.numel() for n, p in model.named_parameters() if "ia3_l" in n)


def hf_mode(args):
    out = Path(args.out)
    tiny = [
        ("tiny-gpt2", "hf-tiny-gpt2-ia3", {}),
        ("tiny-llama", "hf-tiny-llama-ia3", {}),
        (
            "tiny-llama",
            "hf-tiny-llama-ia3-all-linear",
            {"target_modules": "all-linear", "feedforward_modules": ["up_proj", "down_proj"]},
        ),
    ]
    for seed, (name, folder_name, extra) in enumerate(tiny):
        model = get_peft_model(load_tiny(name), IA3Config(task_type=TaskType.CAUSAL_LM, **extra))
        trainable, _ = model.get_nb_trainable_parameters()
        perturb(model, 0.3, seed)
        model.eval()
        folder = out / folder_name
        model.save_pretrained(folder)
        rewrite_base_name(folder, name, SET_VALUED)
        write_json(folder / "logits.json", {"trainable_parameters": trainable, "cases": tiny_cases(model)})
        print(f"{folder_name}: {trainable} trainable parameters")
    if args.gguf:
        base, tokenizer = load_smol(args.gguf)
        model = get_peft_model(base, IA3Config(task_type=TaskType.CAUSAL_LM))
        trainable, _ = model.get_nb_trainable_parameters()
        perturb(model, 0.2, 10)
        model.eval()
        folder = out / "hf-smollm2-ia3"
        model.save_pretrained(folder)
        rewrite_base_name(folder, SMOL_NAME, SET_VALUED)
        write_json(folder / "logits.json", {"trainable_parameters": trainable, "cases": smol_cases(model, tokenizer)})
        print(f"hf-smollm2-ia3: {trainable} trainable parameters")


def ours_mode(args):
    out = Path(args.out)
    for folder, _, model, tokenizer in ours_models(sorted(out.glob("ours-*-ia3*")), args.gguf):
        cases = smol_cases(model, tokenizer) if tokenizer else tiny_cases(model)
        count = ia3_parameters(model)
        write_hf_logits(folder, {"ia3_parameters": count, "cases": cases}, f", {count} IA3 parameters")


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
