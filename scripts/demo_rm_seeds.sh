#!/usr/bin/env bash
# The long-tail demo (workspaces/demo-tail) over seeds, judged in the loop by the sort judge AND
# by a reward model gaplab trains itself. One command makes everything; per seed S, in
# OUT_DIR/seed-S:
#   1. data/        gaplab demo-data --task long-tail --seed S
#   2. rm/          gaplab train-rm --scratch on rm-data/train.jsonl: the task's pairs with the
#                   rejected tails cut off (RM_DATA=raw: as they are); eval accuracy in
#                   rm/train_rm.json. From scratch and first: every variant's eval is judged by it.
#   3. prefix_gap.json  gaplab analyze prefix-gap of data/eval.jsonl under rm/: ΔQ(k) of the data
#   4. runs/        gaplab train (SFT + dpo, dpo-poet, dpo-poet-keep-eos, simpo, simpo-poet,
#                   headless) with `[judge] reward_model = "rm"` added to the workspace config
# then scripts/demo_rm_results.py prints the mean ± sd tables over seeds.
#
#   bash scripts/demo_rm_seeds.sh [SEEDS] [OUT_DIR]
#   SFT_STEPS=60 STEPS=20 RM_STEPS=100 bash scripts/demo_rm_seeds.sh 1 /tmp/quick   # a smoke run
# Env: SFT_STEPS, STEPS (preference steps), EVAL_INTERVAL override the workspace's; RM_STEPS
# (default 300) and RM_LR (1e-3) set the reward model's training.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-3}
out=${2:-/tmp/gaplab-demo-rm-seeds}
config=workspaces/demo-tail/gaplab.toml
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
  start=$(date +%s)
  "$bin" demo-data "$ws/data" --task long-tail --seed "$s" >/dev/null
  # The reward model learns from the task's pairs with the rejected tails cut off: trained on the
  # pairs as they are, the tail alone separates every pair and the model learns nothing else
  # (eval accuracy 1.0, the same score for every policy). RM_DATA=raw trains on them as they are.
  mkdir -p "$ws/rm-data"
  for split in train eval; do
    if [ "${RM_DATA:-list}" = raw ]; then
      cp "$ws/data/$split.jsonl" "$ws/rm-data/$split.jsonl"
    else
      python3 -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line)
    r["rejected"] = r["rejected"].split(" .")[0]
    print(json.dumps(r))' < "$ws/data/$split.jsonl" > "$ws/rm-data/$split.jsonl"
    fi
  done
  "$bin" train-rm --scratch --tokenizer "$ws/data/tokenizer" --data "$ws/rm-data/train.jsonl" \
    --eval "$ws/rm-data/eval.jsonl" --out "$ws/rm" --seed "$s" --steps "${RM_STEPS:-300}" \
    --lr "${RM_LR:-1e-3}" > "$ws/train_rm.log"
  rm_done=$(date +%s)
  "$bin" analyze prefix-gap --reward-model "$ws/rm" --data "$ws/data/eval.jsonl" \
    --k 1,2,4,8,16 --json > "$ws/prefix_gap.json"
  sed -e "s/^seed = 0$/seed = $s/" \
      -e 's/^\[judge\]$/[judge]\nreward_model = "rm"/' \
      ${SFT_STEPS:+-e "/^\[sft\]$/,/^\[/ s/^steps = .*/steps = $SFT_STEPS/"} \
      ${STEPS:+-e "/^\[train\]$/,/^\[/ s/^steps = .*/steps = $STEPS/"} \
      ${EVAL_INTERVAL:+-e "/^\[eval\]$/,/^\[/ s/^interval = .*/interval = $EVAL_INTERVAL/"} \
      "$config" > "$ws/gaplab.toml"
  "$bin" train "$ws" --headless 2> "$ws/train.log"
  echo "seed $s: reward model $(( rm_done - start )) s, all $(( $(date +%s) - start )) s" >&2
  roots+=("$ws")
done
python3 scripts/demo_rm_results.py "${roots[@]}"
