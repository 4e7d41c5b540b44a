"""PiSSA and OLoRA (`LoraConfig(init_lora_weights="pissa" | "olora")`) interoperability fixtures with HF PEFT,
both directions.

HF PEFT writes the PiSSA / OLoRA factors into the base weight (the model runs on W - s B0 A0 + s B A); we keep
the base and subtract s B0 A0 in the adapter. Two folder forms exist, and both must agree:
- unconverted (HF's default save): A and B with `init_lora_weights` kept; the loader recomputes B0 A0 from the
  original base weight (HF PEFT re-runs the init when it loads one; so do we);
- converted (`save_pretrained(path_initial_model_for_weight_conversion=...)`): a plain LoRA of rank 2r,
  [A; A0] and [B, -B0], alpha doubled, `init_lora_weights` true, against the original base.

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root). Every adapter
has its A and B moved by N(0, 0.05^2) after the init (a trained adapter's stand-in):
- `hf-tiny-llama-pissa/` (+ `-converted/`): r=2, alpha=4, q_proj, v_proj, down_proj; exact SVD.
- `hf-tiny-gpt2-pissa/` (+ `-converted/`): r=2, alpha=4, c_attn and c_fc (GPT-2 Conv1D: HF transposes the weight
  for PiSSA).
- `hf-tiny-llama-olora/` (+ `-converted/`): r=2, alpha=4, q_proj, v_proj, down_proj.
Each unconverted folder gets `logits.json` ({"num_trainable": N, "cases": [...]}, the full last-position logits
of the HF model, i.e. over its rewritten base); the converted folder must reproduce the same logits on the
original base and is checked here with HF PEFT before writing (`max |diff|` printed).

`ours` mode (we write, HF PEFT reads): for every `ours-tiny-*-pissa*` / `ours-tiny-*-olora*` folder under OUT
(written by the Rust test `peft-lora/tests/pissa_olora_hf_parity.rs` with PEFT_WRITE_FIXTURES=1), loads it with
`PeftModel.from_pretrained` on a fresh base (HF re-runs PiSSA / OLoRA on the original weight for an unconverted
folder) and writes `hf_logits.json`.

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Environment: see prompt_tuning.py. From the repository root:

    peft-ref-venv/bin/python scripts/reference/pissa_olora.py hf [--out OUT]
    peft-ref-venv/bin/python scripts/reference/pissa_olora.py ours [--out OUT]
"""

import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model

from common import load_tiny, main, model_cases, ours_models, rewrite_base_name, write_hf_logits, write_json
from lora import check_loaded_exactly, num_trainable, perturb

CASES = [
    ("tiny-llama", "pissa", ["q_proj", "v_proj", "down_proj"]),
    ("tiny-gpt2", "pissa", ["c_attn", "c_fc"]),
    ("tiny-llama", "olora", ["q_proj", "v_proj", "down_proj"]),
]


def max_diff(cases, other):
    return max(
        max(abs(a - b) for a, b in zip(x["logits"], y["logits"])) for x, y in zip(cases, other)
    )


def hf_mode(args):
    out = Path(args.out)
    for seed, (base_name, init, targets) in enumerate(CASES):
        torch.manual_seed(seed)
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=2,
            lora_alpha=4,
            target_modules=targets,
            init_lora_weights=init,
        )
        model = get_peft_model(load_tiny(base_name), config).eval()
        folder = out / f"hf-{base_name}-{init}"
        with tempfile.TemporaryDirectory() as tmp:
            # The initial adapter, saved before training with init true (so that loading it back for the
            # conversion does not subtract B0 A0 a second time), as HF PEFT's PiSSA example does.
            initial = Path(tmp) / "initial"
            model.peft_config["default"].init_lora_weights = True
            model.save_pretrained(initial)
            model.peft_config["default"].init_lora_weights = init
            with torch.no_grad():
                perturb(model, "lora_A.default.weight", 0.05)
                perturb(model, "lora_B.default.weight", 0.05)
            cases = model_cases(model)
            model.save_pretrained(folder)
            rewrite_base_name(folder, base_name, ["target_modules"])
            write_json(folder / "logits.json", {"num_trainable": num_trainable(model), "cases": cases})
            converted = out / f"hf-{base_name}-{init}-converted"
            model.save_pretrained(converted, path_initial_model_for_weight_conversion=str(initial))
            rewrite_base_name(converted, base_name, ["target_modules"])
        # The converted adapter on the original base gives the PiSSA / OLoRA model's logits.
        plain = PeftModel.from_pretrained(load_tiny(base_name), converted).eval()
        diff = max_diff(cases, model_cases(plain))
        assert diff < 1e-4, f"{converted.name}: HF PEFT's own conversion differs by {diff}"
        print(f"{folder.name}: {num_trainable(model)} trainable; converted max |diff| in HF PEFT {diff:.2e}")


def ours_mode(args):
    out = Path(args.out)
    folders = sorted(
        f for pattern in ("ours-tiny-*-pissa*", "ours-tiny-*-olora*") for f in out.glob(pattern)
    )
    for folder, config, model, tokenizer in ours_models(folders, None, is_trainable=True):
        check_loaded_exactly(model, folder)
        count = num_trainable(model)
        cases = model_cases(model, tokenizer)
        note = f", {count} trainable parameters, init_lora_weights {config['init_lora_weights']!r}"
        write_hf_logits(folder, {"num_trainable": count, "cases": cases}, note)


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
