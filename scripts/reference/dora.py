"""DoRA (`LoraConfig(use_dora=True)`) interoperability fixtures with HF PEFT, both directions.

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root). Every
adapter starts from `init_lora_weights=False` (so B is not zero and the magnitude starts at the norms of
W + s B A, not of W) and has its `lora_magnitude_vector` scaled by 1 + 0.2 N(0, 1), so that m / ||W + s B A|| is
not one:

- `hf-tiny-gpt2-dora/`: r=4, alpha=8, target_modules ["c_attn", "c_proj"] (GPT-2 Conv1D, fan_in_fan_out: the
  norm is still per output feature), bias "lora_only" with the wrapped modules' biases perturbed (DoRA rescales
  W x but not the bias), lora_dropout 0.1 (off in eval).
- `hf-tiny-llama-dora/`: r=4, alpha=16, use_rslora, target_modules q_proj, k_proj, v_proj, o_proj, down_proj.
- `hf-smollm2-dora/` (when a GGUF path is given): r=4, alpha=8, q_proj and v_proj of layers 0, 14 and 29, on
  SmolLM2-135M-Instruct loaded from its GGUF.

Each folder gets `logits.json`: {"num_trainable": HF PEFT's trainable parameter count, "cases": [...]} with,
per case, the input ids and the full last-position logits (tiny models) or the text, its ids and the 20 largest
last-position logits (SmolLM2), plus "merged_cases": the same after `merge_and_unload()` (HF PEFT's DoRA merge).

`ours` mode (we write, HF PEFT reads): for every `ours-*-dora*/` folder under OUT (written by the Rust test
`peft-lora/tests/dora_hf_parity.rs` with PEFT_WRITE_FIXTURES=1; `ours-smollm2-dora/` only with --gguf), loads it with `PeftModel.from_pretrained` on
its base model, checks that HF PEFT holds exactly the saved tensors (the magnitude vectors included), and writes
`hf_logits.json` ({"peft_loaded": true, "num_trainable": N, "cases": [...]}).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Environment: see prompt_tuning.py. From the repository root:

    peft-ref-venv/bin/python scripts/reference/dora.py hf [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
    peft-ref-venv/bin/python scripts/reference/dora.py ours [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
"""

import copy
from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model

from common import (
    SMOL_NAME, load_smol, load_tiny, main, model_cases, ours_models, rewrite_base_name, write_hf_logits, write_json,
)
from lora import LLAMA_TARGETS, check_loaded_exactly, num_trainable, perturb


@torch.no_grad()
def scale_magnitudes(model, std, seed):
    """Multiplies every DoRA magnitude by 1 + std * N(0, 1) (a trained adapter's stand-in)."""
    gen = torch.Generator().manual_seed(seed)
    touched = 0
    for name, p in model.named_parameters():
        if "lora_magnitude_vector" in name:
            p.mul_(1.0 + std * torch.randn(p.shape, generator=gen))
            touched += 1
    assert touched, "no DoRA magnitude in the model"


def save_hf(model, folder, base_name, tokenizer=None):
    """Saves `model`'s adapter into `folder` with its logits, unmerged and merged (`tokenizer`: SmolLM2's)."""
    model.save_pretrained(folder)
    rewrite_base_name(folder, base_name, ["target_modules"])  # saved from a set: sorted for stable fixtures
    cases = model_cases(model, tokenizer)
    count = num_trainable(model)
    merged = copy.deepcopy(model).merge_and_unload().eval()
    merged_cases = model_cases(merged, tokenizer)
    write_json(folder / "logits.json", {"num_trainable": count, "cases": cases, "merged_cases": merged_cases})
    print(f"{folder.name}: {count} trainable parameters")


def hf_mode(args):
    out = Path(args.out)

    torch.manual_seed(0)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj"],
        bias="lora_only",
        lora_dropout=0.1,
        init_lora_weights=False,
        use_dora=True,
    )
    model = get_peft_model(load_tiny("tiny-gpt2"), config).eval()
    perturb(model, "base_layer.bias", 0.1)
    scale_magnitudes(model, 0.2, 0)
    save_hf(model, out / "hf-tiny-gpt2-dora", "tiny-gpt2")

    torch.manual_seed(1)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=4,
        lora_alpha=16,
        use_rslora=True,
        target_modules=LLAMA_TARGETS,
        init_lora_weights=False,
        use_dora=True,
    )
    model = get_peft_model(load_tiny("tiny-llama"), config).eval()
    scale_magnitudes(model, 0.2, 1)
    save_hf(model, out / "hf-tiny-llama-dora", "tiny-llama")

    if args.gguf:
        base, tokenizer = load_smol(args.gguf)
        torch.manual_seed(3)
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            layers_to_transform=[0, 14, 29],
            init_lora_weights=False,
            use_dora=True,
        )
        model = get_peft_model(base, config).eval()
        scale_magnitudes(model, 0.2, 3)
        save_hf(model, out / "hf-smollm2-dora", SMOL_NAME, tokenizer)


def ours_mode(args):
    out = Path(args.out)
    folders = sorted(out.glob("ours-*-dora*"))
    for folder, config, model, tokenizer in ours_models(folders, args.gguf, is_trainable=True):
        assert config["use_dora"], f"{folder.name} is not a DoRA adapter"
        check_loaded_exactly(model, folder)
        count = num_trainable(model)
        cases = model_cases(model, tokenizer)
        write_hf_logits(folder, {"num_trainable": count, "cases": cases}, f", {count} trainable parameters")


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
