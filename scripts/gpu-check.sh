#!/usr/bin/env bash
# GPU check: on a CUDA machine, builds gaplab with `--features cuda`, then
#   1. checks log-probs on the GPU against the CPU on the committed tiny checkpoints (f32),
#   2. times DPO and DPO+POET full fine-tuning steps on a random-init model of Qwen2.5-0.5B's
#      shape in bf16 (`gaplab bench`), with tokens/s, peak GPU memory (nvidia-smi, sampled
#      every 100 ms, less what was in use before) and gaplab's own memory estimate,
#   3. times LoRA DPO and DPO+POET steps with activation recomputation in bf16 on a random-init
#      Llama-3-8B shape (`gaplab bench --lora R --gradient-checkpointing`), with tokens/s and
#      peak GPU memory against the estimate of `gaplab bench --estimate-only --json`,
#   4. trains the tiny fixture workspace end to end on the GPU in bf16 (`gaplab train
#      --headless`: run directory, checkpoints, resume-ready state).
# Prints a summary; everything it measured is also left in $OUT (default gpu-check-out/).
# A failed step is reported and the later steps still run; the exit status is then 1.
#
# Usage: bash scripts/gpu-check.sh
# Environment: PAIRS (4), PROMPT_LEN (256), RESPONSE_LEN (256), ITERS (5), DTYPE (bf16),
#   SHAPE (qwen2.5-0.5b), DEVICE (cuda:0), FEATURES (cuda; empty builds for the CPU, which
#   with DEVICE=cpu SHAPE=small runs the same script as a smoke test without a GPU),
#   STEPS ("1 2 3 4": the steps to run, e.g. STEPS=3 for the 8B step alone).
#   Step 3: LORA_SHAPE (llama-3-8b; with DEVICE=cpu the default is $SHAPE, as an 8B model
#   would take hours on a CPU; "none" skips the step), LORA_RANK (16), LORA_PAIRS,
#   LORA_PROMPT_LEN, LORA_RESPONSE_LEN (default to PAIRS, PROMPT_LEN, RESPONSE_LEN),
#   LORA_ITERS (3).
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
STEPS=${STEPS:-1 2 3 4}
if [ "$DEVICE" = cpu ]; then
    LORA_SHAPE=${LORA_SHAPE:-$SHAPE}
else
    LORA_SHAPE=${LORA_SHAPE:-llama-3-8b}
fi
LORA_RANK=${LORA_RANK:-16}
LORA_PAIRS=${LORA_PAIRS:-$PAIRS}
LORA_PROMPT_LEN=${LORA_PROMPT_LEN:-$PROMPT_LEN}
LORA_RESPONSE_LEN=${LORA_RESPONSE_LEN:-$RESPONSE_LEN}
LORA_ITERS=${LORA_ITERS:-3}
mkdir -p "$OUT"

failed=()
step_on() { [[ " $STEPS " == *" $1 "* ]]; }

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

# Runs "$@" while sampling GPU memory; writes the peak above the starting level, in MiB, to
# $log.peak ("n/a" without nvidia-smi) and returns the command's status.
with_peak() {
    local log=$1
    shift
    local rc=0
    if ! $have_smi; then
        "$@" || rc=$?
        echo "n/a" >"$log.peak"
        return $rc
    fi
    local base
    base=$(used_mib)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$gpu_index" -lms 100 >"$log" &
    local sampler=$!
    "$@" || rc=$?
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sort -n "$log" | tail -n 1 | awk -v b="$base" '{print $1 - b}' >"$log.peak"
    return $rc
}

