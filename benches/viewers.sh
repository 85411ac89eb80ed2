#!/usr/bin/env bash
# Training throughput with many headless viewers attached, and whether each of them received
# every event. The workload is benches/tui_overhead.sh's (a 5.3M-parameter scratch Llama, DPO,
# batch 6, eval and sampling every 50 steps), STEPS steps headless: once alone (baseline) and
# once with N_VIEWERS `gaplab attach --jsonl --hold-control` viewers (each holding a control
# connection, as a dashboard does) plus CYCLES control-socket connect/disconnect cycles (every
# other one sending a request the run must refuse) while it trains. Seconds per step come from
# the run directory's own step timestamps, from step 30 (viewers attach at step 20) to the
# last. Also reported: the training process's open file descriptors and threads before the
# viewers, at the peak while they are attached, and once the cycles and 10 extra viewers
# (stopped with SIGINT) are gone.
#   bash benches/viewers.sh [N_VIEWERS=50] [CYCLES=200]      (STEPS=400 ROUNDS=1 in the env)
set -euo pipefail
cd "$(dirname "$0")/.."
viewers=${1:-50}
cycles=${2:-200}
steps=${STEPS:-400}
rounds=${ROUNDS:-1}
extra=10
# NO_BUILD=1: use the gaplab already in target/release (e.g. the one `cargo test --release` built).
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
bin=$PWD/target/release/gaplab
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
# shellcheck source=benches/workload.sh
source benches/workload.sh
workload_toml "$steps" > "$tmp/gaplab.toml"

newest_run() { ls -dt "$tmp"/runs/dpo-* 2>/dev/null | head -1; }
last_step() { local n; n=$(grep -c '"split":"train"' "$1/metrics.jsonl" 2>/dev/null) || true; echo "${n:-0}"; }
# Seconds per step between step 30 and the last step of a run.
per_step() {
  python3 - "$1/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"split":"train"' in l]
a, b = rows[29], rows[-1]
print(f"{(b['time'] - a['time']) / (b['step'] - a['step']):.5f}")
PY
}
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
wait_step() {
  local run=$1 step=$2
  until [ "$(last_step "$run")" -ge "$step" ]; do sleep 0.1; done
}
start_training() {
  rm -rf "$tmp/runs"
  "$bin" train "$tmp" --headless 2>/dev/null &
  trainer=$!
  pids+=("$trainer")
  until run=$(newest_run) && [ -n "$run" ] && [ -S "$run/control.sock" ]; do sleep 0.1; done
}

baseline() {
  start_training
  wait "$trainer"
  per_step "$run"
}

loaded() {
  start_training
  wait_step "$run" 20
  before="$(fds "$trainer") $(threads "$trainer")"
  local v=() x=()
  for i in $(seq "$viewers"); do
    "$bin" attach --jsonl --hold-control "$run" > "$tmp/viewer-$i.jsonl" 2> "$tmp/viewer-$i.err" &
    v+=($!)
  done
  for i in $(seq "$extra"); do
    "$bin" attach --jsonl --hold-control "$run" > /dev/null 2>&1 &
    x+=($!)
  done
  pids+=("${v[@]}" "${x[@]}")
  # Connect, sometimes ask for something the socket refuses, hang up; spread over the run.
  python3 - "$run/control.sock" "$cycles" > "$tmp/cycles.txt" <<'PY' &
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
answered = 0
for i in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    if i % 2:
        s.sendall(b'{"command":"stop"}\n')
        if s.makefile().readline().startswith("error: "):
            answered += 1
    s.close()
    time.sleep(0.1)
print(f"{n} cycles, {answered}/{n // 2} refusals answered")
PY
  local cyc=$!
  # The peak while everything is attached.
  local peak_fd=0 peak_th=0
  while kill -0 "$cyc" 2>/dev/null; do
    f=$(fds "$trainer"); t=$(threads "$trainer")
    [ "$f" -gt "$peak_fd" ] && peak_fd=$f
    [ "$t" -gt "$peak_th" ] && peak_th=$t
    sleep 0.5
  done
  kill -INT "${x[@]}"
  for p in "${x[@]}"; do wait "$p" || echo "an extra viewer exited $?"; done
  sleep 1
  after="$(fds "$trainer") $(threads "$trainer")"
  local end_step; end_step=$(last_step "$run")
  wait "$trainer"
  local failed=0
  for p in "${v[@]}"; do wait "$p" || failed=$((failed + 1)); done
  s=$(per_step "$run")
  echo "loaded: $viewers viewers exited with an error: $failed; $(cat "$tmp/cycles.txt")" >&2
  echo "loaded: fds/threads before $before, peak $peak_fd $peak_th, after (cycles and $extra viewers gone, $viewers held, step $end_step) $after" >&2
  python3 - "$run/events.jsonl" "$tmp" "$viewers" >&2 <<'PY'
import json, math, sys
events, tmp, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b
disk = open(events).read().splitlines()
want = [json.loads(l) for l in disk]
first = open(f"{tmp}/viewer-1.jsonl").read()
complete = identical = exact = 0
for i in range(1, n + 1):
    text = open(f"{tmp}/viewer-{i}.jsonl").read()
    got = text.splitlines()
    if len(got) == len(disk):
        complete += 1
        if all(same(json.loads(g), w) for g, w in zip(got, want)):
            identical += 1
    exact += text == first
print(f"viewers: {complete}/{n} got every record ({len(disk)} lines), {identical}/{n} with the "
      f"records' content, {exact}/{n} byte-identical to viewer 1")
PY
  echo "$s"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "round baseline_s_per_step loaded_s_per_step drop_% ($viewers viewers, $cycles cycles, $steps steps)"
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then b=$(baseline); l=$(loaded); else l=$(loaded); b=$(baseline); fi
  python3 -c "import sys; b, l = float(sys.argv[1]), float(sys.argv[2]); print(f'$r {b} {l} {100 * (1 - b / l):.1f} (steps/s {1 / b:.2f} vs {1 / l:.2f})')" "$b" "$l"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
