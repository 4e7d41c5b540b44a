"""Writes the tiny OPT parity fixtures that `peft-models/tests/opt_parity.rs` checks.

Each fixture is a Hugging Face model folder (`config.json`, `model.safetensors`) plus `logits.json`: the float32
logits that transformers (`OPTForCausalLM`, eager attention) computes for a single sequence, a right-padded batch
with its attention mask, a left-padded batch (OPT derives positions from the mask's cumulative sum, so real tokens
after left padding start at position 0), and a case with a seeded random key/value prefix passed as a
`DynamicCache` of length P (the mask extended by P ones), which checks the `attention_prefix` hook. Logits at
padded positions are recorded too: transformers gives a padded token position -1 (embedding row 1), and the Rust
model computes positions the same way, so every logit is compared.

Folders written under OUT (default: `fixtures/` at the repository root):

- `tiny-opt/`                  pre-LN (as opt-125m), tied head, relu, final layer norm, a word-level `tokenizer.json`
- `tiny-opt/post-ln-proj/`     post-LN (`do_layer_norm_before=False`, as opt-350m), `word_embed_proj_dim` 16 <
                               hidden 32, so `project_in` / `project_out` exist and there is no final layer norm
- `tiny-opt/untied-no-bias/`   `enable_bias=False`, `layer_norm_elementwise_affine=False`,
                               `_remove_final_layer_norm=True`, untied `lm_head`, exact `gelu`

Weights are randomised as tiny_models.py does (so every term matters), with the learned positions drawn as large as
the token embeddings, so that a position off by one shows in the logits.

Set-up: see tiny_models.py. Then, from the repository root:

    peft-ref-venv/bin/python scripts/reference/opt_model.py [OUT]

The output is deterministic for a given torch / transformers version (seeded, CPU, float32).
"""

import sys
from pathlib import Path

import torch
from transformers import OPTConfig, OPTForCausalLM

from tiny_models import BATCH, REPO_ROOT, VOCAB, logits_of, plain_cases, prefix_case, randomise, word_level_tokenizer, write

# A left-padded batch: the second row's real tokens start after two pads.
LEFT_BATCH = [[11, 22, 33, 44, 55], [1, 1, 7, 8, 9]]
LEFT_MASK = [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]


def randomise_opt(model: OPTForCausalLM, seed: int) -> None:
    """tiny_models.randomise, then the position table redrawn at the token embeddings' scale (N(0, 0.5))."""
    randomise(model, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        table = model.model.decoder.embed_positions.weight
        table.copy_(0.5 * torch.randn(table.shape, generator=gen))


def cases(model, seed: int):
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    left = {"name": "left_padded_batch", "input_ids": LEFT_BATCH, "attention_mask": LEFT_MASK,
            "logits": logits_of(model, LEFT_BATCH, LEFT_MASK)}
    prefix = prefix_case(model, cfg.num_attention_heads, head_dim, cfg.num_hidden_layers, seed=seed)
    assert prefix["input_ids"] == BATCH
    return plain_cases(model) + [left, prefix]


def build(seed: int, **overrides) -> OPTForCausalLM:
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=64, pad_token_id=1, bos_token_id=2, eos_token_id=2,
        attn_implementation="eager",
    )
    settings.update(overrides)
    model = OPTForCausalLM(OPTConfig(**settings)).eval()
    randomise_opt(model, seed)
    return model


def pre_ln(out: Path) -> None:
    model = build(11)
    folder = out / "tiny-opt"
    write(folder, model, cases(model, seed=12))
    word_level_tokenizer(folder / "tokenizer.json")


def post_ln_proj(out: Path) -> None:
    model = build(13, do_layer_norm_before=False, word_embed_proj_dim=16)
    assert model.model.decoder.project_in is not None and model.model.decoder.final_layer_norm is None
    write(out / "tiny-opt" / "post-ln-proj", model, cases(model, seed=14))


def untied_no_bias(out: Path) -> None:
    model = build(15, enable_bias=False, layer_norm_elementwise_affine=False, _remove_final_layer_norm=True,
                  tie_word_embeddings=False, activation_function="gelu")
    assert model.model.decoder.final_layer_norm is None
    assert model.lm_head.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr()
    write(out / "tiny-opt" / "untied-no-bias", model, cases(model, seed=16))


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "fixtures"
    torch.use_deterministic_algorithms(True)
    pre_ln(out)
    post_ln_proj(out)
    untied_no_bias(out)


if __name__ == "__main__":
    main()
