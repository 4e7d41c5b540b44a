"""Helpers shared by the HF PEFT interoperability scripts (prompt_tuning.py, p_tuning.py, prefix_tuning.py,
lora.py, ia3.py, dora.py, vera.py, lycoris.py): the fixture models and inputs, last-position logits, the fixture cases, the adapter folders'
clean-up, and the scripts' common command line (`hf` / `ours` mode, `--gguf`, `--out`).

Set-up and use: see prompt_tuning.py.
"""

import argparse
import copy
import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
# Token ids of the tiny-model cases.
TINY_IDS = [[5, 17, 42, 8, 99, 0, 63], [3, 1, 4, 1, 5]]
# Texts of the SmolLM2 cases.
SMOL_TEXTS = [
    "Review: a gripping, beautifully shot film.\nSentiment:",
    "Review: dull and far too long, I left early.\nSentiment:",
    "Critique : un film très ennuyeux 😴\nSentiment:",
]
# The name SmolLM2-based fixtures give their base model (never a machine path).
SMOL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Base models whose `ours-*` adapters zoo_adapters.py checks (the per-method scripts skip them).
ZOO_BASES = ("tiny-t5", "tiny-opt", "tiny-bert")


def load_tiny(name):
    """A tiny fixture model (`fixtures/<name>`, written by tiny_models.py), float32, eager attention."""
    return AutoModelForCausalLM.from_pretrained(
        REPO_ROOT / "fixtures" / name, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def load_smol(gguf):
    """SmolLM2-135M-Instruct and its tokenizer from the GGUF file `gguf`."""
    gguf = Path(gguf).resolve()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


@torch.no_grad()
def last_logits(model, ids):
    """The full float32 logits at the last position of the single sequence `ids`."""
    out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out.logits[0, -1].float()


def top20(logits):
    """The 20 largest logits as [[id, logit], ...], largest first."""
    values, ids = torch.topk(logits, 20)
    return [[int(i), float(v)] for i, v in zip(ids, values)]


def tiny_cases(model):
    """A case per TINY_IDS row: its ids and the full last-position logits."""
    return [{"input_ids": ids, "logits": last_logits(model, ids).tolist()} for ids in TINY_IDS]


def model_cases(model, tokenizer=None):
    """The cases of `model`: `smol_cases` where a tokenizer is given (SmolLM2), else `tiny_cases`."""
    return smol_cases(model, tokenizer) if tokenizer else tiny_cases(model)


@torch.no_grad()
def largest_change(model, cases):
    """The largest |logit| change a PeftModel's adapter makes over its frozen model at the last position of the
    `cases`' inputs, over the whole vocabulary (the fixture is no no-op when this is far from zero)."""
    changes = []
    for case in cases:
        with_adapter = last_logits(model, case["input_ids"]).tolist()
        with model.disable_adapter():
            frozen = last_logits(model, case["input_ids"]).tolist()
        changes.append(max(abs(a - b) for a, b in zip(with_adapter, frozen)))  # in Python floats, as before
    return max(changes)


def smol_cases(model, tokenizer):
    """A case per SMOL_TEXTS text: the text, its ids and the 20 largest last-position logits."""
    cases = []
    for text in SMOL_TEXTS:
        ids = tokenizer(text)["input_ids"]
        cases.append({"text": text, "input_ids": ids, "top": top20(last_logits(model, ids))})
    return cases


def rewrite_base_name(folder, name, sorted_lists=()):
    """Makes a saved adapter folder a fixture: `base_model_name_or_path` (and `tokenizer_name_or_path`, where set)
    become `name`, the list values of the `sorted_lists` keys are sorted, and the model card goes."""
    # save_pretrained also writes a model card naming the local base-model path; the fixture needs none.
    (folder / "README.md").unlink(missing_ok=True)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = name
    if config.get("tokenizer_name_or_path"):
        config["tokenizer_name_or_path"] = name
    for key in sorted_lists:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])  # saved from a Python set: sorted, so regenerating is stable
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_json(path, value):
    """`value` as indented JSON at `path`."""
    path.write_text(json.dumps(value, indent=1) + "\n")


def write_hf_logits(folder, result, note=""):
    """Writes `hf_logits.json` into an `ours-*` folder, {"peft_loaded": true, **result} (`result` holds the
    "cases"), and says so (with `note` after the number of cases)."""
    write_json(folder / "hf_logits.json", {"peft_loaded": True, **result})
    print(f"{folder.name}: {len(result['cases'])} cases{note}")


def ours_models(folders, gguf, load_base=None, **kwargs):
    """For each of the `ours-*` adapter `folders`: the folder, its adapter config, HF PEFT's model with the adapter
    loaded (`PeftModel.from_pretrained(base, folder, **kwargs)`, in eval mode), and the tokenizer where the base is
    SmolLM2 (else None). Every adapter gets a pristine base: its tiny model loaded afresh (with `load_base(name)`,
    `load_tiny` by default), or a copy of SmolLM2 (loaded once, from `gguf`); a folder on SmolLM2 is skipped,
    saying so, when no `gguf` was given, and so is one on a ZOO_BASES model (zoo_adapters.py handles those)."""
    smol = None
    for folder in folders:
        config = json.loads((folder / "adapter_config.json").read_text())
        base_name = config["base_model_name_or_path"]
        if base_name in ZOO_BASES:
            print(f"skipping {folder.name}: zoo_adapters.py checks it")
            continue
        if base_name.endswith(".gguf"):
            if not gguf:
                print(f"skipping {folder.name}: it needs --gguf")
                continue
            smol = smol or load_smol(gguf)
            base, tokenizer = copy.deepcopy(smol[0]), smol[1]
        else:
            base, tokenizer = (load_base or load_tiny)(base_name), None
        yield folder, config, PeftModel.from_pretrained(base, folder, **kwargs).eval(), tokenizer


def main(doc, hf_mode, ours_mode):
    """The scripts' command line: `hf` or `ours` mode, `--gguf`, `--out` (created if absent)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["hf", "ours"])
    parser.add_argument("--gguf", help="SmolLM2-135M-Instruct GGUF file")
    parser.add_argument("--out", default=str(REPO_ROOT / "fixtures" / "adapters"))
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    hf_mode(args) if args.mode == "hf" else ours_mode(args)
