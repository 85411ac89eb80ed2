#!/usr/bin/env bash
# A long headless run with a dashboard attached, its gaplab.toml edited every few seconds, for
# MINUTES minutes. The workload is benches/tui_overhead.sh's (a 5.3M-parameter scratch Llama,
# DPO, batch 6), with eval and sampling every 50 steps and a checkpoint every 100 (two kept).
# The dashboard is `gaplab attach RUN` in a 120x40 tmux window. Every EDIT_S seconds the lr
# (a live setting) is switched between two values; every sixth edit is invalid instead (an lr
# of -1), which the run must reject and keep training. Reports:
# - resident memory (VmRSS) of the training process and of the dashboard every ~10 s, and its
#   slope after the first quarter of the run (warm-up), in MiB/min;
# - the run directory's growth per step for each file, between the end of warm-up and the end;
# - edits applied and rejected, as the run recorded them;
# - key latency: `?` (help on, then off) sent with tmux send-keys, timed until the screen
#   (tmux capture-pane) shows the change; median and p95 over KEYS keys, at the end.
#   bash benches/soak.sh [MINUTES=10]       (EDIT_S=5 KEYS=50 in the env)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
edit_s=${EDIT_S:-5}
keys=${KEYS:-50}
# NO_BUILD=1: use the gaplab already in target/release (e.g. the one `cargo test --release` built).
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
bin=$PWD/target/release/gaplab
tmp=$(mktemp -d)
session=gaplab-soak-$$
trainer=
cleanup() {
  tmux kill-session -t "$session" 2>/dev/null || true
  [ -n "$trainer" ] && kill "$trainer" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
# shellcheck source=benches/workload.sh
source benches/workload.sh
# The workload at learning rate $1, for longer than any soak, checkpointed every 100 steps.
config() {
  workload_toml 1000000 "$1" $'schedule = "constant"\nwarmup_ratio = 0.0' $'interval = 100\nkeep = 2'
}
# Saved as editors save: a new file renamed over the old one.
edit() { config "$1" > "$tmp/ws/gaplab.toml.new" && mv "$tmp/ws/gaplab.toml.new" "$tmp/ws/gaplab.toml"; }

mkdir -p "$tmp/ws"
config 1e-4 > "$tmp/ws/gaplab.toml"
"$bin" train "$tmp/ws" --headless 2> "$tmp/train.err" &
trainer=$!
until run=$(ls -d "$tmp"/ws/runs/dpo-* 2>/dev/null | head -1) && [ -S "$run/control.sock" ]; do sleep 0.1; done
tmux new-session -d -s "$session" -x 120 -y 40 "exec $bin attach $run"
dashboard=$(tmux display-message -p -t "$session" '#{pane_pid}')

rss() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo nan; }
steps() { local n; n=$(grep -c '"split":"train"' "$run/metrics.jsonl" 2>/dev/null) || true; echo "${n:-0}"; }
sizes() {
  printf '%s' "$(steps)"
  for name in events.jsonl metrics.jsonl samples.jsonl prefix.jsonl log.txt; do
    printf ' %s' "$(stat -c %s "$run/$name" 2>/dev/null || echo 0)"
  done
  printf ' %s\n' "$(du -sb "$run/checkpoints" 2>/dev/null | cut -f1 || echo 0)"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "t_s step trainer_rss_mib dashboard_rss_mib" | tee "$tmp/rss.txt"
start=$(date +%s)
end=$((start + minutes * 60))
warm=$((start + minutes * 15))
next_sample=$start
next_edit=$((start + edit_s))
edits=0 invalid=0
warm_sizes=
while [ "$(date +%s)" -lt "$end" ]; do
  now=$(date +%s)
  if [ "$now" -ge "$next_sample" ]; then
    echo "$((now - start)) $(steps) $(rss "$trainer") $(rss "$dashboard")" | tee -a "$tmp/rss.txt"
    next_sample=$((next_sample + 10))
  fi
  if [ -z "$warm_sizes" ] && [ "$now" -ge "$warm" ]; then warm_sizes=$(sizes); fi
  if [ "$now" -ge "$next_edit" ]; then
    edits=$((edits + 1))
    if [ $((edits % 6)) = 0 ]; then edit -1; invalid=$((invalid + 1))
    elif [ $((edits % 2)) = 0 ]; then edit 1e-4
    else edit 2e-4; fi
    next_edit=$((next_edit + edit_s))
  fi
  sleep 0.5
done
end_sizes=$(sizes)

# Key latency on the live dashboard: help on, help off.
python3 - "$session" "$keys" <<'PY' > "$tmp/keys.txt"
import statistics, subprocess, sys, time
session, n = sys.argv[1], int(sys.argv[2])
def screen():
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                          capture_output=True, text=True).stdout
lat = []
for i in range(n):
    want = i % 2 == 0  # help shown after this key
    t = time.monotonic()
    subprocess.run(["tmux", "send-keys", "-t", session, "?"])
    while ("focus next pane" in screen()) != want:
        if time.monotonic() - t > 10:
            sys.exit(f"key {i}: no change on screen after 10 s")
    lat.append((time.monotonic() - t) * 1000)
    time.sleep(0.2)
lat.sort()
p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
print(f"key latency over {n} keys: median {statistics.median(lat):.0f} ms, p95 {p95:.0f} ms, "
      f"max {lat[-1]:.0f} ms (each poll of the screen is one tmux capture-pane, ~5 ms)")
PY

alive=$(kill -0 "$trainer" 2>/dev/null && echo yes || echo no)
kill -INT "$trainer"
wait "$trainer" || true
trainer=
cat "$tmp/keys.txt"
echo "edits: $edits ($invalid invalid); the run recorded $(grep -c '"event":"applied"' "$run/events.jsonl") applied, $(grep -c '"event":"config_rejected"' "$run/events.jsonl") rejected; training still running at the end: $alive"
python3 - "$tmp/rss.txt" "$minutes" "$warm_sizes" "$end_sizes" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
minutes = float(sys.argv[2])
def slope(col):
    pts = [(float(r[0]) / 60, float(r[col])) for r in rows if float(r[0]) >= minutes * 15]
    pts = [(x, y) for x, y in pts if y == y]
    if len(pts) < 3:
        return float("nan"), float("nan"), float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    s = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return s, min(y for _, y in pts), max(y for _, y in pts)
for name, col in (("training", 2), ("dashboard", 3)):
    s, lo, hi = slope(col)
    print(f"{name} RSS after warm-up: {lo:.1f}..{hi:.1f} MiB, slope {s:+.3f} MiB/min")
a = [int(x) for x in sys.argv[3].split()]
b = [int(x) for x in sys.argv[4].split()]
n = b[0] - a[0]
print(f"run directory growth over steps {a[0]}..{b[0]} (bytes/step):")
for i, name in enumerate(["events.jsonl", "metrics.jsonl", "samples.jsonl", "prefix.jsonl",
                          "log.txt", "checkpoints/ (2 kept)"], start=1):
    print(f"  {name:22} {(b[i] - a[i]) / max(n, 1):10.1f}   (size at the end {b[i] / 1e6:.2f} MB)")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
