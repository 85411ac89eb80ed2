#!/usr/bin/env bash
# Type-checks gaplab with `--features cuda` on a machine with no GPU and no system CUDA
# toolkit, so CUDA-only code paths are compiled before they reach a GPU box. Nothing is linked
# or run (scripts/gpu-check.sh runs on a real GPU).
#
# Usage: bash scripts/cuda-typecheck.sh [extra cargo args...]
#
#   * nvcc, its headers and CCCL come from NVIDIA's CUDA 13.0 pip wheels, in a virtual
#     environment at $CUDA_ENV (default: .cuda-env, ~300 MB). The CUDA 12 nvcc wheels ship
#     only ptxas; the 13.x ones ship the whole nvcc driver. Every piece is pinned to 13.0:
#     cudarc 0.19 knows CUDA versions up to 13.4 and asks `nvcc --version` which one it is.
#   * candle-kernels compiles its .cu files to PTX with that nvcc; with no nvidia-smi to ask,
#     it needs CUDA_COMPUTE_CAP (default 90: H100 / H200).
#   * Its own target dir (default target/cuda-check): the first run compiles candle's CUDA
#     kernels, ~13 minutes on 2 cores; later runs take seconds.
set -euo pipefail

cd "$(dirname "$0")/.."
CUDA_ENV=${CUDA_ENV:-.cuda-env}
PY=${PYTHON:-python3}
if [ ! -x "$CUDA_ENV/bin/pip" ]; then
    "$PY" -m venv "$CUDA_ENV"
fi
root() { ls -d "$CUDA_ENV"/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -1; }
CUDA_ROOT_DIR=$(root || true)
if [ -z "$CUDA_ROOT_DIR" ] || [ ! -x "$CUDA_ROOT_DIR/bin/nvcc" ] || [ ! -x "$CUDA_ROOT_DIR/nvvm/bin/cicc" ]; then
    "$CUDA_ENV/bin/pip" install -q \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
        "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
    CUDA_ROOT_DIR=$(root)
fi
CUDA_ROOT_DIR=$(cd "$CUDA_ROOT_DIR" && pwd)

export PATH="$CUDA_ROOT_DIR/bin:$PATH"
export CUDA_HOME="$CUDA_ROOT_DIR" CUDA_PATH="$CUDA_ROOT_DIR"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda-check}
echo "cuda-typecheck: $(nvcc --version | sed -n 4p), compute cap $CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR" >&2
exec cargo check --features cuda --all-targets --locked "$@"
