#!/usr/bin/env python3
"""Side by side: `peft bench` against the same training step in HF transformers + HF PEFT + PyTorch.

For each method, on the same machine in one run, this times a training step of a seeded random-initialised
model of the same shape (GPT-2 124M or SmolLM2-135M's LLaMA shape), the same batch of random token ids, the
same method configuration and the same thread count, each side in its own process (so that each peak RSS is
its own), and prints the ratio table:

    python benches/side_by_side.py --threads 2                      # GPT-2 124M, batch 4 x 128
    python benches/side_by_side.py --model llama-135m --methods lora bitfit
    python benches/side_by_side.py --methods all --peak             # every method, and the share of the peak
    python benches/side_by_side.py --precision bf16 --gradient-checkpointing --methods lora
    python benches/side_by_side.py --thread-curve 1 2 4 --methods lora   # peft alone at 1, 2, 4 threads
    python benches/side_by_side.py --markdown --out results.json    # the README table, and the raw numbers

A step is forward with the loss on every position (`labels = input_ids`), backward, global-norm clipping at
1.0 and an AdamW update, as `peft bench --task causal-lm` runs it through our trainer. Dropout is off on both
sides (our models have none). The methods are `peft bench`'s tags that HF PEFT also has, with the configs of
its `METHOD_TAGS` (HF PEFT's defaults otherwise, default target modules on both sides: GPT-2 `c_attn`, LLaMA
`q_proj` / `v_proj`; LayerNorm tuning GPT-2 `ln_1` / `ln_2` / `ln_f`, LLaMA `input_layernorm` /
`post_attention_layernorm` / `norm`; the trainable parameter counts agree on both shapes, and a difference
is reported). BitFit on the PyTorch side trains every parameter whose name ends in `bias` (HF PEFT has no
BitFit; the LLaMA shape has no biases, so `--methods all` leaves it out there). HF PEFT 0.21 adapts no Conv1D
with LoHa, LoKr and OFT, so for those on GPT-2 the PyTorch side's `c_attn` is an nn.Linear of the same weights.
AdaLoRA's step on the PyTorch side includes `update_and_allocate` after the update, as HF PEFT's docs run it;
PiSSA's SVD runs when the model is wrapped, before the timed steps, on both sides. A combination HF PEFT
refuses (prefix tuning under gradient checkpointing) shows n/a on the PyTorch side.

`--precision bf16` passes `--precision bf16` to `peft bench` (bf16 frozen projections) and runs the PyTorch
forward and loss under `torch.autocast("cpu", dtype=torch.bfloat16)`, the backward outside it, as PyTorch's
docs do. `--gradient-checkpointing` passes `--gradient-checkpointing` to `peft bench` and calls
`gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})` on the transformers
model before HF PEFT wraps it (non-reentrant checkpointing needs no `enable_input_require_grads`); since
transformers only checkpoints in training mode, that side then runs in `train()` mode, every dropout being
checked to be 0, and the warm-up step checks that the first layer really runs twice. `--no-recompute-mlp`
passes `--no-recompute-mlp` to `peft bench` (every MLP block composed, its activations kept; by default our
side recomputes the MLP blocks no adapter touches in the backward, which PyTorch does not, and in bf16 keeps
their gate / up outputs in bf16 and recomputes only the norm and the activation).

GFLOP/s are the same analytic count of a step's products divided by each side's median step (`step_flops`):
the frozen projections' forward and input gradient, the LM head's forward and input gradient, the attention
score and value products forward and backward (causal attention counted as full), one more forward of the
layers under gradient checkpointing; adapter products, norms and element-wise work are not counted. `--peak`
also measures the machine's peak (`torch.mm` of 2048 x 2048 x 2048, f32 and bf16, the same thread count,
median of 10 after a warm-up) and adds `peft / peak` against the peak of the run's precision.

Needs torch, transformers and peft (pip); `cargo build --release -p peft-cli` first.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ["prompt-tuning", "prefix-tuning", "lora", "bitfit"]
# `peft bench`'s tags (peft-cli/src/commands/bench.rs, METHOD_TAGS) that HF PEFT also has.
ALL_METHODS = ["prompt-tuning", "p-tuning", "prefix-tuning", "lora", "dora", "pissa", "bitfit", "vera", "loha",
               "lokr", "adalora", "ln-tuning", "oft"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"gpt2-124m": "random:gpt2-124m", "llama-135m": "random:llama-135m"}
VIRTUAL_TOKENS = 20
# The virtual tokens of each prompt method: where they go (through every layer, or keys and values only).
PROMPT_POSITIONS = {"prompt-tuning": "sequence", "p-tuning": "sequence", "prefix-tuning": "keys"}
# What the FLOP count needs of each shape (the transformers configs of `torch_model`).
SHAPES = {
    "gpt2-124m": {"layers": 12, "hidden": 768, "vocab": 50257,
                  # c_attn (q, k, v), attn.c_proj, mlp.c_fc, mlp.c_proj
                  "projection_params": 768 * 3 * 768 + 768 * 768 + 2 * 768 * 3072},
    "llama-135m": {"layers": 30, "hidden": 576, "vocab": 49152,
                   # q_proj and o_proj 576 x 576, k_proj and v_proj 576 x 192 (3 key-value heads of 64),
                   # gate_proj, up_proj and down_proj 576 x 1536
                   "projection_params": 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536},
}
MM_SIZE = 2048
# HF PEFT 0.21 adapts only nn.Linear with these (GPT-2's `c_attn` is a transformers Conv1D).
LINEAR_ONLY = {"loha", "lokr", "oft"}


def torch_model(name):
    """A random-initialised transformers model of the named shape, seeded, dropout off."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if name == "gpt2-124m":
        config = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
            max_position_embeddings=8192, tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    model.eval()  # no dropout; gradients still flow
    return model


