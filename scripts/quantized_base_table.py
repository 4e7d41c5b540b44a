"""Prints the README's quantized-base table from the JSON lines scripts/quantized_base_bench.sh writes."""

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    runs = defaultdict(dict)
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            run = row["run"]
            runs[(run["model"], run["method"], run["batch"])][row["quantized"]] = run
    print("| model, method, batch x 128 | f32: step s / peak RSS MB | quantized: step s / peak RSS MB | step ratio | RSS ratio |")
    print("|---|---|---|---|---|")
    for (model, method, batch), pair in runs.items():
        dense, quant = pair[False], pair[True]
        print(
            f"| {model}, {method}, {batch} | {dense['step_s_median']:.2f} / {dense['peak_rss_mb']:.0f} "
            f"| {quant['step_s_median']:.2f} / {quant['peak_rss_mb']:.0f} "
            f"| {quant['step_s_median'] / dense['step_s_median']:.2f}x "
            f"| {quant['peak_rss_mb'] / dense['peak_rss_mb']:.2f}x |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