# One line per timed step of a `gaplab bench --json` report, then the peak memory against
# the estimate. Arguments: report, peak file, label, and optionally the output of
# `gaplab bench --estimate-only --json` (else the report's own dpo_estimate_bytes).
summarize() {
    python3 - "$@" <<'PY'
import json, sys

report, peak_file, label = sys.argv[1:4]
r = json.load(open(report))


def total(j):
    """The estimate's total in bytes, under whichever key the JSON carries it."""
    if isinstance(j, dict):
        for k in ("total_bytes", "total", "estimate_bytes", "dpo_estimate_bytes"):
            if isinstance(j.get(k), (int, float)):
                return j[k]
        for k in ("estimate", "memory"):
            t = total(j.get(k))
            if t is not None:
                return t
    return None


est = None
if len(sys.argv) > 4:
    try:
        est = total(json.load(open(sys.argv[4])))
    except (OSError, ValueError):
        pass
if est is None:
    est = r.get("dpo_estimate_bytes")


def gib(b):
    return f"{b / 2**30:.2f} GiB"


params = f"{r['params'] / 1e6:.0f}M"
for k in ("trainable_params", "lora_params"):
    if isinstance(r.get(k), int):
        params += f", {r[k] / 1e6:.1f}M trainable"
        break
for x in r["results"]:
    if x["name"].endswith("_step"):
        print(f"{x['name'][:-5]:9} {r['shape']} ({params}) {r['dtype']} on {r['device']}: "
              f"{x['median_s']:.3f} s/step, {x['tokens_per_s']:.0f} tokens/s")
peak = open(peak_file).read().strip()
if peak != "n/a":
    peak_b, what = float(peak) * 2**20, "peak GPU memory"
elif r.get("peak_rss_bytes"):
    peak_b, what = float(r["peak_rss_bytes"]), "peak resident memory"
else:
    peak_b, what = None, "peak memory"
line = f"{label}: {what} " + (gib(peak_b) if peak_b is not None else "n/a")
if est:
    line += f", estimate {gib(est)}"
    if peak_b is not None:
        line += f", measured / estimate {peak_b / est:.2f}"
print(line)
# The random-init benches build f32 weights on the GPU and cast them: a peak at that level
# was set by the initialisation, not by training.
init = r["params"] * 6
if peak != "n/a" and r["dtype"] != "f32" and peak_b >= 0.9 * init:
    print(f"  note: the peak reaches the f32 random initialisation (params x 6 B = {gib(init)})")
PY
}

if step_on 1; then
    echo "== 1. log-probs on $DEVICE vs cpu (f32, tiny checkpoints)"
    for model in tiny-llama tiny-qwen2 tiny-mistral; do
        ok=true
        for dev in cpu "$DEVICE"; do
            "$GAPLAB" eval --model "tests/fixtures/$model" --data tests/fixtures/pairs.jsonl \
                --objective simpo --json --device "$dev" >"$OUT/eval-$model-${dev/:/}.json" ||
                ok=false
        done
        if ! $ok; then
            echo "$model: FAILED (gaplab eval)"
            failed+=("1:$model")
            continue
        fi
        python3 - "$OUT/eval-$model-cpu.json" "$OUT/eval-$model-${DEVICE/:/}.json" "$model" <<'PY' ||
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
worst = 0.0
for pa, pb in zip(a["pairs"], b["pairs"]):
    for k in ("chosen_logps", "rejected_logps"):
        worst = max(worst, abs(pa[k] - pb[k]))
print(f"{sys.argv[3]}: max |sequence logp difference| {worst:.2e}", "ok" if worst < 1e-3 else "TOO LARGE")
sys.exit(0 if worst < 1e-3 else 1)
PY
            failed+=("1:$model")
    done
fi

if step_on 2; then
    echo "== 2. full fine-tuning steps: $SHAPE, $DTYPE, $PAIRS pairs of $PROMPT_LEN + $RESPONSE_LEN tokens on $DEVICE"
    for bench in dpo dpo_poet; do
        rc=0
        with_peak "$OUT/mem-$bench.log" "$GAPLAB" bench --shape "$SHAPE" --dtype "$DTYPE" \
            --device "$DEVICE" --only "$bench" --pairs "$PAIRS" --prompt-len "$PROMPT_LEN" \
            --response-len "$RESPONSE_LEN" --iters "$ITERS" --warmup 2 --json \
            >"$OUT/bench-$bench.json" || rc=$?
        if [ $rc -eq 0 ]; then
            summarize "$OUT/bench-$bench.json" "$OUT/mem-$bench.log.peak" "$bench"
        else
            echo "$bench: FAILED (exit $rc)"
            failed+=("2:$bench")
        fi
    done
