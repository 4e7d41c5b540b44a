#!/usr/bin/env python3
"""The README's server table from results/generation/serve_load_test.jsonl (written by serve_load_bench.sh)."""

import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "results/generation/serve_load_test.jsonl"
rows = [json.loads(line) for line in open(path) if line.strip()]
print("| round | requests | clients | failures | requests/s | tokens/s | p50 latency | p99 latency | server RSS start -> end |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    tokens = r["max_tokens"] * r["requests"] / r["seconds"]
    print(f"| {r['round']} | {r['requests']} | {r['concurrency']} | {r['failures']} | {r['requests_per_s']:.1f} | "
          f"{tokens:.0f} | {r['p50_ms'] / 1000:.2f} s | {r['p99_ms'] / 1000:.2f} s | "
          f"{r['rss_start_kb'] / 1024:.0f} -> {r['rss_end_kb'] / 1024:.0f} MB |")
