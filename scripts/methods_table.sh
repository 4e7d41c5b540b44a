#!/usr/bin/env bash
# Trains every method of the README's methods table on SmolLM2-135M + SST-2 (experiments/sst2-*.toml, same
# data, steps, batch and evaluation; only the method and its learning rate differ) and prints the table:
# trainable parameters, dev accuracy, median step time, peak memory, adapter file size.
#
#   bash scripts/methods_table.sh [experiment names...]   # default: all of them
#
# Needs a release build (`cargo build --release -p peft-cli -p peft-ia3-cli`). Each run writes
# out/sst2-<name>/ and out/sst2-<name>.time (GNU time's report); rows go to out/methods-table.md. The README's
# table is from the run whose outputs are copied to results/methods-table-sst2/.
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    names=(prompt-tuning-100 p-tuning prefix-tuning p-tuning-v2-verbalizer p-tuning-v2 lora bitfit ia3)
fi
table=out/methods-table.md
mkdir -p out
for name in "${names[@]}"; do
    exp=experiments/sst2-$name.toml
    bin=target/release/peft
    if [ "$name" = ia3 ]; then
        exp=examples/ia3/sst2-ia3.toml
        bin=target/release/peft-ia3
    fi
    out_dir=$(grep '^output_dir' "$exp" | sed 's/.*= *"\(.*\)"/\1/')
    # output_dir is relative to the working directory (the repository root).
    /usr/bin/time -v -o "out/sst2-$name.time" "$bin" train "$exp" --no-baseline \
        >"out/sst2-$name.log" 2>"out/sst2-$name.err" || { echo "$name failed: see out/sst2-$name.err"; continue; }
    # Trainable parameters as trained (a saved prefix / P-tuning adapter is folded, so count the fresh build);
    # the file size of the saved adapter.
    trained=$("$bin" inspect --model smollm2-135m --experiment "$exp" 2>/dev/null)
    saved=$("$bin" inspect --model smollm2-135m --adapter "$out_dir/adapter" 2>/dev/null)
    python3 - "$name" "$out_dir" "out/sst2-$name.time" "$trained" "$saved" >>"$table" <<'PY'
import json, statistics, sys
name, out_dir, time_file, trained, saved = sys.argv[1:6]
info = json.loads(trained)
info["adapter_file_bytes"] = json.loads(saved)["adapter_file_bytes"]
rows = [json.loads(l) for l in open(f"{out_dir}/metrics.jsonl")]
steps = [r for r in rows if "loss" in r and "elapsed_s" in r]
# Seconds per step in each logged window (log_every steps apart).
per_step = [(b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"]) for a, b in zip(steps, steps[1:])]
acc = [r for r in rows if "eval_accuracy" in r][-1]["eval_accuracy"]
rss_kb = next(int(l.split(":")[1]) for l in open(time_file) if "Maximum resident set size" in l)
print(f"| {name} | {info['method']} | {info['trainable_parameters']:,} ({info['trainable_percent']:.3f}%) | "
      f"{acc:.4f} | {statistics.median(per_step):.2f} s | {rss_kb / 1024:.0f} MB | "
      f"{info['adapter_file_bytes'] / 1024:.1f} KB |")
PY
    tail -1 "$table"
done