def hf_config(method):
    """HF PEFT's config for `method`, the same as `peft bench`'s METHOD_TAGS entry (None for BitFit)."""
    from peft import (AdaLoraConfig, LNTuningConfig, LoHaConfig, LoKrConfig, LoraConfig, OFTConfig,
                      PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType, VeraConfig)

    causal = TaskType.CAUSAL_LM
    return {
        "prompt-tuning": lambda: PromptTuningConfig(task_type=causal, num_virtual_tokens=VIRTUAL_TOKENS),
        "p-tuning": lambda: PromptEncoderConfig(task_type=causal, num_virtual_tokens=VIRTUAL_TOKENS),
        "prefix-tuning": lambda: PrefixTuningConfig(task_type=causal, num_virtual_tokens=VIRTUAL_TOKENS),
        "lora": lambda: LoraConfig(task_type=causal, r=8, lora_alpha=16, lora_dropout=0.0),
        "dora": lambda: LoraConfig(task_type=causal, r=8, lora_alpha=16, lora_dropout=0.0, use_dora=True),
        "pissa": lambda: LoraConfig(task_type=causal, r=8, lora_alpha=16, lora_dropout=0.0,
                                    init_lora_weights="pissa"),
        "bitfit": lambda: None,
        "vera": lambda: VeraConfig(task_type=causal, r=256),
        "loha": lambda: LoHaConfig(task_type=causal, r=8, alpha=16),
        "lokr": lambda: LoKrConfig(task_type=causal, r=8, alpha=16),
        "adalora": lambda: AdaLoraConfig(task_type=causal, init_r=12, target_r=8, total_step=1000),
        "ln-tuning": lambda: LNTuningConfig(task_type=causal),
        # peft 0.21: `r` (blocks per layer) and `oft_block_size` are exclusive; r = 0 sizes by block.
        "oft": lambda: OFTConfig(task_type=causal, r=0, oft_block_size=32),
    }[method]()


