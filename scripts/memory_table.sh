#!/usr/bin/env bash
# The memory table of docs/PERFORMANCE.md ("Memory for 0.5B to 8B on one GPU"): gaplab's
# estimated peak of a DPO step for each model shape under full fine-tuning, full fine-tuning with
# cached reference log-probs, LoRA, LoRA with activation recomputation, and full fine-tuning
# with activation recomputation. Nothing is
# allocated: `gaplab bench --estimate-only` computes every number from the shape alone.
#
# Usage: bash scripts/memory_table.sh
# Environment: PAIRS (8), PROMPT_LEN (256), RESPONSE_LEN (768), RANK (16), DEVICE (cuda:0: the
#   estimate for a GPU, which need not be present), DTYPE (bf16), SHAPES (the five below),
#   GAPLAB (target/release/gaplab, built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-8}
PROMPT_LEN=${PROMPT_LEN:-256}
RESPONSE_LEN=${RESPONSE_LEN:-768}
RANK=${RANK:-16}
DEVICE=${DEVICE:-cuda:0}
DTYPE=${DTYPE:-bf16}
SHAPES=${SHAPES:-qwen2.5-0.5b llama-3.2-1b qwen2.5-7b mistral-7b llama-3-8b}
GAPLAB=${GAPLAB:-target/release/gaplab}
[ -x "$GAPLAB" ] || cargo build --release --quiet

# The estimated peak in GiB of one setting (extra flags in "$@").
peak() {
    "$GAPLAB" bench --estimate-only --json --shape "$shape" --device "$DEVICE" --dtype "$DTYPE" \
        --pairs "$PAIRS" --prompt-len "$PROMPT_LEN" --response-len "$RESPONSE_LEN" "$@" |
        awk -F': ' '/"total_bytes"/ { gsub(/[ ,]/, "", $2); printf "%.1f", $2 / 2^30 }'
}

echo "DPO step, $PAIRS pairs ($((2 * PAIRS)) rows of $((PROMPT_LEN + RESPONSE_LEN)) tokens: $PROMPT_LEN prompt + $RESPONSE_LEN response), $DTYPE on $DEVICE; estimated peak in GiB"
echo
echo "| model | full | full + precompute_ref | LoRA r=$RANK | LoRA r=$RANK + recomputation | full + recomputation |"
echo "|---|---|---|---|---|---|"
for shape in $SHAPES; do
    echo "| $shape | $(peak) | $(peak --precompute-ref) | $(peak --lora "$RANK") | $(peak --lora "$RANK" --gradient-checkpointing) | $(peak --gradient-checkpointing) |"
done
