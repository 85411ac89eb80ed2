#!/usr/bin/env bash
# GPU check: on a CUDA machine, builds gaplab with `--features cuda`, then
#   1. checks log-probs on the GPU against the CPU on the committed tiny checkpoints (f32),
#   2. times DPO and DPO+POET training steps on a random-init model of Qwen2.5-0.5B's shape
#      in bf16 (`gaplab bench`), with tokens/s, peak GPU memory (nvidia-smi, sampled every
#      100 ms, less what was in use before) and gaplab's own memory estimate,
#   3. trains the tiny fixture workspace end to end on the GPU in bf16 (`gaplab train
#      --headless`: run directory, checkpoints, resume-ready state).
# Prints a summary; everything it measured is also left in $OUT (default gpu-check-out/).
#
# Usage: bash scripts/gpu-check.sh
# Environment: PAIRS (4), PROMPT_LEN (256), RESPONSE_LEN (256), ITERS (5), DTYPE (bf16),
#   SHAPE (qwen2.5-0.5b), DEVICE (cuda:0), FEATURES (cuda; empty builds for the CPU, which
#   with DEVICE=cpu SHAPE=small runs the same script as a smoke test without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-4}
PROMPT_LEN=${PROMPT_LEN:-256}
RESPONSE_LEN=${RESPONSE_LEN:-256}
ITERS=${ITERS:-5}
DTYPE=${DTYPE:-bf16}
SHAPE=${SHAPE:-qwen2.5-0.5b}
DEVICE=${DEVICE:-cuda:0}
FEATURES=${FEATURES-cuda}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"

have_smi=false
if command -v nvidia-smi >/dev/null 2>&1; then
    have_smi=true
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi

echo "== build (features: ${FEATURES:-none})"
start=$(date +%s)
if [ -n "$FEATURES" ]; then
    cargo build --release --features "$FEATURES" 2>&1 | tail -n 3
else
    cargo build --release 2>&1 | tail -n 3
fi
echo "build took $(( $(date +%s) - start )) s"
GAPLAB=target/release/gaplab

gpu_index=${DEVICE#cuda:}
[ "$gpu_index" = "$DEVICE" ] && gpu_index=0
used_mib() {
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$gpu_index" | head -n 1
}

# Runs "$@" while sampling GPU memory; prints the peak above the starting level, in MiB.
with_peak() {
    local log=$1
    shift
    if ! $have_smi; then
        "$@"
        echo "n/a" >"$log.peak"
        return
    fi
    local base
    base=$(used_mib)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$gpu_index" -lms 100 >"$log" &
    local sampler=$!
    "$@"
    local rc=$?
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sort -n "$log" | tail -n 1 | awk -v b="$base" '{print $1 - b}' >"$log.peak"
    return $rc
}

echo "== 1. log-probs on $DEVICE vs cpu (f32, tiny checkpoints)"
for model in tiny-llama tiny-qwen2 tiny-mistral; do
    for dev in cpu "$DEVICE"; do
        "$GAPLAB" eval --model "tests/fixtures/$model" --data tests/fixtures/pairs.jsonl \
            --objective simpo --json --device "$dev" >"$OUT/eval-$model-${dev/:/}.json"
    done
    python3 - "$OUT/eval-$model-cpu.json" "$OUT/eval-$model-${DEVICE/:/}.json" "$model" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
worst = 0.0
for pa, pb in zip(a["pairs"], b["pairs"]):
    for k in ("chosen_logps", "rejected_logps"):
        worst = max(worst, abs(pa[k] - pb[k]))
print(f"{sys.argv[3]}: max |sequence logp difference| {worst:.2e}", "ok" if worst < 1e-3 else "TOO LARGE")
EOF
done

echo "== 2. training steps: $SHAPE, $DTYPE, $PAIRS pairs of $PROMPT_LEN + $RESPONSE_LEN tokens on $DEVICE"
for bench in dpo dpo_poet; do
    with_peak "$OUT/mem-$bench.log" "$GAPLAB" bench --shape "$SHAPE" --dtype "$DTYPE" --device "$DEVICE" \
        --only "$bench" --pairs "$PAIRS" --prompt-len "$PROMPT_LEN" --response-len "$RESPONSE_LEN" \
        --iters "$ITERS" --warmup 2 --json >"$OUT/bench-$bench.json"
done
python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
for bench in ("dpo", "dpo_poet"):
    r = json.load(open(f"{out}/bench-{bench}.json"))
    peak = open(f"{out}/mem-{bench}.log.peak").read().strip()
    step = next(x for x in r["results"] if x["name"] == f"{bench}_step")
    est = r["dpo_estimate_bytes"] / 2**30
    peak_gib = "n/a" if peak == "n/a" else f"{float(peak) / 1024:.2f} GiB"
    print(f"{bench:9} {r['shape']} ({r['params'] / 1e6:.0f}M) {r['dtype']} on {r['device']}: "
          f"{step['median_s']:.3f} s/step, {step['tokens_per_s']:.0f} tokens/s, "
          f"peak GPU memory {peak_gib} (estimate {est:.2f} GiB)")
EOF

echo "== 3. gaplab train on $DEVICE in $DTYPE (tests/fixtures/ws-tiny)"
ws=$(mktemp -d)
sed -e "s#\"../tiny-llama\"#\"$PWD/tests/fixtures/tiny-llama\"#" \
    -e "s#\"../pairs.jsonl\"#\"$PWD/tests/fixtures/pairs.jsonl\"#" \
    -e "s#^seed = 3#seed = 3\ndevice = \"$DEVICE\"\ndtype = \"$DTYPE\"#" \
    tests/fixtures/ws-tiny/gaplab.toml >"$ws/gaplab.toml"
"$GAPLAB" train "$ws" --headless --out "$ws/runs" >"$OUT/train.log" 2>&1 || {
    cat "$OUT/train.log"
    exit 1
}
for run in "$ws"/runs/*/; do
    python3 - "$run" <<'EOF'
import json, sys, os
run = sys.argv[1]
status = json.load(open(os.path.join(run, "status.json")))
steps = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if '"split":"train"' in l.replace(" ", "")]
last = steps[-1]
print(f"{os.path.basename(run.rstrip('/'))}: {status['state']}, {len(steps)} steps, last loss {last.get('loss'):.4f}")
EOF
done
grep -h "memory estimate" "$ws"/runs/*/log.txt | head -n 1
rm -rf "$ws"
echo "gpu-check: done (details in $OUT/)"