def torch_method(model, method):
    """The model wrapped as HF PEFT wraps it for `method` (BitFit: only biases trainable)."""
    from peft import get_peft_model

    config = hf_config(method)
    if config is None:
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("bias"))
        return model
    if method in LINEAR_ONLY:
        conv1d_targets_as_linear(model)
    return get_peft_model(model, config)


def conv1d_targets_as_linear(model):
    """Replaces GPT-2's `c_attn` Conv1D modules (the default targets) by nn.Linear of the same weights: the same
    product (`x @ W + b`, W stored transposed), in a module type every HF PEFT tuner adapts. Returns how many."""
    import torch
    from transformers.pytorch_utils import Conv1D

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, Conv1D) and name.endswith("c_attn")]
    for name, conv in found:
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        linear = torch.nn.Linear(conv.nx, conv.nf)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            linear.bias.copy_(conv.bias)
        setattr(parent, name.rsplit(".", 1)[1], linear)
    return len(found)


def checkpointed_layers(model):
    """The transformers layers that gradient checkpointing wraps (GPT-2 blocks, LLaMA decoder layers)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def torch_child(args):
    """Runs in its own process: times the PyTorch step and prints one JSON line."""
    import contextlib
    import resource

    import torch

    torch.set_num_threads(args.threads)
    base = torch_model(args.model)
    if args.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        model = torch_method(base, args.method)
    except ValueError as e:  # a combination HF PEFT refuses (prefix tuning under gradient checkpointing)
        print(json.dumps({"unsupported": str(e), "torch": torch.__version__}))
        return
    if args.gradient_checkpointing:
        # transformers checkpoints only in training mode; train() is safe when no dropout is live.
        live = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p != 0.0]
        if live:
            raise SystemExit(f"dropout is live in {live[:3]}: train() would change the step")
        model.train()
    else:
        model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SystemExit(f"{args.method} has no trainable parameters on {args.model}")
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    adalora = model.base_model if args.method == "adalora" else None
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" \
        else contextlib.nullcontext
    # Counted inside the first layer: transformers checkpoints `forward`, so hooks on the layer itself run once.
    first_layer_calls = []
    inner = next(checkpointed_layers(model)[0].children())
    inner.register_forward_pre_hook(lambda *_: first_layer_calls.append(1))
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    steps, forward = [], []
    for step in range(args.steps + 1):
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=generator)
        first_layer_calls.clear()
        started = time.perf_counter()
        with autocast():
            loss = model(input_ids=ids, labels=ids).loss
        loss_value = loss.item()
        forward_s = time.perf_counter() - started
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if adalora is not None:
            adalora.update_and_allocate(step)
        optimizer.zero_grad(set_to_none=True)
        step_s = time.perf_counter() - started
        if step == 0:
            # A checkpointed layer runs again in the backward: proof that checkpointing is on (and only then).
            expected = 2 if args.gradient_checkpointing else 1
            if len(first_layer_calls) != expected:
                raise SystemExit(f"the first layer ran {len(first_layer_calls)} times in a step, not {expected}")
        else:  # the first step is the warm-up
            steps.append(step_s)
            forward.append(forward_s)
        assert loss_value == loss_value, "the loss is NaN"
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "step_s_median": statistics.median(steps),
        "forward_s_median": statistics.median(forward),
        "peak_rss_mb": peak_kb / 1024.0,
        "tokens_per_s": args.batch * args.seq / statistics.median(steps),
        "trainable_parameters": sum(p.numel() for p in params),
        "step_s": steps,
        "torch": torch.__version__,
    }))


def peak_child(args):
    """Runs in its own process: the GFLOP/s of `torch.mm` on 2048^3 in f32 and bf16, one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    flops = 2.0 * MM_SIZE ** 3
    out = {}
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(MM_SIZE, MM_SIZE).to(dtype)
        b = torch.randn(MM_SIZE, MM_SIZE).to(dtype)
        for _ in range(2):
            torch.mm(a, b)
        times = []
        for _ in range(10):
            started = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - started)
        out[name] = flops / statistics.median(times) / 1e9
    out["torch"] = torch.__version__
    print(json.dumps(out))


