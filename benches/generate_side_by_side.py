#!/usr/bin/env python3
"""Side by side: generation with `peft generate` against HF transformers' `generate` + HF PEFT, and mixed batches.

On the same machine in one run, with the same model (SmolLM2-135M-Instruct from the zoo's GGUF, which both sides
dequantize to f32), the same adapters, the same prompts, greedy decoding of the same number of new tokens (the
end-of-sequence token ignored) and the same thread count, each side in its own process:

- **cache**: one prompt, then a batch of 8 prompts, one LoRA adapter: ours with the key/value cache, ours
  without it (`--no-cache`, re-running the sequence per token), and HF `generate` (its cache, SDPA attention);
- **mixed**: 8 prompts with 8 different adapters in one batch, against the same 8 prompts with one adapter
  and against the 8 requests one after another (`--sequential`); once with 8 LoRA adapters (written by HF
  PEFT with different seeds into a temporary folder) and once with 8 adapters of different methods (the HF
  PEFT fixtures of `fixtures/adapters/`: LoRA, DoRA, LoHa, LoKr, VeRA, LayerNorm tuning, prompt tuning, prefix
  tuning).
  HF PEFT's own mixed batch (`adapter_names`, LoRA only) is timed beside the LoRA case.

    cargo build --release -p peft-cli && target/release/peft fetch smollm2-135m
    python benches/generate_side_by_side.py --markdown --out results/generation/side_by_side.json
    python benches/generate_side_by_side.py --report results/generation/side_by_side.json   # the README tables

Tokens per second count every generated token of every row; each number is the median of `--repeats` runs
after one warm-up; model loading is not timed. Needs torch, transformers, peft and gguf (pip).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from side_by_side import cpu_name, print_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures", "adapters")
MIXED_METHODS = ["lora", "dora", "loha", "lokr", "vera", "ln-tuning", "text", "prefix"]
PROMPTS = [
    "The movie was a delight from start to finish, and",
    "Write a short note to a colleague about the meeting:",
    "In a small village by the sea there lived",
    "The three most important steps in training a model are",
    "Question: what is the capital of France? Answer:",
    "Once the rain stopped, the children",
    "Here is a recipe for a simple tomato soup:",
    "The stock market fell sharply today after",
]


def gguf_path():
    home = os.environ.get("PEFT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "peft")
    folder = os.path.join(home, "models", "smollm2-135m")
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".gguf"):
                return os.path.join(folder, name)
    raise SystemExit(f"no GGUF in {folder}: run `target/release/peft fetch smollm2-135m` first")


def hf_base(gguf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def write_lora_adapters(gguf, folder, count):
    """`count` LoRA adapters (r 8 on q/v, random B so that each changes the output) from seeds 0..count."""
    import torch
    from peft import LoraConfig, get_peft_model

    import copy

    dirs = []
    base0, _ = hf_base(gguf)
    for seed in range(count):
        base = copy.deepcopy(base0)
        torch.manual_seed(seed)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(base, config)
        out = os.path.join(folder, f"lora-{seed}")
        model.save_pretrained(out)
        dirs.append(out)
    return dirs


def hf_child(args):
    """Runs in its own process: times HF `generate` for the cases in `args.cases`, prints one JSON line."""
    import torch
    from peft import PeftModel

    torch.set_num_threads(args.threads)
    base, tokenizer = hf_base(args.gguf)
    adapters = json.loads(args.adapters)
    model = PeftModel.from_pretrained(base, adapters[0], adapter_name="a0").eval()
    for i, path in enumerate(adapters[1:], start=1):
        model.load_adapter(path, adapter_name=f"a{i}")
    model.set_adapter("a0")
    results = {}

    def run(prompts, **kwargs):
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        times = []
        new = 0
        for rep in range(args.repeats + 1):
            started = time.perf_counter()
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id, **kwargs)
            elapsed = time.perf_counter() - started
            new = (out.shape[1] - enc["input_ids"].shape[1]) * len(prompts)
            if rep > 0:
                times.append(elapsed)
        return new / statistics.median(times)

    results["one"] = run(PROMPTS[:1])
    results["batch8"] = run(PROMPTS)
    if len(adapters) == len(PROMPTS):
        results["mixed_lora"] = run(PROMPTS, adapter_names=[f"a{i}" for i in range(len(PROMPTS))])
    results["torch"] = torch.__version__
    print(json.dumps(results))


def ours(args, env, prompts, adapters, *flags):
    """Median tokens/s of `peft generate` over `args.repeats` runs after a warm-up."""
    cmd = [args.peft, "generate", "--model", args.gguf, "--max-new-tokens", str(args.new_tokens),
           "--ignore-eos", "--timing"]
    for p in prompts:
        cmd += ["--prompt", p]
    for a in adapters:
        cmd += ["--adapter", a]
    cmd += list(flags)
    rates = []
    for rep in range(args.repeats + 1):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")
        timing = json.loads(done.stderr.strip().splitlines()[-1])
        if rep > 0:
            rates.append(timing["tokens_per_s"])
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peft", default=os.path.join(ROOT, "target", "release", "peft"))
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--out", help="also write every measurement to this JSON file")
    parser.add_argument("--report", metavar="JSON", help="print the tables of a saved run (--out) and exit")
    parser.add_argument("--hf-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gguf", help=argparse.SUPPRESS)
    parser.add_argument("--adapters", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_child:
        return hf_child(args)
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        return print_report(saved["setup"], saved["ours"], saved["hf"], markdown=True)
    if not os.path.isfile(args.peft):
        raise SystemExit(f"{args.peft} is missing: run `cargo build --release -p peft-cli` first")
    args.gguf = gguf_path()
    threads = str(args.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    lora = os.path.join(FIXTURES, "hf-smollm2-lora")
    kinds = [os.path.join(FIXTURES, f"hf-smollm2-{m}") for m in MIXED_METHODS]
    with tempfile.TemporaryDirectory() as tmp:
        loras = write_lora_adapters(args.gguf, tmp, len(PROMPTS))
        hf = subprocess.run([sys.executable, __file__, "--hf-child", "--gguf", args.gguf, "--threads", threads,
                             "--repeats", str(args.repeats), "--new-tokens", str(args.new_tokens),
                             "--adapters", json.dumps(loras)], capture_output=True, text=True, env=env)
        if hf.returncode != 0:
            sys.stderr.write(hf.stderr)
            raise SystemExit("the HF side failed")
        theirs = json.loads(hf.stdout.strip().splitlines()[-1])
        m = {
            "one_cached": ours(args, env, PROMPTS[:1], [loras[0]]),
            "one_uncached": ours(args, env, PROMPTS[:1], [loras[0]], "--no-cache"),
            "batch8_cached": ours(args, env, PROMPTS, [loras[0]]),
            "batch8_uncached": ours(args, env, PROMPTS, [loras[0]], "--no-cache"),
            "lora_mixed": ours(args, env, PROMPTS, loras),
            "lora_sequential": ours(args, env, PROMPTS, loras, "--sequential"),
            "kinds_mixed": ours(args, env, PROMPTS, kinds),
            "kinds_sequential": ours(args, env, PROMPTS, kinds, "--sequential"),
            "kinds_one": ours(args, env, PROMPTS, [lora]),
        }
    cpu = cpu_name()
    setup = (f"SmolLM2-135M-Instruct (f32 from the zoo's GGUF), greedy, {args.new_tokens} new tokens per row, "
             f"{args.threads} threads, median of {args.repeats} runs after a warm-up; {cpu}; "
             f"torch {theirs['torch']}")
    print_report(setup, m, theirs, args.markdown)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"setup": setup, "ours": m, "hf": theirs}, f, indent=1)
        os.replace(tmp, args.out)


def print_report(setup, m, theirs, markdown):
    """The two tables (the cache against HF, mixed batches) from one run's measurements."""
    cache_rows = [
        ["1 prompt, LoRA", m["one_cached"], m["one_uncached"], theirs["one"]],
        ["8 prompts, LoRA", m["batch8_cached"], m["batch8_uncached"], theirs["batch8"]],
    ]
    cache_table = [["case", "peft cached tok/s", "peft uncached tok/s", "HF generate tok/s", "cache speed-up",
                    "peft / HF"]]
    for name, c, u, h in cache_rows:
        cache_table.append([name, f"{c:.1f}", f"{u:.1f}", f"{h:.1f}", f"{c / u:.2f}x", f"{c / h:.2f}x"])
    mixed_table = [["8 rows", "mixed batch tok/s", "one-adapter batch tok/s", "one after another tok/s",
                    "mixed / one adapter", "mixed / one after another", "HF PEFT mixed tok/s"]]
    mixed_table.append(["8 LoRA adapters", f"{m['lora_mixed']:.1f}", f"{m['batch8_cached']:.1f}",
                        f"{m['lora_sequential']:.1f}", f"{m['lora_mixed'] / m['batch8_cached']:.2f}x",
                        f"{m['lora_mixed'] / m['lora_sequential']:.2f}x",
                        f"{theirs['mixed_lora']:.1f}" if "mixed_lora" in theirs else "n/a"])
    mixed_table.append(["8 methods (" + ", ".join(MIXED_METHODS) + ")", f"{m['kinds_mixed']:.1f}",
                        f"{m['kinds_one']:.1f}", f"{m['kinds_sequential']:.1f}",
                        f"{m['kinds_mixed'] / m['kinds_one']:.2f}x",
                        f"{m['kinds_mixed'] / m['kinds_sequential']:.2f}x", "not supported"])
    print(setup)
    print()
    for table in (cache_table, mixed_table):
        print_table(table, markdown)
        print()


if __name__ == "__main__":
    main()
