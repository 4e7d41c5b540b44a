"""The merge experiment (README, "Adapter arithmetic"): two LoRA adapters trained on one base, SmolLM2-135M-Instruct,
one on SST-2 (experiments/sst2-lora.toml) and one on TREC (experiments/trec-lora.toml), same rank, targets, steps
and schedule; merged by `peft merge` with each of HF PEFT's combinations; every merged adapter, the two single
adapters and the frozen model (zero-shot) evaluated by `peft eval` on both tasks' full dev / test sets.

Writes into OUT (default results/merge-smollm2-sst2-trec/):
- `train-sst2/`, `train-trec/`: the two training runs (`peft train` outputs; their adapters stay local);
- `merged/<name>/adapter/`: each merged adapter (local, like every adapter under results/);
- `rows/<name>.json`: one row's metrics on both tasks (a finished row is reused: delete it to rerun the row);
- `runs.csv`, `report.md`, `merge.svg` (each task's accuracy, one point per adapter), generated from the rows.

Only the standard library: it runs the `peft` binary. From the repository root, after `cargo build --release -p
peft-cli`:

    python3 scripts/merge_experiment.py [--peft target/release/peft] [--out results/merge-smollm2-sst2-trec]
"""

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = [("sst2", "experiments/sst2-lora.toml", "SST-2"), ("trec", "experiments/trec-lora.toml", "TREC")]
WEIGHTS = "1.0,1.0"
DENSITY = "0.5"
SEED = "0"
# (row name, `peft merge` arguments after the adapters and weights). Density 0.5 where the combination prunes;
# SVD-based ones keep HF's default rank (the larger input rank, 8); DARE's masks are seeded.
COMBINATIONS = [
    ("linear", ["--combination", "linear"]),
    ("cat", ["--combination", "cat"]),
    ("svd", ["--combination", "svd"]),
    ("ties", ["--combination", "ties", "--density", DENSITY]),
    ("ties_svd", ["--combination", "ties_svd", "--density", DENSITY]),
    ("dare_linear", ["--combination", "dare_linear", "--density", DENSITY, "--seed", SEED]),
    ("dare_ties", ["--combination", "dare_ties", "--density", DENSITY, "--seed", SEED]),
    ("dare_linear_svd", ["--combination", "dare_linear_svd", "--density", DENSITY, "--seed", SEED]),
    ("dare_ties_svd", ["--combination", "dare_ties_svd", "--density", DENSITY, "--seed", SEED]),
    ("magnitude_prune", ["--combination", "magnitude_prune", "--density", DENSITY]),
    ("magnitude_prune_svd", ["--combination", "magnitude_prune_svd", "--density", DENSITY]),
]


def run(cmd):
    """Runs `cmd`, returning its stdout; stops the experiment with its stderr where it fails."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"command failed ({done.returncode}): {' '.join(str(c) for c in cmd)}\n{done.stderr}")
    return done.stdout


def last_json(stdout):
    """The last line of `stdout` that is a JSON object (the commands print their result as one)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    sys.exit(f"no JSON line in the command's output:\n{stdout}")


def write_atomic(path, text):
    """Writes `text` to `path` through a temporary file in the same folder, so that no half-written file stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def trained_adapter(peft, out, task, experiment):
    """The adapter of `task`'s training run, trained first where it is not there yet."""
    run_dir = out / f"train-{task}"
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_model.safetensors").exists():
        run([peft, "train", experiment, "--output-dir", run_dir])
    return adapter


def evaluate(peft, out, name, adapter, extra):
    """`rows/<name>.json`: `adapter` (None: the frozen model) evaluated on every task; reused where present."""
    row_path = out / "rows" / f"{name}.json"
    if row_path.exists():
        return json.loads(row_path.read_text())
    row = dict(extra, name=name)
    for task, experiment, _ in TASKS:
        start = time.time()
        cmd = [peft, "eval", experiment] + (["--adapter", adapter] if adapter else [])
        row[task] = last_json(run(cmd))
        row[task]["eval_seconds"] = round(time.time() - start, 1)
    write_atomic(row_path, json.dumps(row, indent=1) + "\n")
    return row