def step_flops(model, method, batch, seq, gradient_checkpointing):
    """The multiply-adds x 2 of one training step, counted from the shape alone (the same for both sides).

    Per layer, with `positions` the tokens through the layers (the sequence plus prompt tuning's and
    P-tuning's virtual tokens) and `keys` the attended keys (plus prefix tuning's virtual tokens):
    the frozen projections forward and input gradient, 2 x 2 x positions x projection params; the attention
    score (q k^T) and value (p v) products, 2 x positions x keys x hidden each forward and twice that
    backward (causal attention counted as full, as the kernels compute it); under gradient checkpointing one
    more forward of both. Once: the LM head on the real tokens, forward and input gradient, 2 x 2 x tokens x
    vocab x hidden. Adapter products, norms and element-wise work are ignored, as is the input gradient the
    first layer may skip where nothing before it trains.
    """
    shape = SHAPES[model]
    where = PROMPT_POSITIONS.get(method)
    positions = seq + (VIRTUAL_TOKENS if where == "sequence" else 0)
    keys = positions + (VIRTUAL_TOKENS if where == "keys" else 0)
    hidden = shape["hidden"]
    projection_forward = 2.0 * batch * positions * shape["projection_params"]
    attention_forward = 2 * 2.0 * batch * positions * keys * hidden
    layer = 2 * projection_forward + 3 * attention_forward
    if gradient_checkpointing:
        layer += projection_forward + attention_forward
    lm_head = 2 * 2.0 * batch * seq * shape["vocab"] * hidden
    return shape["layers"] * layer + lm_head


