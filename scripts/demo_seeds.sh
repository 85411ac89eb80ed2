#!/usr/bin/env bash
# The demo with several seeds, for docs/RESULTS.md: each seed regenerates the task data, the
# initial weights and the data order, trains SFT + the config's variants headless (the demo's
# four by default), and the table of scripts/demo_results.py summarises the final eval metrics
# over seeds.
#   bash scripts/demo_seeds.sh [SEEDS] [OUT_DIR] [-- extra gaplab demo-data flags, e.g. --same-length]
#   CONFIG=workspaces/demo/zoo.toml bash scripts/demo_seeds.sh 3 /tmp/zoo   # another config
# CONFIG (default workspaces/demo/gaplab.toml) is copied to OUT_DIR/seed-S/gaplab.toml with every
# `seed = 0` line (the model's and the training's) set to S, so it must read its data from data/.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-3}
out=${2:-/tmp/gaplab-demo-seeds}
shift $(( $# > 2 ? 3 : $# ))
config=${CONFIG:-workspaces/demo/gaplab.toml}
# Without both substitutions the seeds would share weights or data order and the spread would lie.
if [ "$(grep -c '^seed = 0$' "$config")" -ne 2 ]; then
  echo "$config: expected two 'seed = 0' lines ([model.scratch] and [train])" >&2
  exit 1
fi
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
  sed -e "s/^seed = 0$/seed = $s/" "$config" > "$ws/gaplab.toml"
  start=$(date +%s)
  "$bin" train "$ws" --headless 2> "$ws/train.log"
  echo "seed $s: $(( $(date +%s) - start )) s" >&2
  roots+=("$ws/runs")
done
python3 scripts/demo_results.py "${roots[@]}"
