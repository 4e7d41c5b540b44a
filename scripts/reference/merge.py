"""Adapter arithmetic fixtures with HF PEFT (for peft-merge): LoRA adapters combined by
`LoraModel.add_weighted_adapter`, both directions.

`hf` mode (HF PEFT merges, we compare), into OUT (default `fixtures/merge/` at the repository root):

- `inputs/<name>/`: seeded LoRA adapters (`init_lora_weights=False`, so A and B are both random and non-zero),
  saved by HF PEFT on the tiny fixture models (`fixtures/tiny-*`, written by tiny_models.py):
  - `gpt2-a`: r=2, lora_alpha=4, `c_attn` and `attn.c_proj`, rank_pattern {"attn.c_proj": 1};
  - `gpt2-b`: r=2, lora_alpha=8, `c_attn`, `attn.c_proj` and `c_fc` (a module `gpt2-a` does not adapt),
    rank_pattern {"attn.c_proj": 1}, alpha_pattern {"c_attn": 2};
  - `gpt2-c`: r=3 (a different rank), lora_alpha=6, `c_attn` and `c_fc`;
  - `llama-a`, `llama-b`: rsLoRA, r=4, lora_alpha 8 / 4, on `q_proj` + `v_proj` / `q_proj` + `k_proj`.
- `hf/<case>/`: HF PEFT's merged adapter for each case of CASES, as `save_pretrained` writes it (the config as
  HF writes it: for the element-wise combinations of adapters with a rank_pattern it drops the pattern, HF PEFT
  issue 3737, so HF itself cannot reload those; `cases.json` says which reload).
- `cases.json`: the cases (adapters, weights, combination and its settings) with, per case, whether HF PEFT
  reloads its own merged adapter (`hf_reloads`).

DARE's random masks come from `torch.bernoulli`, which nothing outside torch reproduces: the DARE cases here use
density 1.0 (no pruning, so deterministic); the Rust tests check DARE's statistics at other densities.

`ours` mode (we merge, HF PEFT reads): for every `ours/<case>/` under OUT (a few of the cases, written by the Rust
test `peft-merge/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1), loads it with `PeftModel.from_pretrained` on its
base and writes `ours/<case>/hf_check.json`: {"peft_loaded": true, "max_abs_diff": the largest |difference|
between the delta weight HF PEFT computes for each module of our adapter (scaling included) and the delta of
HF's own merged adapter `hf/<case>` at scaling 1 (HF's merged config means scaling 1)}.

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Environment: see prompt_tuning.py. From the repository root:

    peft-ref-venv/bin/python scripts/reference/merge.py hf [--out OUT]
    peft-ref-venv/bin/python scripts/reference/merge.py ours [--out OUT]
"""

import argparse
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file

from common import REPO_ROOT, load_tiny, rewrite_base_name, write_json

# Keys HF PEFT saves from a Python set: sorted, so that regenerating the fixtures is stable.
SET_VALUED = ["target_modules"]

# name: (base, seed, LoraConfig arguments)
INPUTS = {
    "gpt2-a": (
        "tiny-gpt2",
        10,
        dict(r=2, lora_alpha=4, target_modules=["c_attn", "attn.c_proj"], rank_pattern={"attn.c_proj": 1}),
    ),
    "gpt2-b": (
        "tiny-gpt2",
        11,
        dict(
            r=2,
            lora_alpha=8,
            target_modules=["c_attn", "attn.c_proj", "c_fc"],
            rank_pattern={"attn.c_proj": 1},
            alpha_pattern={"c_attn": 2},
        ),
    ),
    "gpt2-c": ("tiny-gpt2", 12, dict(r=3, lora_alpha=6, target_modules=["c_attn", "c_fc"])),
    "llama-a": ("tiny-llama", 13, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True)),
    "llama-b": ("tiny-llama", 14, dict(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj"], use_rslora=True)),
}

AB = ["gpt2-a", "gpt2-b"]
ABC = ["gpt2-a", "gpt2-b", "gpt2-c"]
LLAMA = ["llama-a", "llama-b"]

# Each case: name, adapters, weights and add_weighted_adapter's keyword arguments.
CASES = [
    ("linear", AB, [0.7, 0.3], dict(combination_type="linear")),
    ("linear-negative", AB, [1.0, -0.5], dict(combination_type="linear")),
    # One adapter: HF PEFT reweights it linearly whatever the combination asked for.
    ("single", ["gpt2-c"], [0.6], dict(combination_type="svd")),
    ("ties", AB, [0.6, 0.4], dict(combination_type="ties", density=0.5)),
    ("ties-frequency", AB, [0.6, -0.4], dict(combination_type="ties", density=0.7, majority_sign_method="frequency")),
    ("magnitude-prune", AB, [0.5, 0.5], dict(combination_type="magnitude_prune", density=0.4)),
    ("dare-linear-dense", AB, [0.7, 0.3], dict(combination_type="dare_linear", density=1.0)),
    ("dare-ties-dense", AB, [0.7, 0.3], dict(combination_type="dare_ties", density=1.0)),
    ("cat", ABC, [0.5, 0.3, 0.2], dict(combination_type="cat")),
    ("svd", ABC, [0.5, 0.3, 0.2], dict(combination_type="svd")),
    ("svd-rank", ABC, [0.5, -0.3, 0.2], dict(combination_type="svd", svd_rank=2)),
    ("svd-clamp", ABC, [0.5, 0.3, 0.2], dict(combination_type="svd", svd_rank=2, svd_clamp=0.9)),
    ("ties-svd", ABC, [0.5, 0.3, 0.2], dict(combination_type="ties_svd", density=0.6)),
    ("magnitude-prune-svd", ABC, [0.5, 0.3, 0.2], dict(combination_type="magnitude_prune_svd", density=0.5)),
    ("dare-linear-svd-dense", ["gpt2-a", "gpt2-c"], [0.6, 0.4],
     dict(combination_type="dare_linear_svd", density=1.0)),
    ("llama-linear", LLAMA, [0.5, 0.5], dict(combination_type="linear")),
    ("llama-cat", LLAMA, [0.5, 0.5], dict(combination_type="cat")),
    ("llama-svd", LLAMA, [0.8, 0.2], dict(combination_type="svd", svd_rank=3)),
]


def write_inputs(out):
    for name, (base, seed, kwargs) in INPUTS.items():
        torch.manual_seed(seed)
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, init_lora_weights=False, **kwargs)
        model = get_peft_model(load_tiny(base), config)
        folder = out / "inputs" / name
        model.save_pretrained(folder)
        rewrite_base_name(folder, base, SET_VALUED)
        print(f"inputs/{name}: {sum(p.numel() for n, p in model.named_parameters() if 'lora_' in n)} parameters")