fi

if step_on 3; then
    echo "== 3. LoRA r$LORA_RANK (all-linear) with recomputation: $LORA_SHAPE, $DTYPE, $LORA_PAIRS pairs of $LORA_PROMPT_LEN + $LORA_RESPONSE_LEN tokens on $DEVICE"
    help=$("$GAPLAB" bench --help)
    if [ "$LORA_SHAPE" = none ]; then
        echo "skipped (LORA_SHAPE=none)"
    elif [[ $help != *--lora* || $help != *--gradient-checkpointing* || $help != *--estimate-only* ]]; then
        echo "skipped: this gaplab bench has no --lora, --gradient-checkpointing or --estimate-only"
    else
        lora_args=(--shape "$LORA_SHAPE" --lora "$LORA_RANK" --gradient-checkpointing
            --dtype "$DTYPE" --device "$DEVICE" --pairs "$LORA_PAIRS"
            --prompt-len "$LORA_PROMPT_LEN" --response-len "$LORA_RESPONSE_LEN")
        # The estimate first: it allocates nothing, so it is on record even if the run dies.
        "$GAPLAB" bench "${lora_args[@]}" --estimate-only --json >"$OUT/estimate-lora.json" ||
            failed+=("3:estimate")
        rc=0
        with_peak "$OUT/mem-lora.log" "$GAPLAB" bench "${lora_args[@]}" --only dpo,dpo_poet \
            --iters "$LORA_ITERS" --warmup 1 --json >"$OUT/bench-lora.json" || rc=$?
        if [ $rc -eq 0 ]; then
            # One process times both steps (they share the base, adapters and optimizer), so
            # the peak is theirs together.
            summarize "$OUT/bench-lora.json" "$OUT/mem-lora.log.peak" \
                "lora r$LORA_RANK dpo + dpo_poet" "$OUT/estimate-lora.json"
        else
            echo "lora: FAILED (exit $rc)"
            failed+=("3:lora")
        fi
    fi
fi

if step_on 4; then
    echo "== 4. gaplab train on $DEVICE in $DTYPE (tests/fixtures/ws-tiny)"
    ws=$(mktemp -d)
    sed -e "s#\"../tiny-llama\"#\"$PWD/tests/fixtures/tiny-llama\"#" \
        -e "s#\"../pairs.jsonl\"#\"$PWD/tests/fixtures/pairs.jsonl\"#" \
        -e "s#^seed = 3#seed = 3\ndevice = \"$DEVICE\"\ndtype = \"$DTYPE\"#" \
        tests/fixtures/ws-tiny/gaplab.toml >"$ws/gaplab.toml"
    if "$GAPLAB" train "$ws" --headless --out "$ws/runs" >"$OUT/train.log" 2>&1; then
        for run in "$ws"/runs/*/; do
            python3 - "$run" <<'PY'
import json, sys, os
run = sys.argv[1]
status = json.load(open(os.path.join(run, "status.json")))
steps = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if '"split":"train"' in l.replace(" ", "")]
last = steps[-1]
print(f"{os.path.basename(run.rstrip('/'))}: {status['state']}, {len(steps)} steps, last loss {last.get('loss'):.4f}")
PY
        done
        grep -h "memory estimate" "$ws"/runs/*/log.txt | head -n 1
    else
        cat "$OUT/train.log"
        failed+=("4:train")
    fi
    rm -rf "$ws"
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu-check: FAILED: ${failed[*]} (details in $OUT/)"
    exit 1
fi
echo "gpu-check: done (details in $OUT/)"