def run_json(cmd, env):
    """Runs `cmd` and returns the JSON object on its last stdout line (stderr is shown on failure)."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def thread_env(threads):
    """The environment with every thread-count variable our side and PyTorch read set to `threads`."""
    t = str(threads)
    return dict(os.environ, RAYON_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t)


def peft_bench(args, method, threads):
    """`peft bench --json` for one method at `threads` threads; the flags only where they differ from the
    default, so that a binary without them still runs the default configuration."""
    cmd = [args.peft, "bench", "--model", MODELS[args.model], "--method", method, "--threads", str(threads),
           "--json", "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
    if args.precision != "f32":
        cmd += ["--precision", args.precision]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if args.no_recompute_mlp:
        cmd.append("--no-recompute-mlp")
    return run_json(cmd, thread_env(threads))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-124m")
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS + ["all"], default=METHODS,
                        help="method tags, or `all` for every one")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                        help="bf16: peft's bf16 frozen projections against PyTorch's bf16 autocast")
    parser.add_argument("--no-recompute-mlp", action="store_true",
                        help="pass --no-recompute-mlp to peft bench: keep every MLP block's activations")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each layer in the backward, on both sides")
    parser.add_argument("--peak", action="store_true",
                        help="measure torch.mm's GFLOP/s (f32 and bf16) and add the `peft / peak` column")
    parser.add_argument("--thread-curve", nargs="+", type=int, metavar="THREADS",
                        help="instead of the comparison: `peft bench` of the first method at each thread count")
    parser.add_argument("--peft", default=os.path.join(ROOT, "target", "release", "peft"),
                        help="the peft binary")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--out", help="also write every measurement to this JSON file")
    parser.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peak-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_child:
        return torch_child(args)
    if args.peak_child:
        return peak_child(args)
    if "all" in args.methods:
        # The LLaMA shape has no biases, so BitFit has nothing to train there.
        args.methods = [m for m in ALL_METHODS if not (m == "bitfit" and args.model == "llama-135m")]
    if not os.path.isfile(args.peft):
        raise SystemExit(f"{args.peft} is missing: run `cargo build --release -p peft-cli` first")
    if args.thread_curve:
        return thread_curve(args)

    peak = measure_peak(args.threads) if args.peak else None
    child = [sys.executable, __file__, "--torch-child", "--model", args.model, "--threads", str(args.threads),
             "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
             "--precision", args.precision]
    if args.gradient_checkpointing:
        child.append("--gradient-checkpointing")
    rows = []
    for method in args.methods:
        ours = peft_bench(args, method, args.threads)
        theirs = run_json(child + ["--method", method], thread_env(args.threads))
        flops = step_flops(args.model, method, args.batch, args.seq, args.gradient_checkpointing)
        row = {"method": method, "flops": flops, "ours": ours, "torch": theirs,
               "ours_gflops": flops / ours["step_s_median"] / 1e9}
        if "unsupported" in theirs:
            print(f"{method}: ours {ours['step_s_median']:.3f} s {ours['peak_rss_mb']:.0f} MB, "
                  f"HF PEFT refuses it: {theirs['unsupported']}", file=sys.stderr)
        else:
            row["torch_gflops"] = flops / theirs["step_s_median"] / 1e9
            print(f"{method}: ours {ours['step_s_median']:.3f} s {ours['peak_rss_mb']:.0f} MB, "
                  f"torch {theirs['step_s_median']:.3f} s {theirs['peak_rss_mb']:.0f} MB", file=sys.stderr)
            if ours["trainable_parameters"] != theirs["trainable_parameters"]:
                print(f"{method}: trainable parameters differ: ours {ours['trainable_parameters']:,}, "
                      f"HF PEFT {theirs['trainable_parameters']:,}", file=sys.stderr)
        rows.append(row)

    setup = describe(args, rows[0]["torch"]["torch"], peak)
    print(setup["header"])
    table = [["method", "trainable", "peft step s", "torch step s", "time ratio", "peft forward s",
              "torch forward s", "peft peak MB", "torch peak MB", "memory ratio", "peft GFLOP/s",
              "torch GFLOP/s"] + (["peft / peak"] if peak else [])]
    notes = []
    for r in rows:
        o, t = r["ours"], r["torch"]
        if "unsupported" in t:
            notes.append(f"{r['method']}: HF PEFT refuses it ({t['unsupported']})")
            t = {k: float("nan") for k in ("step_s_median", "forward_s_median", "peak_rss_mb")}
        elif args.model == "gpt2-124m" and r["method"] in LINEAR_ONLY:
            notes.append(f"{r['method']}: HF PEFT adapts no Conv1D, so the PyTorch side's c_attn is nn.Linear "
                         "of the same weights")
        row = [
            r["method"], f"{o['trainable_parameters']:,}", f"{o['step_s_median']:.3f}",
            f"{t['step_s_median']:.3f}", f"{o['step_s_median'] / t['step_s_median']:.2f}x",
            f"{o['forward_s_median']:.3f}", f"{t['forward_s_median']:.3f}", f"{o['peak_rss_mb']:.0f}",
            f"{t['peak_rss_mb']:.0f}", f"{o['peak_rss_mb'] / t['peak_rss_mb']:.2f}x",
            f"{r['ours_gflops']:.1f}", f"{r.get('torch_gflops', float('nan')):.1f}",
        ]
        if peak:
            row.append(f"{100.0 * r['ours_gflops'] / peak[args.precision]:.0f}%")
        table.append([cell.replace("nanx", "nan").replace("nan", "n/a") for cell in row])
    print_table(table, args.markdown)
    for note in notes:
        print(note)
    write_json(args.out, {"setup": setup, "rows": rows})


def thread_curve(args):
    """`peft bench` of the first method at each of `--thread-curve`'s counts: step time, speed-up, peak RSS."""
    method = args.methods[0]
    flops = step_flops(args.model, method, args.batch, args.seq, args.gradient_checkpointing)
    points = []
    for threads in args.thread_curve:
        ours = peft_bench(args, method, threads)
        points.append({"threads": threads, "ours": ours, "ours_gflops": flops / ours["step_s_median"] / 1e9})
        print(f"{threads} threads: {ours['step_s_median']:.3f} s {ours['peak_rss_mb']:.0f} MB", file=sys.stderr)
    base = next((p for p in points if p["threads"] == 1), points[0])
    setup = describe(args, None, None, threads=args.thread_curve)
    setup["method"] = method
    setup["cores"] = os.cpu_count()
    print(f"{setup['header']}; peft bench --method {method}; {os.cpu_count()} cores (more threads than "
          "cores oversubscribe)")
    table = [["threads", "step s", f"speed-up over {base['threads']} thread{'s' * (base['threads'] != 1)}",
              "peak MB", "GFLOP/s"]]
    for p in points:
        o = p["ours"]
        table.append([str(p["threads"]), f"{o['step_s_median']:.3f}",
                      f"{base['ours']['step_s_median'] / o['step_s_median']:.2f}x", f"{o['peak_rss_mb']:.0f}",
                      f"{p['ours_gflops']:.1f}"])
    print_table(table, args.markdown)
    write_json(args.out, {"setup": setup, "flops": flops, "thread_curve": points})


