#!/usr/bin/env bash
# Training throughput with the dashboard open vs headless, on the same workload: a 5.3M-parameter
# scratch Llama (the benchmark shape, with the test tokenizer) on the fixture pairs. The time
# per step comes from the run directory's own step timestamps, so only training is measured.
# The dashboard runs in a pseudo-terminal: with `script` (its output copied to /dev/null, as sshd
# would forward it: gaplab's own cost) or, with TERMINAL=tmux, in a 120x40 tmux window (which
# adds the CPU of tmux's terminal emulator on the same machine).
#   bash benches/tui_overhead.sh [ROUNDS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
steps=${2:-150}
cargo build --release --quiet
bin=$PWD/target/release/gaplab
tmp=$(mktemp -d)
trap 'tmux kill-session -t gaplab-bench 2>/dev/null || true; rm -rf "$tmp"' EXIT
# shellcheck source=benches/workload.sh
source benches/workload.sh
workload_toml "$steps" > "$tmp/gaplab.toml"
# Seconds per step between the 10th and the last step of the newest run.
per_step() {
  local run
  run=$(ls -dt "$tmp"/runs/dpo-* | head -1)
  python3 - "$run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"split":"train"' in l]
a, b = rows[9], rows[-1]
print(f"{(b['time'] - a['time']) / (b['step'] - a['step']):.5f}")
PY
}
wait_finished() {
  until grep -q '"state": "finished"' "$(ls -dt "$tmp"/runs/dpo-* | head -1)/status.json" 2>/dev/null; do sleep 0.2; done
}
echo "round headless_s_per_step tui_s_per_step (${TERMINAL:-script})"
headless() {
  rm -rf "$tmp/runs"
  "$bin" train "$tmp" --headless 2>/dev/null
  per_step
}
dashboard() {
  rm -rf "$tmp/runs"
  if [ "${TERMINAL:-script}" = tmux ]; then
    tmux new-session -d -s gaplab-bench -x 120 -y 40 "$bin train $tmp"
    sleep 1
    wait_finished
    tmux kill-session -t gaplab-bench
  else
    # stty gives the pseudo-terminal a size; the dashboard stays up until it reads q.
    (sleep 1; wait_finished; sleep 1; printf q) | script -qfec "stty rows 40 cols 120; $bin train $tmp" /dev/null >/dev/null
  fi
  per_step
}
# Alternate which goes first, so drifts in machine load hit both alike.
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then h=$(headless); t=$(dashboard); else t=$(dashboard); h=$(headless); fi
  echo "$r $h $t"
done