def base_of(adapters):
    return INPUTS[adapters[0]][0]


def with_inputs(out, adapters):
    """The base of `adapters` with each of them loaded (from the fixture folders) under its own name."""
    base = load_tiny(base_of(adapters))
    model = PeftModel.from_pretrained(base, out / "inputs" / adapters[0], adapter_name=adapters[0])
    for name in adapters[1:]:
        model.load_adapter(out / "inputs" / name, adapter_name=name)
    return model


def reloads(folder, base):
    """Whether HF PEFT loads the adapter folder (it raises on a size mismatch)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PeftModel.from_pretrained(load_tiny(base), folder)
        return True
    except RuntimeError:
        return False


def hf_mode(out):
    write_inputs(out)
    cases = []
    for name, adapters, weights, kwargs in CASES:
        model = with_inputs(out, adapters)
        model.add_weighted_adapter(adapters, weights, "merged", **kwargs)
        folder = out / "hf" / name
        shutil.rmtree(folder, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, selected_adapters=["merged"])
            shutil.move(Path(tmp) / "merged", folder)
        rewrite_base_name(folder, base_of(adapters), SET_VALUED)
        settings = {k: v for k, v in kwargs.items() if k != "combination_type"}
        case = {
            "name": name,
            "base": base_of(adapters),
            "adapters": adapters,
            "weights": weights,
            "combination": kwargs["combination_type"],
            **settings,
            "hf_reloads": reloads(folder, base_of(adapters)),
        }
        cases.append(case)
        print(f"hf/{name}: r={model.peft_config['merged'].r}, reloads in HF PEFT: {case['hf_reloads']}")
    write_json(out / "cases.json", cases)


@torch.no_grad()
def deltas(model, adapter):
    """{module name: the delta weight HF PEFT applies for `adapter`, [out, in]} of every LoRA layer."""
    found = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and adapter in module.lora_A:
            delta = module.get_delta_weight(adapter)
            found[name.removeprefix("base_model.model.")] = delta.T if module.fan_in_fan_out else delta
    return found


def delta_of_file(folder):
    """{module name: B @ A} of an adapter file (HF's merged adapters mean scaling 1)."""
    tensors = load_file(folder / "adapter_model.safetensors")
    found = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            found[module] = tensors[module + ".lora_B.weight"].float() @ a.float()
    return found


def ours_mode(out):
    cases = {c["name"]: c for c in json.loads((out / "cases.json").read_text())}
    for folder in sorted((out / "ours").glob("*")):
        case = cases[folder.name]
        model = PeftModel.from_pretrained(load_tiny(case["base"]), folder).eval()
        ours = deltas(model, "default")
        theirs = delta_of_file(out / "hf" / folder.name)
        theirs = {k.removeprefix("base_model.model."): v for k, v in theirs.items()}
        assert set(ours) == set(theirs), f"{folder.name}: modules differ: {sorted(set(ours) ^ set(theirs))}"
        diff = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
        write_json(folder / "hf_check.json", {"peft_loaded": True, "max_abs_diff": diff})
        print(f"ours/{folder.name}: loaded in HF PEFT, largest delta difference {diff:.3g}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["hf", "ours"])
    parser.add_argument("--out", default=str(REPO_ROOT / "fixtures" / "merge"))
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    hf_mode(Path(args.out)) if args.mode == "hf" else ours_mode(Path(args.out))
