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

from pathlib import Path

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

from common import (
    SMOL_NAME, load_smol, load_tiny, main, ours_models, rewrite_base_name, smol_cases, tiny_cases, write_hf_logits,
    write_json,
)

INIT_TEXT = "Classify the sentiment of the movie review as positive or negative."
OURS_FOLDERS = ["ours-tiny-gpt2", "ours-tiny-llama", "ours-smollm2-sst2"]


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
        write_json(folder / "logits.json", {"cases": tiny_cases(model)})
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
        write_json(folder / "logits.json", {"init_text": INIT_TEXT, "cases": smol_cases(model, tokenizer)})


def written_folders(out):
    # Only prompt tuning's folders: the other methods' scripts own their `ours-*-<method>` fixtures.
    for name in OURS_FOLDERS:
        if (out / name).is_dir():
            yield out / name
        else:
            print(f"skipping {name}: not written yet")


def ours_mode(args):
    out = Path(args.out)
    for folder, _, model, tokenizer in ours_models(written_folders(out), args.gguf):
        cases = smol_cases(model, tokenizer) if tokenizer else tiny_cases(model)
        write_hf_logits(folder, {"cases": cases})


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