def measure_peak(threads):
    """torch.mm's GFLOP/s in f32 and bf16 at `threads` threads, in its own process; printed."""
    peak = run_json([sys.executable, __file__, "--peak-child", "--threads", str(threads)], thread_env(threads))
    print(f"peak (torch.mm {MM_SIZE}^3, {threads} threads, median of 10): f32 {peak['f32']:.1f} GFLOP/s, "
          f"bf16 {peak['bf16']:.1f} GFLOP/s", file=sys.stderr)
    return peak


def describe(args, torch_version, peak, threads=None):
    """The run's setup: a one-line header and its parts, for the table and the JSON. `threads` (a list)
    replaces `--threads` for a thread curve."""
    threads = threads or args.threads
    thread_text = "/".join(map(str, threads)) if isinstance(threads, list) else str(threads)
    precision = {"f32": "f32",
                 "bf16": "bf16 (peft: bf16 frozen projections; torch: bf16 autocast of forward and loss)"}
    parts = [f"{args.model} (random weights)", f"batch {args.batch} x {args.seq}", f"{thread_text} threads",
             precision[args.precision]]
    if args.gradient_checkpointing:
        parts.append("gradient checkpointing")
    if args.no_recompute_mlp:
        parts.append("peft's MLP activations kept")
    elif args.precision == "bf16":
        parts.append("peft's untouched MLP blocks keep gate / up in bf16")
    else:
        parts.append("peft's untouched MLP blocks recomputed")
    parts.append(f"median of {args.steps} steps after a warm-up")
    header = ", ".join(parts) + f"; {cpu_name()}"
    if torch_version:
        header += f"; torch {torch_version}"
    if peak:
        header += f"; peak (torch.mm {MM_SIZE}^3) f32 {peak['f32']:.1f}, bf16 {peak['bf16']:.1f} GFLOP/s"
    return {"header": header,
            "model": args.model, "batch": args.batch, "seq": args.seq, "steps": args.steps,
            "threads": threads, "precision": args.precision,
            "gradient_checkpointing": args.gradient_checkpointing, "recompute_mlp": not args.no_recompute_mlp,
            "cpu": cpu_name(), "torch": torch_version,
            "peak_gflops": peak,
            "flops": "analytic: frozen projections and LM head forward + input gradient, attention products "
                     "forward + backward counted as full (not causal), adapter products ignored"}


def print_table(table, markdown):
    """A list of rows (the first the header) as Markdown or as right-aligned columns."""
    if markdown:
        print("| " + " | ".join(table[0]) + " |")
        print("|" + "---|" * len(table[0]))
        for row in table[1:]:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))


def write_json(path, value):
    """Writes `value` to `path` (if given) through a temporary file, so that a reader never sees half of it."""
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def cpu_name():
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
