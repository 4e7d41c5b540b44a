#!/usr/bin/env bash
# The README's server numbers: `peft serve` on SmolLM2-135M-Instruct with five HF PEFT adapters of different
# methods (LoRA, DoRA, prompt tuning, prefix tuning, VeRA), then two rounds of scripts/serve_load_test.py
# (200 requests of 16 new tokens from 16 concurrent clients, over the base and every adapter). The second
# round shows whether memory keeps growing. Writes results/generation/serve_load_test.jsonl (one line a round).
#
#   cargo build --release -p peft-cli && target/release/peft fetch smollm2-135m
#   bash scripts/serve_load_bench.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
port=8077
out=results/generation/serve_load_test.jsonl
a=fixtures/adapters
RAYON_NUM_THREADS="$threads" target/release/peft serve --model smollm2-135m --port "$port" \
    --adapter lora=$a/hf-smollm2-lora --adapter dora=$a/hf-smollm2-dora --adapter prompt=$a/hf-smollm2-text \
    --adapter prefix=$a/hf-smollm2-prefix --adapter vera=$a/hf-smollm2-vera &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 1
done
mkdir -p "$(dirname "$out")"
: > "$out.tmp"
for round in 1 2; do
    python3 scripts/serve_load_test.py --url "http://127.0.0.1:$port" --requests 200 --concurrency 16 \
        --max-tokens 16 --pid "$server" | tail -1 | sed "s/^{/{\"round\": $round, \"threads\": $threads, \"max_tokens\": 16, /" >> "$out.tmp"
done
mv "$out.tmp" "$out"
cat "$out"
