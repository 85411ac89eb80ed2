#!/usr/bin/env bash
# The demo with several seeds, for docs/RESULTS.md: each seed regenerates the task data, the
# initial weights and the data order, trains SFT + the four variants headless, and the table of
# scripts/demo_results.py summarises the final eval metrics over seeds.
#   bash scripts/demo_seeds.sh [SEEDS] [OUT_DIR] [-- extra gaplab demo-data flags, e.g. --same-length]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-3}
out=${2:-/tmp/gaplab-demo-seeds}
shift $(( $# > 2 ? 3 : $# ))
cargo build --release --quiet
mkdir -p "$out"
bin="$out/gaplab"
cp target/release/gaplab "$bin"
roots=()
for s in $(seq 0 $((seeds - 1))); do
  ws="$out/seed-$s"
  rm -rf "$ws"
  mkdir -p "$ws"
  "$bin" demo-data "$ws/data" --seed "$s" "$@" >/dev/null
  sed -e "s/^seed = 0$/seed = $s/" workspaces/demo/gaplab.toml > "$ws/gaplab.toml"
  start=$(date +%s)
  "$bin" train "$ws" --headless 2> "$ws/train.log"
  echo "seed $s: $(( $(date +%s) - start )) s" >&2
  roots+=("$ws/runs")
done
python3 scripts/demo_results.py "${roots[@]}"
