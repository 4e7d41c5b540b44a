#!/usr/bin/env bash
# The README's "Training over a quantized base" table: `peft bench` of LoRA and prompt tuning on SmolLM2-135M and
# Gemma-3-270M (batch 8 x 128, and LoRA at 1 x 128; causal-LM loss, 2 threads), each once with the GGUF dequantized to f32 and once
# kept quantized, one JSON line per run into results/quantized-base/bench.jsonl, then the table.
# Run from the repository root on an idle machine: bash scripts/quantized_base_bench.sh [steps]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-3}
cargo build --release -q -p peft-cli
out=results/quantized-base
mkdir -p "$out"
tmp=$(mktemp "$out/.bench.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# Batch 8 x 128 for both methods; LoRA at batch 1 too, where the activations are small beside the weights.
for model in smollm2-135m gemma3-270m; do
    for case in "lora 8" "prompt-tuning 8" "lora 1"; do
        read -r method batch <<<"$case"
        for quantized in "" --keep-quantized; do
            line=$(target/release/peft bench --model "$model" --method "$method" --batch "$batch" --seq 128 \
                --steps "$steps" --threads 2 --json $quantized)
            echo "{\"quantized\":$([ -n "$quantized" ] && echo true || echo false),\"run\":$line}" >>"$tmp"
        done
    done
done
mv "$tmp" "$out/bench.jsonl"
trap - EXIT
python3 scripts/quantized_base_table.py "$out/bench.jsonl"
