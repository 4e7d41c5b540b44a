"""LoRA interoperability fixtures with HF PEFT, both directions.

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root). Every
adapter starts from `init_lora_weights=False` or has its `lora_B` perturbed, so that it is not a no-op:

- `hf-tiny-gpt2-lora/`: r=4, alpha=8, target_modules ["c_attn", "c_proj"] (GPT-2 Conv1D, fan_in_fan_out),
  bias "lora_only" with the wrapped modules' biases perturbed, lora_dropout 0.1, init False.
- `hf-tiny-llama-lora/`: r=4, alpha=16, target_modules q_proj, k_proj, v_proj, o_proj, down_proj, init False.
- `hf-tiny-llama-lora-rslora/`: as above with use_rslora, layers_to_transform [1] (layers_pattern "layers"),
  rank_pattern {"o_proj": 2}, alpha_pattern {"down_proj": 4}, "gaussian" init and lora_B perturbed.
- `hf-smollm2-lora/` (when a GGUF path is given): r=4, q_proj and v_proj of layers 0, 14 and 29, init False,
  on SmolLM2-135M-Instruct loaded from its GGUF.

Each folder gets `logits.json`: {"num_trainable": HF PEFT's trainable parameter count, "cases": [...]} with,
per case, the input ids and the full last-position logits (tiny models) or the text, its ids and the 20 largest
last-position logits (SmolLM2).

`ours` mode (we write, HF PEFT reads): for every `ours-*-lora*/` folder under OUT (written by the Rust test
`peft-lora/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1), loads it with `PeftModel.from_pretrained` on its
base model, checks that HF PEFT holds exactly the saved tensors, and writes `hf_logits.json` in the same form
(with "peft_loaded": true and the trainable count HF PEFT reports for the loaded adapter).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.

    peft-ref-venv/bin/python scripts/reference/lora.py hf [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
    peft-ref-venv/bin/python scripts/reference/lora.py ours [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
"""

from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from common import (
    SMOL_NAME, load_smol, load_tiny, main, ours_models, rewrite_base_name, smol_cases, tiny_cases, write_hf_logits,
    write_json,
)

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]


def num_trainable(model):
    return int(model.get_nb_trainable_parameters()[0])


@torch.no_grad()
def perturb(model, suffix, std):
    """Adds N(0, std^2) noise to every parameter whose name ends with `suffix` (a trained adapter's stand-in)."""
    touched = 0
    for name, p in model.named_parameters():
        if name.endswith(suffix):
            p.add_(torch.randn_like(p) * std)
            touched += 1
    assert touched, f"no parameter ends with {suffix}"


def save_hf(model, folder, base_name, cases):
    model.save_pretrained(folder)
    rewrite_base_name(folder, base_name)
    write_json(folder / "logits.json", {"num_trainable": num_trainable(model), "cases": cases})
    print(f"{folder.name}: {num_trainable(model)} trainable parameters")


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
    )
    model = get_peft_model(load_tiny("tiny-gpt2"), config).eval()
    perturb(model, "base_layer.bias", 0.1)
    save_hf(model, out / "hf-tiny-gpt2-lora", "tiny-gpt2", tiny_cases(model))

    torch.manual_seed(1)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=16, target_modules=LLAMA_TARGETS, init_lora_weights=False
    )
    model = get_peft_model(load_tiny("tiny-llama"), config).eval()
    save_hf(model, out / "hf-tiny-llama-lora", "tiny-llama", tiny_cases(model))

    torch.manual_seed(2)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=4,
        lora_alpha=8,
        target_modules=LLAMA_TARGETS,
        use_rslora=True,
        layers_to_transform=[1],
        layers_pattern="layers",
        rank_pattern={"o_proj": 2},
        alpha_pattern={"down_proj": 4},
        init_lora_weights="gaussian",
    )
    model = get_peft_model(load_tiny("tiny-llama"), config).eval()
    perturb(model, "lora_B.default.weight", 0.5)
    save_hf(model, out / "hf-tiny-llama-lora-rslora", "tiny-llama", tiny_cases(model))

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
        )
        model = get_peft_model(base, config).eval()
        save_hf(model, out / "hf-smollm2-lora", SMOL_NAME, smol_cases(model, tokenizer))


def check_loaded_exactly(model, folder):
    """HF PEFT ignores unexpected keys with a warning; make sure every saved tensor really arrived."""
    saved = load_file(folder / "adapter_model.safetensors")
    held = get_peft_model_state_dict(model)
    assert set(saved) == set(held), f"{folder.name}: saved {sorted(set(saved) ^ set(held))} differ"
    for key, value in saved.items():
        assert torch.equal(held[key].float(), value.float()), f"{folder.name}: {key} differs after loading"


def ours_mode(args):
    out = Path(args.out)
    # A pristine base for each adapter: trained biases would stay in a shared one after unloading.
    for folder, _, model, tokenizer in ours_models(sorted(out.glob("ours-*-lora*")), args.gguf, is_trainable=True):
        check_loaded_exactly(model, folder)
        cases = smol_cases(model, tokenizer) if tokenizer else tiny_cases(model)
        count = num_trainable(model)
        write_hf_logits(folder, {"num_trainable": count, "cases": cases}, f", {count} trainable parameters")


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
