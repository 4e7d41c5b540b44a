"""Writes the tiny T5 parity fixtures that `peft-models/tests/t5_parity.rs` checks.

Each fixture is a Hugging Face `T5ForConditionalGeneration` folder (`config.json`, `model.safetensors`, float32)
plus `logits.json`: the float32 decoder logits that transformers (eager attention) computes for

- `single`: one encoder sequence and four decoder ids;
- `right_padded_batch`: a right-padded encoder batch with its attention mask, and decoder ids;
- `batch_with_decoder_prefix`: the padded batch with a seeded random key/value prefix per decoder layer, passed
  as HF PEFT passes prefix tuning to an encoder-decoder (`get_prompt` with `num_transformer_submodules == 2`):
  an `EncoderDecoderCache` whose self-attention `DynamicCache` holds the prefix and whose cross-attention
  cache is empty; no decoder attention mask. The encoder gets no prefix;
- `batch_with_encoder_virtual_tokens`: the padded batch with seeded random virtual-token embeddings prepended
  to the encoder input (`inputs_embeds`) and the encoder mask extended by ones, as HF PEFT's
  `PeftModelForSeq2SeqLM` does for prompt tuning;

and `buckets`: transformers' `_relative_position_bucket` over a range of relative positions, for the fixture's
bucket settings and T5's defaults (32 buckets, max distance 128), both directions.

Folders written under OUT (default: `fixtures/` at the repository root):

- `tiny-t5/`           T5 v1.1 / flan-t5 layout: `feed_forward_proj = "gated-gelu"`, untied `lm_head` (no output
                       scaling), d_kv = d_model / num_heads, 2 encoder and 2 decoder layers
- `tiny-t5/relu-tied/` T5 v1.0 layout: `feed_forward_proj = "relu"`, the head tied to `shared` and the decoder
                       output scaled by d_model^-0.5, d_kv 6 with 4 heads (inner 24 != d_model 32), 2 encoder
                       layers and 3 decoder layers (`num_decoder_layers`)

The saved `config.json` is rewritten in the form the published checkpoints use (`tie_word_embeddings`, no
`scale_decoder_outputs`, which transformers 5 adds), and the folder is reloaded with `from_pretrained` to check
that it computes the recorded logits.

Set up the Python side once (CPU wheels are enough):

    python3 -m venv peft-ref-venv
    peft-ref-venv/bin/pip install torch transformers peft safetensors

then, from the repository root:

    peft-ref-venv/bin/python scripts/reference/t5_model.py [OUT]

The output is deterministic for a given torch / transformers version (seeded, CPU, float32).
"""

import inspect
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import DynamicCache, EncoderDecoderCache, T5Config, T5ForConditionalGeneration

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB = 100
PREFIX_LEN = 3
VIRTUAL_TOKENS = 2

# Encoder ids: one sequence long enough to reach the logarithmic buckets, and a right-padded batch of two.
SINGLE = [[5, 17, 42, 8, 99, 3, 63, 12, 71, 30, 2, 1]]
BATCH = [[11, 22, 33, 44, 55, 66, 77, 88, 9, 1], [7, 8, 9, 10, 1, 0, 0, 0, 0, 0]]
BATCH_MASK = [[1] * 10, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]]
# Decoder ids: the decoder start token 0, then labels shifted right (a padded label shows up as 0).
DEC_SINGLE = [[0, 17, 42, 8]]
DEC_BATCH = [[0, 5, 9, 3], [0, 77, 1, 0]]
# Relative positions at which the buckets are recorded.
RELATIVE_POSITIONS = list(range(-300, 301))


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Replaces HF's init by weights that make every term matter: norms 1 + N(0, 0.2), embeddings and relative
    attention biases N(0, 0.5), every other weight N(0, 0.15) (as tiny_models.py)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif "shared" in name or "relative_attention_bias" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.15 * noise)


def cache_arg(model) -> str:
    # transformers 5 names the past key values `cache`; 4.x called them `past_key_values`.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def logits_of(model, ids, mask, dec_ids, cache=None, virtual=None):
    kwargs = {"decoder_input_ids": torch.tensor(dec_ids), "use_cache": cache is not None}
    mask = torch.tensor(mask)
    if virtual is None:
        kwargs["input_ids"] = torch.tensor(ids)
    else:
        embeds = model.get_input_embeddings()(torch.tensor(ids))
        prompt = virtual.unsqueeze(0).expand(embeds.shape[0], -1, -1)
        kwargs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
        mask = torch.cat([torch.ones(mask.shape[0], virtual.shape[0], dtype=mask.dtype), mask], dim=1)
    if cache is not None:
        kwargs[cache_arg(model)] = cache
    return model(attention_mask=mask, **kwargs).logits.float()


def peft_style_cache(keys, values):
    """What HF PEFT's `get_prompt` builds for an encoder-decoder: per-layer (self k, self v, cross k, cross v),
    then the cross-attention cache emptied and marked as not computed."""
    cache = EncoderDecoderCache(tuple((k, v, k.clone(), v.clone()) for k, v in zip(keys, values)))
    cache.cross_attention_cache = DynamicCache()
    for key in cache.is_updated.keys():
        cache.is_updated[key] = False
    return cache


