"""Interoperability fixtures with HF PEFT on the zoo's newer architectures (T5, OPT, BERT), both directions.

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root). None of
the adapters is a no-op:

- `hf-tiny-t5-prompt/`: PromptTuningConfig(SEQ_2_SEQ_LM, 4 virtual tokens, RANDOM init) on
  `AutoModelForSeq2SeqLM` from `fixtures/tiny-t5`; HF PEFT's table holds 8 rows (num_transformer_submodules 2),
  of which the encoder reads the first 4.
- `hf-tiny-t5-prefix/`: PrefixTuningConfig(SEQ_2_SEQ_LM, 3 virtual tokens, no projection), its prefix
  perturbed; the decoder's self-attention reads it.
- `hf-tiny-t5-lora/`: LoraConfig(SEQ_2_SEQ_LM, r 4, alpha 8, the default targets q and v: self- and
  cross-attention), init_lora_weights False.
- `hf-tiny-opt-lora/`: LoraConfig(CAUSAL_LM, r 4, alpha 8, default targets q_proj and v_proj, init False) on
  `fixtures/tiny-opt`.
- `hf-tiny-opt-prefix/`: PrefixTuningConfig(CAUSAL_LM, 4 virtual tokens, no projection), perturbed.
- `hf-tiny-bert-lora-cls/`: LoraConfig(SEQ_CLS, r 4, alpha 8, target query and value, init False) on
  `BertForSequenceClassification` built from `fixtures/tiny-bert` with num_labels 3; the classifier is HF
  PEFT's `modules_to_save` (saved as `base_model.model.classifier.weight` / `.bias`) and perturbed. The LoRA
  keys carry transformers' `bert.` prefix (`base_model.model.bert.encoder.layer.0...`).
- `hf-tiny-bert-prefix-cls/`: PrefixTuningConfig(SEQ_CLS, 3 virtual tokens, no projection), perturbed, the
  classifier saved too (`base_model.classifier.weight` / `.bias`) and perturbed. HF PEFT 0.21.2 refuses prefix
  tuning on BertForSequenceClassification under transformers 5 (a signature check for `past_key_values`, which
  transformers 5 renamed `cache`); `expose_past_key_values` restores the old name on the backbone's forward so
  that HF PEFT's own code path runs (see there).

Each folder gets `logits.json`: {"num_trainable": HF PEFT's trainable parameter count, "cases": [...]} where
a case holds
  T5:   "input_ids", "decoder_input_ids" and "logits", the full vocabulary logits at the last decoder position;
  OPT:  "input_ids" and the full last-position "logits" (as the other tiny decoder fixtures);
  BERT: one right-padded batch (pad id 0): "input_ids", "attention_mask" and "logits", the class logits
        [rows, 3].

`ours` mode (we write, HF PEFT reads): for every `ours-tiny-{t5,opt,bert}-*/` folder under OUT (written by the
Rust test `peft-cli/tests/zoo_interop.rs` with PEFT_WRITE_FIXTURES=1), loads it with
`PeftModel.from_pretrained` on a fresh base of the right kind, checks that HF PEFT holds exactly the saved
tensors (it ignores keys it cannot place, with a warning only), and writes `hf_logits.json` in the same form,
with "peft_loaded": true. The trainable count is HF PEFT's for the loaded adapter made trainable (LoRA), or, for
a prompt-learning adapter (which HF PEFT loads for inference only), for its config on a fresh base. The other
scripts' `ours` modes skip these folders (common.ZOO_BASES).

Machine paths never enter the fixtures: `base_model_name_or_path` is rewritten to the fixture's name.
Set-up as in prompt_tuning.py; then, from the repository root:

    peft-ref-venv/bin/python scripts/reference/zoo_adapters.py hf [--out OUT]
    peft-ref-venv/bin/python scripts/reference/zoo_adapters.py ours [--out OUT]
"""

import json
from pathlib import Path

import torch
from peft import (
    LoraConfig, PeftConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType,
    get_peft_model,
)
from safetensors import safe_open
from transformers import AutoModelForSeq2SeqLM, BertForSequenceClassification

from common import REPO_ROOT, load_tiny, main, rewrite_base_name, tiny_cases, write_hf_logits, write_json
from lora import check_loaded_exactly, num_trainable, perturb

# Encoder ids and decoder ids (starting from T5's decoder start token 0) of the T5 cases.
T5_CASES = [([5, 17, 42, 8, 99, 3, 63, 1], [0, 12, 7]), ([3, 1, 4, 1, 5, 9, 2, 6, 1], [0])]
# BERT rows ([CLS]-like first id, [SEP]-like last), right-padded with 0 into one batch.
BERT_ROWS = [[2, 5, 17, 42, 8, 3], [2, 9, 11, 3], [2, 64, 33, 71, 3]]
BERT_LABELS = 3


def load_t5():
    return AutoModelForSeq2SeqLM.from_pretrained(
        REPO_ROOT / "fixtures" / "tiny-t5", dtype=torch.float32, attn_implementation="eager"
    ).eval()


