"""P-tuning (HF PEFT's PromptEncoderConfig, peft_type P_TUNING) interoperability fixtures, both directions.

`hf` mode (HF PEFT writes, we read), into OUT (default `fixtures/adapters/` at the repository root):

- `hf-tiny-{gpt2,llama}-p-tuning-{mlp,lstm}/`: PromptEncoderConfig (5 virtual tokens; MLP with the default
  encoder_hidden_size, LSTM with encoder_hidden_size 16 and 2 layers) on the tiny fixture models, saved with
  `save_pretrained` (so `prompt_embeddings` is the encoder's output), plus
  - `encoder.safetensors`: the prompt encoder's full torch state dict (`embedding.weight`, `mlp_head.0.weight`,
    `lstm_head.weight_ih_l0_reverse`, ...), so that our encoder can be given the same weights and compared
    with the saved output;
  - `logits.json`: {"trainable_params": N, "cases": [{"input_ids": [...], "logits": [...]}]} -- HF PEFT's
    trainable-parameter count (embedding + encoder) and the full last-position logits of the training-mode
    model (which the saved adapter must reproduce; this script checks that it does after reloading).
- `hf-smollm2-p-tuning-mlp/` (when a GGUF path is given): MLP encoder, 8 virtual tokens, on SmolLM2-135M-Instruct
  loaded from its GGUF, with `logits.json` holding the trainable-parameter count, the input ids and the 20
  largest last-position logits per text (no encoder state: it would be megabytes).

`ours` mode (we write, HF PEFT reads): for every `ours-*p-tuning*/` adapter folder under OUT (written by
`PEFT_WRITE_FIXTURES=1 cargo test -p peft-prompt --test p_tuning_hf_parity`), loads it with
`PeftModel.from_pretrained` on its base model and writes `hf_logits.json` as prompt_tuning.py does.

Set up as described in prompt_tuning.py, then from the repository root:

    peft-ref-venv/bin/python scripts/reference/p_tuning.py hf [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
    peft-ref-venv/bin/python scripts/reference/p_tuning.py ours [--gguf PATH/TO/SmolLM2.gguf] [--out OUT]
"""

from pathlib import Path

import torch
from peft import PeftModel, PromptEncoderConfig, TaskType, get_peft_model
from safetensors.torch import save_file

from common import (
    SMOL_NAME, TINY_IDS, last_logits, load_smol, load_tiny, main, ours_models, rewrite_base_name, smol_cases,
    tiny_cases, write_hf_logits, write_json,
)

# (encoder type, encoder_hidden_size): the LSTM's hidden size is kept small so that its state stays small.
TINY_ENCODERS = [("MLP", None), ("LSTM", 16)]


def p_tuning_config(kind, hidden, virtual_tokens):
    return PromptEncoderConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=virtual_tokens,
        encoder_reparameterization_type=kind,
        encoder_hidden_size=hidden,
        encoder_num_layers=2,
    )


def check_reload(folder, base, expected, ids_list):
    """The saved adapter (encoder output only) must give the training-mode model's logits."""
    reloaded = PeftModel.from_pretrained(base, folder).eval()
    for ids, logits in zip(ids_list, expected):
        diff = (last_logits(reloaded, ids) - logits).abs().max().item()
        assert diff < 1e-5, f"{folder.name}: reloaded adapter differs by {diff}"


def hf_mode(args):
    out = Path(args.out)
    for name in ["tiny-gpt2", "tiny-llama"]:
        for kind, hidden in TINY_ENCODERS:
            torch.manual_seed(0)
            model = get_peft_model(load_tiny(name), p_tuning_config(kind, hidden, 5)).eval()
            trainable, _ = model.get_nb_trainable_parameters()
            encoder = model.prompt_encoder["default"]
            folder = out / f"hf-{name}-p-tuning-{kind.lower()}"
            model.save_pretrained(folder)
            rewrite_base_name(folder, name)
            state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
            save_file(state, folder / "encoder.safetensors")
            logits = [last_logits(model, ids) for ids in TINY_IDS]
            check_reload(folder, load_tiny(name), logits, TINY_IDS)
            cases = [{"input_ids": ids, "logits": l.tolist()} for ids, l in zip(TINY_IDS, logits)]
            write_json(folder / "logits.json", {"trainable_params": trainable, "cases": cases})
            print(f"{folder.name}: {trainable} trainable parameters, {len(state)} encoder tensors")
    if args.gguf:
        base, tokenizer = load_smol(args.gguf)
        torch.manual_seed(0)
        model = get_peft_model(base, p_tuning_config("MLP", None, 8)).eval()
        trainable, _ = model.get_nb_trainable_parameters()
        folder = out / "hf-smollm2-p-tuning-mlp"
        model.save_pretrained(folder)
        rewrite_base_name(folder, SMOL_NAME)
        write_json(folder / "logits.json", {"trainable_params": trainable, "cases": smol_cases(model, tokenizer)})
        print(f"{folder.name}: {trainable} trainable parameters")


def ours_mode(args):
    out = Path(args.out)
    for folder, config, model, tokenizer in ours_models(sorted(out.glob("ours-*p-tuning*")), args.gguf):
        assert config["peft_type"] == "P_TUNING", f"{folder.name} is not a P-tuning adapter"
        cases = smol_cases(model, tokenizer) if tokenizer else tiny_cases(model)
        write_hf_logits(folder, {"cases": cases})


if __name__ == "__main__":
    main(__doc__, hf_mode, ours_mode)
