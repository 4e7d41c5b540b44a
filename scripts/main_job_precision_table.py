#!/usr/bin/env python3
"""The README's f32-against-bf16 table for the main job, generated from the committed runs' metrics logs.

    python3 scripts/main_job_precision_table.py           # rewrite the block in README.md
    python3 scripts/main_job_precision_table.py --check   # exit 1 if README.md is not current

Each seed was trained twice by the main job (`peft train experiments/sst2-prompt-tuning.toml --seed S`, once
with `--bf16`); seed 42 is the main job itself. The block between `<!-- main-job-precision -->` and
`<!-- /main-job-precision -->` gets one row per seed (dev accuracy after the last step in each precision and
their difference) and the mean difference with a 95% t-interval over the seeds: the seeds are the replicates,
since rounding moves a single run by about as much as the goal allows.
"""

import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
# seed -> (f32 run folder, bf16 run folder), relative to results/.
RUNS = {
    42: ("main-job-sst2-prompt-tuning", "main-job-sst2-prompt-tuning-bf16"),
    43: ("main-job-sst2-prompt-tuning-seeds/f32-s43", "main-job-sst2-prompt-tuning-seeds/bf16-s43"),
    44: ("main-job-sst2-prompt-tuning-seeds/f32-s44", "main-job-sst2-prompt-tuning-seeds/bf16-s44"),
}
# Two-sided 95% quantiles of Student's t by degrees of freedom (the few a handful of seeds needs).
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}
MARK = re.compile(r"(<!-- main-job-precision -->\n)(.*?)(<!-- /main-job-precision -->)", re.S)


def final_eval(folder: str) -> dict:
    """The evaluation record of the run's last step in its `metrics.jsonl`."""
    path = RESULTS / folder / "metrics.jsonl"
    if not path.exists():
        sys.exit(f"{path}: missing; run the main job for this seed and precision first (see the docstring)")
    evals = [r for r in map(json.loads, path.read_text().splitlines()) if "eval_accuracy" in r]
    if not evals:
        sys.exit(f"{path}: no evaluation record")
    return max(evals, key=lambda r: r["step"])


def table() -> str:
    rows, diffs = [], []
    for seed, (f32_dir, bf16_dir) in sorted(RUNS.items()):
        f32, bf16 = final_eval(f32_dir), final_eval(bf16_dir)
        diff = 100 * (bf16["eval_accuracy"] - f32["eval_accuracy"])
        diffs.append(diff)
        rows.append(f"| {seed} | {f32['eval_accuracy']:.4f} | {bf16['eval_accuracy']:.4f} | {diff:+.2f} "
                    f"| {f32['eval_loss']:.4f} | {bf16['eval_loss']:.4f} |")
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = T_95[n - 1] * sd / math.sqrt(n)
    lines = ["| seed | f32 accuracy | bf16 accuracy | bf16 - f32 (points) | f32 loss | bf16 loss |",
             "|---|---|---|---|---|---|", *rows,
             "",
             f"Mean difference over the {n} seeds: {mean:+.2f} points (standard deviation {sd:.2f}, 95% t-interval "
             f"{mean - half:+.2f} to {mean + half:+.2f})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    if not MARK.search(readme):
        sys.exit("README.md: no <!-- main-job-precision --> block")
    new = MARK.sub(lambda m: m.group(1) + table() + m.group(3), readme)
    if "--check" in sys.argv:
        if new != readme:
            sys.exit("README.md: the main-job precision table is stale; run python3 scripts/main_job_precision_table.py")
        print("README.md: the main-job precision table is current")
        return
    readme_path.write_text(new)


if __name__ == "__main__":
    main()