def commit():
    """The repository's commit, for the report (with `+changes` where tracked files outside results/ differ from
    it, as `peft compare` marks its cells)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"]
    dirty = subprocess.run(status, capture_output=True, text=True)
    return head + ("+changes" if dirty.stdout.strip() else "")


def svg_plot(rows):
    """Each adapter's SST-2 accuracy (x) against its TREC accuracy (y), labelled, as an SVG document."""
    width, height, margin = 640, 480, 60
    xs = [r["sst2"]["accuracy"] for r in rows]
    ys = [r["trec"]["accuracy"] for r in rows]
    lo_x, hi_x = min(xs) - 0.02, max(xs) + 0.02
    lo_y, hi_y = min(ys) - 0.02, max(ys) + 0.02

    def px(x):
        return margin + (x - lo_x) / (hi_x - lo_x) * (width - 2 * margin)

    def py(y):
        return height - margin - (y - lo_y) / (hi_y - lo_y) * (height - 2 * margin)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif"'
        ' font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">Merged LoRA adapters: SST-2 vs TREC'
        " accuracy (SmolLM2-135M)</text>",
        f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="black"/>',
        f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle">SST-2 dev accuracy</text>',
        f'<text x="18" y="{height / 2}" text-anchor="middle" transform="rotate(-90 18 {height / 2})">'
        "TREC test accuracy</text>",
    ]
    for i in range(6):
        x = lo_x + (hi_x - lo_x) * i / 5
        y = lo_y + (hi_y - lo_y) * i / 5
        parts.append(f'<text x="{px(x):.1f}" y="{height - margin + 15}" text-anchor="middle">{x:.2f}</text>')
        parts.append(f'<text x="{margin - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
    # Adapters with equal accuracies on both tasks share a point and one label.
    points = {}
    for row, x, y in zip(rows, xs, ys):
        points.setdefault((x, y), []).append(row)
    for (x, y), group in points.items():
        colour = {"baseline": "grey", "single": "black"}.get(group[0]["kind"], "#1f77b4")
        names = ", ".join(r["name"] for r in group)
        # Labels right of their point on the left half, left of it on the right half, so they stay inside.
        anchor, dx = ("start", 6) if px(x) < width / 2 else ("end", -6)
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{colour}"/>')
        parts.append(f'<text x="{px(x) + dx:.1f}" y="{py(y) - 6:.1f}" text-anchor="{anchor}">{names}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def report(out, rows, source):
    """runs.csv, report.md and merge.svg from the rows."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["adapter", "kind", "sst2_accuracy", "trec_accuracy", "mean_accuracy", "rank"])
    lines = [
        "# Merge experiment: LoRA on SST-2 and on TREC, SmolLM2-135M-Instruct",
        "",
        f"Written by `python3 scripts/merge_experiment.py` at commit {source}. Both adapters: LoRA r=8, alpha 16 on",
        "q_proj and v_proj, 100 steps of batch 8 at learning rate 1e-3, seed 42 (experiments/sst2-lora.toml,",
        f"experiments/trec-lora.toml). Merged with weights {WEIGHTS}, density {DENSITY} where the combination prunes,",
        f"DARE seed {SEED}; SST-2: all 872 dev rows; TREC: all 500 test rows; label words scored by the LM head.",
        "",
        "| adapter | kind | rank | SST-2 accuracy | TREC accuracy | mean |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        sst2, trec = r["sst2"]["accuracy"], r["trec"]["accuracy"]
        mean = (sst2 + trec) / 2
        rank = r.get("rank", "")
        writer.writerow([r["name"], r["kind"], f"{sst2:.4f}", f"{trec:.4f}", f"{mean:.4f}", rank])
        lines.append(f"| {r['name']} | {r['kind']} | {rank} | {sst2:.4f} | {trec:.4f} | {mean:.4f} |")
    lines += ["", "![SST-2 against TREC accuracy](merge.svg)", ""]
    write_atomic(out / "runs.csv", table.getvalue())
    write_atomic(out / "report.md", "\n".join(lines))
    write_atomic(out / "merge.svg", svg_plot(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peft", default="target/release/peft", help="the peft binary")
    parser.add_argument("--out", default="results/merge-smollm2-sst2-trec", help="the results folder")
    args = parser.parse_args()
    peft, out = Path(args.peft), Path(args.out)
    if not peft.exists():
        sys.exit(f"{peft} does not exist: run `cargo build --release -p peft-cli` first, or pass --peft")
    adapters = {task: trained_adapter(peft, out, task, exp) for task, exp, _ in TASKS}
    rows = [evaluate(peft, out, "zero-shot", None, {"kind": "baseline"})]
    for task, _, _ in TASKS:
        rows.append(evaluate(peft, out, f"{task}-only", adapters[task], {"kind": "single", "rank": 8}))
    for name, merge_args in COMBINATIONS:
        merged = out / "merged" / name / "adapter"
        row_path = out / "rows" / f"{name}.json"
        info = {}
        if not row_path.exists():
            cmd = [peft, "merge", "--adapter", adapters["sst2"], "--adapter", adapters["trec"], "--weights", WEIGHTS]
            info = last_json(run(cmd + merge_args + ["--out", merged]))
        rows.append(evaluate(peft, out, name, merged, {"kind": "merged", "rank": info.get("r", "")}))
    report(out, rows, commit())
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
