#!/usr/bin/env python3
"""The README's performance tables, generated from the committed measurements in results/performance/.

    python scripts/performance_tables.py                                   # Markdown for the README
    python scripts/performance_tables.py results/performance/intel-xeon-amx  # another machine's runs

Reads the `--out` files of benches/side_by_side.py (training steps against HF PEFT + PyTorch, also with
`--thread-curve`) and benches/eval_side_by_side.py (the main job's evaluation against transformers).
"""

import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, "results", "performance")


def load(path):
    with open(path) as f:
        return json.load(f)


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mlp_blocks(setup, ours):
    """What the MLP blocks no adapter touches kept for the backward: `peft bench` says so since the bf16 form
    existed; before it, `recompute_mlp` meant recomputed in both precisions, and runs from before that setting
    kept every activation."""
    form = ours.get("mlp_blocks") or ("recomputed" if setup.get("recompute_mlp", False) else "composed")
    return {"kept-bf16": "gate/up kept in bf16"}.get(form, form)


def steps_table(files):
    """One row per method and run: both sides' step time, memory and GFLOP/s, and the ratios."""
    header = ["model, batch", "precision", "checkpointing", "untouched MLP blocks", "method", "peft step s", "torch step s", "time ratio",
              "peft peak MB", "torch peak MB", "memory ratio", "peft GFLOP/s", "torch GFLOP/s"]
    rows = []
    for data in files:
        s = data["setup"]
        for r in data["rows"]:
            o, t = r["ours"], r["torch"]
            base = [f"{s['model']}, {s['batch']} x {s['seq']}", s["precision"],
                    "yes" if s["gradient_checkpointing"] else "no",
                    mlp_blocks(s, o), r["method"], f"{o['step_s_median']:.3f}"]
            if "step_s_median" not in t:
                rows.append(base + ["n/a", "", f"{o['peak_rss_mb']:.0f}", "n/a", "", f"{r['ours_gflops']:.0f}", ""])
                continue
            rows.append(base + [
                f"{t['step_s_median']:.3f}", f"{o['step_s_median'] / t['step_s_median']:.2f}x",
                f"{o['peak_rss_mb']:.0f}", f"{t['peak_rss_mb']:.0f}", f"{o['peak_rss_mb'] / t['peak_rss_mb']:.2f}x",
                f"{r['ours_gflops']:.0f}", f"{r['torch_gflops']:.0f}",
            ])
    return markdown(header, rows)


def threads_table(data):
    """The thread curve: step time, speed-up over one thread, memory, GFLOP/s."""
    curve = data["thread_curve"]
    one = next(c["ours"]["step_s_median"] for c in curve if c["threads"] == 1)
    rows = [[c["threads"], f"{c['ours']['step_s_median']:.3f}", f"{one / c['ours']['step_s_median']:.2f}x",
             f"{c['ours']['peak_rss_mb']:.0f}", f"{c['ours_gflops']:.0f}"] for c in curve]
    return markdown(["threads", "step s", "speed-up over 1 thread", "peak MB", "GFLOP/s"], rows)


def eval_table(data):
    """The main job's evaluation: both sides' time and metrics."""
    s, o = data["setup"], data["ours"]
    hf = data["hf"][0]
    hf_s = sorted(h["seconds"] for h in data["hf"])[len(data["hf"]) // 2]
    row = [s["rows"], s["batch"], f"{o['seconds']:.2f}", f"{hf_s:.2f}", f"{o['seconds'] / hf_s:.2f}x",
           f"{o['metrics']['accuracy']:.4f}", f"{hf['accuracy']:.4f}", f"{o['metrics']['loss']:.5f}",
           f"{hf['loss']:.5f}"]
    return markdown(["rows", "batch", "peft s", "HF s", "peft / HF", "peft accuracy", "HF accuracy", "peft loss",
                     "HF loss"], [row])


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else FOLDER
    steps, threads, evals = [], [], []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        data = load(path)
        if "thread_curve" in data:
            threads.append(data)
        elif "hf" in data:
            evals.append(data)
        else:
            steps.append(data)
    order = {"gpt2-124m": 0, "llama-135m": 1}
    steps.sort(key=lambda d: (order.get(d["setup"]["model"], 9), d["setup"]["gradient_checkpointing"],
                              d["setup"]["precision"] != "f32", not d["setup"].get("recompute_mlp", False)))
    if steps:
        setup = steps[0]["setup"]
        peaks = setup.get("peak_gflops") or {}
        print(f"Training steps, {setup['threads']} threads, median of {setup['steps']} steps after a warm-up, "
              f"{setup['cpu']}, torch {setup['torch']}; each row one run of `benches/side_by_side.py`.")
        if peaks:
            print(f"Measured peak (torch.mm 2048^3): f32 {peaks['f32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s.")
        print()
        print(steps_table(steps))
        print()
    for data in threads:
        print(data["setup"]["header"] + "\n")
        print(threads_table(data))
        print()
    for data in evals:
        print(data["setup"]["header"] + "\n")
        print(eval_table(data))
        print()


if __name__ == "__main__":
    main()