def cases(model, seed: int):
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    batch = len(BATCH)
    layers = cfg.num_decoder_layers
    shape = (batch, cfg.num_heads, PREFIX_LEN, cfg.d_kv)
    keys = [torch.randn(shape, generator=gen) for _ in range(layers)]
    values = [torch.randn(shape, generator=gen) for _ in range(layers)]
    virtual = 0.5 * torch.randn(VIRTUAL_TOKENS, cfg.d_model, generator=gen)
    out = [
        {"name": "single", "input_ids": SINGLE, "attention_mask": [[1] * len(SINGLE[0])],
         "decoder_input_ids": DEC_SINGLE,
         "logits": logits_of(model, SINGLE, [[1] * len(SINGLE[0])], DEC_SINGLE)},
        {"name": "right_padded_batch", "input_ids": BATCH, "attention_mask": BATCH_MASK,
         "decoder_input_ids": DEC_BATCH, "logits": logits_of(model, BATCH, BATCH_MASK, DEC_BATCH)},
        {"name": "batch_with_decoder_prefix", "input_ids": BATCH, "attention_mask": BATCH_MASK,
         "decoder_input_ids": DEC_BATCH,
         "prefix": {"len": PREFIX_LEN, "key": [k.tolist() for k in keys], "value": [v.tolist() for v in values]},
         "logits": logits_of(model, BATCH, BATCH_MASK, DEC_BATCH, cache=peft_style_cache(keys, values))},
        {"name": "batch_with_encoder_virtual_tokens", "input_ids": BATCH, "attention_mask": BATCH_MASK,
         "decoder_input_ids": DEC_BATCH, "virtual_tokens": virtual.tolist(),
         "logits": logits_of(model, BATCH, BATCH_MASK, DEC_BATCH, virtual=virtual)},
    ]
    # The prefix really takes part: without it the logits differ.
    assert not torch.allclose(out[2]["logits"], out[1]["logits"], atol=1e-3)
    return out


def buckets(cfg):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.tensor(RELATIVE_POSITIONS)
    rows = []
    for num_buckets, max_distance in [
        (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance),
        (32, 128),
    ]:
        for bidirectional in (True, False):
            b = T5Attention._relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
            rows.append({"num_buckets": num_buckets, "max_distance": max_distance, "bidirectional": bidirectional,
                         "relative_positions": RELATIVE_POSITIONS, "buckets": b.tolist()})
    return rows


def write(folder: Path, model, seed: int, published_config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    recorded = cases(model, seed)
    model.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("scale_decoder_outputs", None)
    config.update(published_config)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # The folder as written must compute the recorded logits.
    reloaded = T5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    assert reloaded.config.scale_decoder_outputs == model.config.scale_decoder_outputs
    for case, again in zip(recorded, cases(reloaded, seed)):
        assert torch.equal(case["logits"], again["logits"]), case["name"]
    for case in recorded:
        case["logits"] = case["logits"].tolist()
    record = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "num_parameters": model.num_parameters(),
        "buckets": buckets(model.config),
        "cases": recorded,
    }
    (folder / "logits.json").write_text(json.dumps(record))
    for f in sorted(folder.iterdir()):
        if f.is_file():
            print(f"  {f.relative_to(folder.parent)}: {f.stat().st_size} bytes")


def base_config(**kwargs):
    settings = dict(vocab_size=VOCAB, d_model=32, d_ff=48, num_heads=4, num_layers=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16,
                    layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                    attn_implementation="eager")
    return T5Config(**{**settings, **kwargs})


def gated_untied(out: Path) -> None:
    torch.manual_seed(0)
    cfg = base_config(d_kv=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model = T5ForConditionalGeneration(cfg).eval()
    # transformers 5 ties lm_head to shared at construction; v1.1 checkpoints have their own head.
    model.lm_head.weight = torch.nn.Parameter(torch.empty(VOCAB, 32))
    randomise(model, 11)
    assert not model.config.scale_decoder_outputs
    assert not torch.equal(model.lm_head.weight, model.shared.weight)
    write(out / "tiny-t5", model, seed=12, published_config={"tie_word_embeddings": False})


def relu_tied(out: Path) -> None:
    torch.manual_seed(0)
    cfg = base_config(d_kv=6, num_decoder_layers=3, feed_forward_proj="relu",
                      relative_attention_num_buckets=16, relative_attention_max_distance=20)
    model = T5ForConditionalGeneration(cfg).eval()
    randomise(model, 13)
    assert model.config.scale_decoder_outputs
    assert model.lm_head.weight is model.shared.weight
    write(out / "tiny-t5" / "relu-tied", model, seed=14, published_config={"tie_word_embeddings": True})


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "fixtures"
    torch.use_deterministic_algorithms(True)
    gated_untied(out)
    relu_tied(out)


if __name__ == "__main__":
    main()
