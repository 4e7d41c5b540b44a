#!/usr/bin/env python3
"""Side by side: `peft bench` against the same training step in HF transformers + HF PEFT + PyTorch.

For each method, on the same machine in one run, this times a training step of a seeded random-initialised
model of the same shape (GPT-2 124M or SmolLM2-135M's LLaMA shape), the same batch of random token ids, the
same method configuration and the same thread count, each side in its own process (so that each peak RSS is
its own), and prints the ratio table:

    python benches/side_by_side.py --threads 2                      # GPT-2 124M, batch 4 x 128
    python benches/side_by_side.py --model llama-135m --methods lora bitfit
    python benches/side_by_side.py --markdown --out results.json    # the README table, and the raw numbers

A step is forward with the loss on every position (`labels = input_ids`), backward, global-norm clipping at
1.0 and an AdamW update, as `peft bench --task causal-lm` runs it through our trainer. Dropout is off on both
sides (our models have none). BitFit on the PyTorch side trains every parameter whose name ends in `bias`
(HF PEFT has no BitFit). Needs torch, transformers and peft (pip); `cargo build --release -p peft-cli` first.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ["prompt-tuning", "prefix-tuning", "lora", "bitfit"]
ALL_METHODS = ["prompt-tuning", "p-tuning", "prefix-tuning", "lora", "bitfit"]
MODELS = {"gpt2-124m": "random:gpt2-124m", "llama-135m": "random:llama-135m"}
VIRTUAL_TOKENS = 20


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


def torch_method(model, method):
    """The model wrapped as HF PEFT wraps it for `method` (BitFit: only biases trainable)."""
    from peft import (LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType,
                      get_peft_model)

    if method == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("bias"))
        return model
    config = {
        "prompt-tuning": lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL_TOKENS),
        "p-tuning": lambda: PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL_TOKENS),
        "prefix-tuning": lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL_TOKENS),
        "lora": lambda: LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16, lora_dropout=0.0),
    }[method]()
    model = get_peft_model(model, config)
    model.eval()
    return model


def torch_child(args):
    """Runs in its own process: times the PyTorch step and prints one JSON line."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    model = torch_method(torch_model(args.model), args.method)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    steps, forward = [], []
    for step in range(args.steps + 1):
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=generator)
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss_value = loss.item()
        forward_s = time.perf_counter() - started
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_s = time.perf_counter() - started
        if step > 0:  # the first step is the warm-up
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


def run_json(cmd, env):
    """Runs `cmd` and returns the JSON object on its last stdout line (stderr is shown on failure)."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-124m")
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=METHODS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peft", default="target/release/peft", help="the peft binary")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--out", help="also write every measurement to this JSON file")
    parser.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_child:
        return torch_child(args)
    if not os.path.isfile(args.peft):
        raise SystemExit(f"{args.peft} is missing: run `cargo build --release -p peft-cli` first")

    threads = str(args.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    shape = ["--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
    rows = []
    for method in args.methods:
        ours = run_json([args.peft, "bench", "--model", MODELS[args.model], "--method", method,
                         "--threads", threads, "--json"] + shape, env)
        theirs = run_json([sys.executable, __file__, "--torch-child", "--model", args.model, "--method", method,
                           "--threads", threads] + shape, env)
        rows.append({"method": method, "ours": ours, "torch": theirs})
        print(f"{method}: ours {ours['step_s_median']:.3f} s {ours['peak_rss_mb']:.0f} MB, "
              f"torch {theirs['step_s_median']:.3f} s {theirs['peak_rss_mb']:.0f} MB", file=sys.stderr)

    cpu = cpu_name()
    header = (f"{args.model} (random weights), batch {args.batch} x {args.seq}, {args.threads} threads, "
              f"median of {args.steps} steps after a warm-up; {cpu}; torch {rows[0]['torch']['torch']}")
    table = [["method", "trainable", "peft step s", "torch step s", "time ratio", "peft forward s",
              "torch forward s", "peft peak MB", "torch peak MB", "memory ratio"]]
    for r in rows:
        o, t = r["ours"], r["torch"]
        table.append([
            r["method"], f"{o['trainable_parameters']:,}", f"{o['step_s_median']:.3f}",
            f"{t['step_s_median']:.3f}", f"{o['step_s_median'] / t['step_s_median']:.2f}x",
            f"{o['forward_s_median']:.3f}", f"{t['forward_s_median']:.3f}", f"{o['peak_rss_mb']:.0f}",
            f"{t['peak_rss_mb']:.0f}", f"{o['peak_rss_mb'] / t['peak_rss_mb']:.2f}x",
        ])
    print(header)
    if args.markdown:
        print("| " + " | ".join(table[0]) + " |")
        print("|" + "---|" * len(table[0]))
        for row in table[1:]:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"setup": header, "rows": rows}, f, indent=1)
        os.replace(tmp, args.out)


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
