#!/usr/bin/env bash
# Times one LoRA (r 16, alpha 32, all-linear) DPO step on SmolLM2-135M's shape (random weights,
# f32, CPU) in gaplab and in TRL + PEFT, alternately, ROUNDS times, without and with activation
# recomputation. Each measurement runs in its own process, so each peak resident memory is that
# configuration's alone. Needs torch, transformers, trl, peft and datasets.
#   bash benches/compare_lora.sh [ROUNDS] [THREADS]
# Batch shape (environment): PAIRS (2), PROMPT (64), RESPONSE (192), ITERS (3), WARMUP (1).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
threads=${2:-2}
python=${PYTHON:-python3}
pairs=${PAIRS:-2}
prompt=${PROMPT:-64}
response=${RESPONSE:-192}
iters=${ITERS:-3}
warmup=${WARMUP:-1}
shape=(--pairs "$pairs" --prompt-len "$prompt" --response-len "$response" --iters "$iters" --warmup "$warmup")
cargo build --release --quiet
for r in $(seq "$rounds"); do
  for gc in "" --gradient-checkpointing; do
    echo "== round $r ${gc:-(no recomputation)}"
    RAYON_NUM_THREADS=$threads ./target/release/gaplab bench --shape smollm2-135m --lora 16 \
      --only dpo "${shape[@]}" $gc
    "$python" benches/peft_lora_step.py --threads "$threads" "${shape[@]}" $gc
  done
done
