"""Prompt-tuning interoperability fixtures with HF PEFT, both directions.

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root):

- `hf-tiny-gpt2-random/`, `hf-tiny-llama-random/`: PromptTuningConfig(RANDOM, 5 virtual tokens) on the tiny
  fixture models (`fixtures/tiny-*`, written by tiny_models.py), saved with `save_pretrained`, plus
  `logits.json`: {"cases": [{"input_ids": [...], "logits": [...]}]} -- the full last-position logits.
- `hf-smollm2-text/` (when a GGUF path is given): PromptTuningConfig(TEXT init, 8 virtual tokens) on
  SmolLM2-135M-Instruct loaded from its GGUF, plus `logits.json` with the input ids and the 20 largest
  last-position logits per text, and the init text (our TEXT init must give the same prompt).

`ours` mode (we write, HF PEFT reads): for each of its `ours-*/` adapter folders under OUT
(ours-tiny-gpt2, ours-tiny-llama, ours-smollm2-sst2) (written by the Rust test
`peft-prompt/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1, or by `peft train`), loads it with
`PeftModel.from_pretrained` on its base model and writes `hf_logits.json` in the same form as above.

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.

Set up once (CPU wheels are enough):

    python3 -m venv peft-ref-venv
    peft-ref-venv/bin/pip install torch transformers peft gguf safetensors

then, from the repository root:

    peft-ref-venv/bin/python scripts/reference/prompt_tuning.py hf [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
    peft-ref-venv/bin/python scripts/reference/prompt_tuning.py ours [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
"""

import argparse
import json
from pathlib import Path

import torch
from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_IDS = [[5, 17, 42, 8, 99, 0, 63], [3, 1, 4, 1, 5]]
SMOL_TEXTS = [
    "Review: a gripping, beautifully shot film.\nSentiment:",
    "Review: dull and far too long, I left early.\nSentiment:",
    "Critique : un film très ennuyeux 😴\nSentiment:",
]
INIT_TEXT = "Classify the sentiment of the movie review as positive or negative."
SMOL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OURS_FOLDERS = ["ours-tiny-gpt2", "ours-tiny-llama", "ours-smollm2-sst2"]


def load_tiny(name):
    return AutoModelForCausalLM.from_pretrained(
        REPO_ROOT / "fixtures" / name, torch_dtype=torch.float32, attn_implementation="eager"
    ).eval()


def load_smol(gguf):
    gguf = Path(gguf).resolve()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32, attn_implementation="eager"
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


def rewrite_base_name(folder, name):
    # save_pretrained also writes a model card naming the local base-model path; the fixture needs none.
    (folder / "README.md").unlink(missing_ok=True)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = name
    if config.get("tokenizer_name_or_path"):
        config["tokenizer_name_or_path"] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_json(path, value):
    path.write_text(json.dumps(value, indent=1) + "\n")


def hf_mode(args):
    out = Path(args.out)
    for name in ["tiny-gpt2", "tiny-llama"]:
        torch.manual_seed(0)
        model = get_peft_model(
            load_tiny(name),
            PromptTuningConfig(
                task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5, prompt_tuning_init=PromptTuningInit.RANDOM
            ),
        ).eval()
        folder = out / f"hf-{name}-random"
        model.save_pretrained(folder)
        rewrite_base_name(folder, name)
        cases = [{"input_ids": ids, "logits": last_logits(model, ids).tolist()} for ids in TINY_IDS]
        write_json(folder / "logits.json", {"cases": cases})
    if args.gguf:
        base, tokenizer = load_smol(args.gguf)
        gguf = Path(args.gguf).resolve()
        config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=8,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=INIT_TEXT,
            tokenizer_name_or_path=str(gguf.parent),
            tokenizer_kwargs={"gguf_file": gguf.name},
        )
        model = get_peft_model(base, config).eval()
        folder = out / "hf-smollm2-text"
        model.save_pretrained(folder)
        rewrite_base_name(folder, SMOL_NAME)
        cases = []
        for text in SMOL_TEXTS:
            ids = tokenizer(text)["input_ids"]
            cases.append({"text": text, "input_ids": ids, "top": top20(last_logits(model, ids))})
        write_json(folder / "logits.json", {"init_text": INIT_TEXT, "cases": cases})


def ours_mode(args):
    out = Path(args.out)
    smol = None
    # Only prompt tuning's folders: the other methods' scripts own their `ours-*-<method>` fixtures.
    for name in OURS_FOLDERS:
        folder = out / name
        if not folder.is_dir():
            print(f"skipping {name}: not written yet")
            continue
        base_name = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        if base_name.endswith(".gguf"):
            if not args.gguf:
                print(f"skipping {folder.name}: it needs --gguf")
                continue
            smol = smol or load_smol(args.gguf)
            base, tokenizer = smol
            model = PeftModel.from_pretrained(base, folder).eval()
            cases = []
            for text in SMOL_TEXTS:
                ids = tokenizer(text)["input_ids"]
                cases.append({"text": text, "input_ids": ids, "top": top20(last_logits(model, ids))})
            model.unload() if hasattr(model, "unload") else None
        else:
            model = PeftModel.from_pretrained(load_tiny(base_name), folder).eval()
            cases = [{"input_ids": ids, "logits": last_logits(model, ids).tolist()} for ids in TINY_IDS]
        write_json(folder / "hf_logits.json", {"peft_loaded": True, "cases": cases})
        print(f"{folder.name}: {len(cases)} cases")


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
