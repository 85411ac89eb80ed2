#!/usr/bin/env bash
# Runs gaplab's benchmark and the PyTorch eager baseline alternately, ROUNDS times, on the same
# shapes and thread count, so both see the same machine load. Needs torch and transformers.
#   bash benches/compare.sh [ROUNDS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${2:-2}
python=${PYTHON:-python3}
cargo build --release --quiet
for r in $(seq "$rounds"); do
  echo "== round $r"
  RAYON_NUM_THREADS=$threads ./target/release/gaplab bench --iters 10 --warmup 2
  "$python" benches/pytorch_step.py --threads "$threads" --iters 10 --warmup 2
done
