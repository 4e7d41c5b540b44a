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

import argparse
import json
from pathlib import Path

import torch
from peft import IA3Config, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_IDS = [[5, 17, 42, 8, 99, 0, 63], [3, 1, 4, 1, 5]]
SMOL_TEXTS = [
    "Review: a gripping, beautifully shot film.\nSentiment:",
    "Review: dull and far too long, I left early.\nSentiment:",
    "Critique : un film très ennuyeux 😴\nSentiment:",
]
SMOL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_tiny(name):
    return AutoModelForCausalLM.from_pretrained(
        REPO_ROOT / "fixtures" / name, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def load_smol(gguf):
    gguf = Path(gguf).resolve()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


@torch.no_grad()
def last_logits(model, ids):
    out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out.logits[0, -1].float()


def top20(logits):
    values, ids = torch.topk(logits, 20)
    return [[int(i), float(v)] for i, v in zip(ids, values)]


@torch.no_grad()
def perturb(model, scale, seed):
    # init_ia3_weights gives ones (an identity adapter); move every vector so the comparison tests something.
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "ia3_l" in name:
            param.copy_(1.0 + scale * torch.randn(param.shape, generator=gen))


def ia3_parameters(model):
    return sum(p.numel() for n, p in model.named_parameters() if "ia3_l" in n)


def rewrite_base_name(folder, name):
    # save_pretrained also writes a model card naming the local base-model path; the fixture needs none.
    (folder / "README.md").unlink(missing_ok=True)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = name
    for key in ["target_modules", "feedforward_modules"]:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])  # saved from a Python set: sorted, so regenerating is stable
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_json(path, value):
    path.write_text(json.dumps(value, indent=1) + "\n")


def smol_cases(model, tokenizer):
    cases = []
    for text in SMOL_TEXTS:
        ids = tokenizer(text)["input_ids"]
        cases.append({"text": text, "input_ids": ids, "top": top20(last_logits(model, ids))})
    return cases


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
        rewrite_base_name(folder, name)
        cases = [{"input_ids": ids, "logits": last_logits(model, ids).tolist()} for ids in TINY_IDS]
        write_json(folder / "logits.json", {"trainable_parameters": trainable, "cases": cases})
        print(f"{folder_name}: {trainable} trainable parameters")
    if args.gguf:
        base, tokenizer = load_smol(args.gguf)
        model = get_peft_model(base, IA3Config(task_type=TaskType.CAUSAL_LM))
        trainable, _ = model.get_nb_trainable_parameters()
        perturb(model, 0.2, 10)
        model.eval()
        folder = out / "hf-smollm2-ia3"
        model.save_pretrained(folder)
        rewrite_base_name(folder, SMOL_NAME)
        write_json(folder / "logits.json", {"trainable_parameters": trainable, "cases": smol_cases(model, tokenizer)})
        print(f"hf-smollm2-ia3: {trainable} trainable parameters")


def ours_mode(args):
    out = Path(args.out)
    smol = None
    for folder in sorted(out.glob("ours-*-ia3*")):
        base_name = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        if base_name.endswith(".gguf"):
            if not args.gguf:
                print(f"skipping {folder.name}: it needs --gguf")
                continue
            smol = smol or load_smol(args.gguf)
            base, tokenizer = smol
            model = PeftModel.from_pretrained(base, folder).eval()
            cases = smol_cases(model, tokenizer)
            count = ia3_parameters(model)
            smol = (model.unload(), tokenizer)  # the bare model again, for the next folder
        else:
            model = PeftModel.from_pretrained(load_tiny(base_name), folder).eval()
            cases = [{"input_ids": ids, "logits": last_logits(model, ids).tolist()} for ids in TINY_IDS]
            count = ia3_parameters(model)
        write_json(folder / "hf_logits.json", {"peft_loaded": True, "ia3_parameters": count, "cases": cases})
        print(f"{folder.name}: {len(cases)} cases, {count} IA3 parameters")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["hf", "ours"])
    parser.add_argument("--gguf", help="SmolLM2-135M-Instruct GGUF file")
    parser.add_argument("--out", default=str(REPO_ROOT / "fixtures" / "adapters"))
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    hf_mode(args) if args.mode == "hf" else ours_mode(args)


if __name__ == "__main__":
    main()