def load_bert(num_labels=BERT_LABELS):
    """BertForSequenceClassification over the tiny BertModel checkpoint; the classifier is freshly initialised
    (seed the RNG first). Its backbone's forward names its cache `past_key_values` (see below)."""
    model = BertForSequenceClassification.from_pretrained(
        REPO_ROOT / "fixtures" / "tiny-bert", num_labels=num_labels, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    expose_past_key_values(model.bert)
    return model


def expose_past_key_values(backbone):
    """HF PEFT 0.21.2 runs prefix tuning on a SEQ_CLS model whose forward takes no `past_key_values` by calling
    the backbone (`bert`) with `past_key_values=<the prefix cache>`, but first checks, by signature, that the
    backbone's forward has such a parameter. transformers 5 renamed it `cache` (the old name is still accepted,
    through a deprecation decorator), so the check fails and HF PEFT refuses ("Model does not support past key
    values which are required for prefix tuning"). This gives the backbone a forward with the parameter by its
    old name, passing it on as `cache`: HF PEFT's own `_prefix_tuning_forward` then runs unchanged. LoRA does
    not go through this path."""
    forward = backbone.forward

    def with_past_key_values(*args, past_key_values=None, **kwargs):
        return forward(*args, cache=past_key_values, **kwargs)

    backbone.forward = with_past_key_values


@torch.no_grad()
def t5_cases(model):
    cases = []
    for ids, dec in T5_CASES:
        out = model(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            decoder_input_ids=torch.tensor([dec]),
        )
        cases.append({"input_ids": ids, "decoder_input_ids": dec, "logits": out.logits[0, -1].float().tolist()})
    return cases


@torch.no_grad()
def bert_cases(model):
    width = max(len(r) for r in BERT_ROWS)
    ids = [r + [0] * (width - len(r)) for r in BERT_ROWS]
    mask = [[1] * len(r) + [0] * (width - len(r)) for r in BERT_ROWS]
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return [{"input_ids": ids, "attention_mask": mask, "logits": out.logits.float().tolist()}]


CASES = {"tiny-t5": t5_cases, "tiny-opt": tiny_cases, "tiny-bert": bert_cases}


def hf_adapters():
    """(folder, base name, fresh base, config, parameter-name suffixes to perturb) of every `hf` fixture."""
    lora = dict(r=4, lora_alpha=8, init_lora_weights=False)
    seq2seq, causal, cls = TaskType.SEQ_2_SEQ_LM, TaskType.CAUSAL_LM, TaskType.SEQ_CLS
    prefix = "prompt_encoder.default.embedding.weight"
    head = ["classifier.modules_to_save.default.weight", "classifier.modules_to_save.default.bias"]
    return [
        (
            "hf-tiny-t5-prompt", "tiny-t5", load_t5,
            PromptTuningConfig(task_type=seq2seq, num_virtual_tokens=4, prompt_tuning_init=PromptTuningInit.RANDOM),
            [],
        ),
        (
            "hf-tiny-t5-prefix", "tiny-t5", load_t5,
            PrefixTuningConfig(task_type=seq2seq, num_virtual_tokens=3), [prefix],
        ),
        ("hf-tiny-t5-lora", "tiny-t5", load_t5, LoraConfig(task_type=seq2seq, **lora), []),
        ("hf-tiny-opt-lora", "tiny-opt", lambda: load_tiny("tiny-opt"), LoraConfig(task_type=causal, **lora), []),
        (
            "hf-tiny-opt-prefix", "tiny-opt", lambda: load_tiny("tiny-opt"),
            PrefixTuningConfig(task_type=causal, num_virtual_tokens=4), [prefix],
        ),
        (
            "hf-tiny-bert-lora-cls", "tiny-bert", load_bert,
            LoraConfig(task_type=cls, target_modules=["query", "value"], **lora), head,
        ),
        (
            "hf-tiny-bert-prefix-cls", "tiny-bert", load_bert,
            PrefixTuningConfig(task_type=cls, num_virtual_tokens=3), [prefix] + head,
        ),
    ]


def hf_mode(args):
    out = Path(args.out)
    for seed, (name, base_name, load, config, perturbed) in enumerate(hf_adapters()):
        torch.manual_seed(seed)
        model = get_peft_model(load(), config).eval()
        for suffix in perturbed:
            perturb(model, suffix, 0.5)
        folder = out / name
        model.save_pretrained(folder)
        rewrite_base_name(folder, base_name, sorted_lists=("target_modules",))
        count = num_trainable(model)
        write_json(folder / "logits.json", {"num_trainable": count, "cases": CASES[base_name](model)})
        # What HF PEFT reads back from the folder is what it computed with.
        reloaded = PeftModel.from_pretrained(fresh_base(folder), folder).eval()
        check_loaded_exactly(reloaded, folder)
        again = CASES[base_name](reloaded)
        assert max_diff(again, CASES[base_name](model)) < 1e-6, f"{name}: reloaded logits differ"
        print(f"{name}: {count} trainable parameters")


def max_diff(a, b):
    """Max |a - b| over the logits of two lists of cases."""
    return max(float((torch.tensor(x["logits"]) - torch.tensor(y["logits"])).abs().max()) for x, y in zip(a, b))


def fresh_base(folder):
    """A pristine base model for the adapter folder: its base's kind, and for a classification adapter a head
    as wide as the saved one."""
    base_name = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    if base_name == "tiny-t5":
        return load_t5()
    if base_name == "tiny-bert":
        with safe_open(folder / "adapter_model.safetensors", "pt") as f:
            head = next(k for k in f.keys() if k.endswith("classifier.weight"))
            return load_bert(f.get_slice(head).get_shape()[0])
    return load_tiny(base_name)


def ours_mode(args):
    out = Path(args.out)
    for folder in sorted(p for base in CASES for p in out.glob(f"ours-{base}-*")):
        base_name = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        config = PeftConfig.from_pretrained(folder)
        # HF PEFT loads a prompt-learning adapter for inference only; its trainable count is the config's.
        trainable = not config.is_prompt_learning
        model = PeftModel.from_pretrained(fresh_base(folder), folder, is_trainable=trainable).eval()
        check_loaded_exactly(model, folder)
        if trainable:
            count = num_trainable(model)
        else:
            config.inference_mode = False
            count = num_trainable(get_peft_model(fresh_base(folder), config))
        cases = CASES[base_name](model)
        write_hf_logits(folder, {"num_trainable": count, "cases": cases}, f", {count} trainable parameters")


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
