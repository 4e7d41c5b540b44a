"""AdaLoRA interoperability fixtures with HF PEFT, both directions (for peft-adalora).

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root), on the tiny
fixture models (`fixtures/tiny-*`, written by tiny_models.py). Each adapter is trained for `total_step` steps of
AdamW (lr 0.05) on the tiny cases as a causal LM, calling `update_and_allocate(step)` after each step (step counted
from 1, as the Rust trainer counts it), so that `lora_E` is no longer zero and the allocator has written a rank
pattern; then saved with `save_pretrained` (which cuts the factors to the pattern):

- `hf-tiny-gpt2-adalora/`: init_r=6, target_r=3, tinit=1, tfinal=1, total_step=5, lora_alpha=16, default targets
  (`c_attn`, Conv1D);
- `hf-tiny-llama-adalora/`: init_r=4, target_r=2, tinit=1, tfinal=2, deltaT=2, total_step=7, on q_proj, v_proj and
  o_proj, orth_reg_weight=0.2;
- `hf-smollm2-adalora/` (when a GGUF path is given): init_r=4, target_r=2, tinit=1, tfinal=1, total_step=4, on
  q_proj and v_proj of layers 0 and 29 of SmolLM2-135M-Instruct, trained on the three SMOL_TEXTS in turn.

Plus `logits.json`: {"trainable_parameters": N (lora_A / lora_B / lora_E elements of the adapter as HF PEFT loads
it, at the pattern's ranks), "training_parameters": N (HF PEFT's trainable count when training started, at
init_r), "rank_pattern": {...}, "frozen_changed": max |logit change|, "cases": [{"input_ids", "logits"}]}, the
logits those of the adapter reloaded with `PeftModel.from_pretrained`.

`ours` mode (we write, HF PEFT reads): for every `ours-*-adalora*/` folder under OUT (written by the Rust test
`peft-adalora/tests/hf_parity.rs` with PEFT_WRITE_FIXTURES=1), loads it with `PeftModel.from_pretrained` on its
base model and writes `hf_logits.json` ({"peft_loaded": true, "trainable_parameters": N, "cases": [...]}).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Environment: see prompt_tuning.py. From the repository root:

    peft-ref-venv/bin/python scripts/reference/adalora.py hf [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
    peft-ref-venv/bin/python scripts/reference/adalora.py ours [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
"""

import json
from pathlib import Path

import torch
from peft import AdaLoraConfig, PeftModel, TaskType, get_peft_model

from common import (
    SMOL_NAME, SMOL_TEXTS, TINY_IDS, largest_change, load_smol, load_tiny, main, model_cases, ours_models,
    rewrite_base_name, write_hf_logits, write_json,
)

# Keys HF PEFT saves from a Python set: the fixture sorts them, so that regenerating it is stable.
SET_VALUED = ["target_modules"]

TINY = [
    (
        "tiny-gpt2",
        "hf-tiny-gpt2-adalora",
        {"init_r": 6, "target_r": 3, "tinit": 1, "tfinal": 1, "total_step": 5, "lora_alpha": 16},
    ),
    (
        "tiny-llama",
        "hf-tiny-llama-adalora",
        {
            "init_r": 4,
            "target_r": 2,
            "tinit": 1,
            "tfinal": 2,
            "deltaT": 2,
            "total_step": 7,
            "target_modules": ["q_proj", "v_proj", "o_proj"],
            "orth_reg_weight": 0.2,
        },
    ),
]


SMOL = {
    "init_r": 4,
    "target_r": 2,
    "tinit": 1,
    "tfinal": 1,
    "total_step": 4,
    "target_modules": ["q_proj", "v_proj"],
    "layers_to_transform": [0, 29],
}


def adalora_parameters(model):
    return sum(p.numel() for n, p in model.named_parameters() if any(f"lora_{x}" in n for x in "ABE"))


def train(model, total_step, seed, inputs=TINY_IDS):
    """`total_step` AdamW steps as a causal LM, one sequence of `inputs` (token id lists) a step, in turn."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.05)
    model.train()
    for step in range(1, total_step + 1):
        ids = torch.tensor([inputs[(step - 1) % len(inputs)]])
        loss = model(input_ids=ids, labels=ids).loss  # includes the orthogonality regulariser
        loss.backward()
        opt.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad()
    model.eval()


def save_hf(name, folder, extra, seed, load_base=load_tiny, tokenizer=None):
    """AdaLoRA(**extra) on `name` (loaded by `load_base(name)`), trained, saved into `folder` with `logits.json`
    (`tokenizer`: SmolLM2's, whose texts are then the training inputs and the cases)."""
    config = AdaLoraConfig(task_type=TaskType.CAUSAL_LM, **extra)
    model = get_peft_model(load_base(name), config)
    training, _ = model.get_nb_trainable_parameters()
    inputs = [tokenizer(t)["input_ids"] for t in SMOL_TEXTS] if tokenizer else TINY_IDS
    train(model, config.total_step, seed, inputs)
    model.eval()
    model.save_pretrained(folder)
    rewrite_base_name(folder, name, SET_VALUED)
    # The reference is the adapter as HF PEFT loads it (at the pattern's ranks); it equals the trained model's.
    trained_cases = model_cases(model, tokenizer)
    loaded = PeftModel.from_pretrained(load_base(name), folder).eval()
    cases = model_cases(loaded, tokenizer)
    key = "top" if tokenizer else "logits"
    worst = max(max(abs(a - b) for a, b in zip(flat(c[key]), flat(t[key]))) for c, t in zip(cases, trained_cases))
    assert worst < 1e-5, f"{folder.name}: reloading moved the logits by {worst}"
    changed = largest_change(loaded, cases)
    pattern = json.loads((folder / "adapter_config.json").read_text())["rank_pattern"]
    count = adalora_parameters(loaded)
    write_json(
        folder / "logits.json",
        {
            "trainable_parameters": count,
            "training_parameters": training,
            "rank_pattern": pattern,
            "frozen_changed": changed,
            "cases": cases,
        },
    )
    kept = {k: sum(v) for k, v in pattern.items()}
    print(f"{folder.name}: {training} -> {count} parameters, ranks {kept}, logits moved by up to {changed:.3g}")


def flat(values):
    """Logits of a tiny case (numbers) or of a SmolLM2 case (top-20 [id, logit] pairs) as numbers."""
    return [v[1] if isinstance(v, list) else v for v in values]


def hf_mode(args):
    out = Path(args.out)
    for seed, (name, folder_name, extra) in enumerate(TINY):
        save_hf(name, out / folder_name, extra, seed)
    if args.gguf:
        _, tokenizer = load_smol(args.gguf)
        # get_peft_model changes its base in place: the reload gets a fresh one.
        fresh = lambda _name: load_smol(args.gguf)[0]  # noqa: E731
        save_hf(SMOL_NAME, out / "hf-smollm2-adalora", SMOL, len(TINY), fresh, tokenizer)


def ours_mode(args):
    out = Path(args.out)
    for folder, _, model, tokenizer in ours_models(sorted(out.glob("ours-*-adalora*")), args.gguf):
        count = adalora_parameters(model)
        cases = model_cases(model, tokenizer)
        write_hf_logits(folder, {"trainable_parameters": count, "cases": cases}, f", {count} AdaLoRA parameters")


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
