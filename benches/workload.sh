# The benchmark workload shared by tui_overhead.sh, viewers.sh and soak.sh (sourced from the
# repository root): a 5.3M-parameter scratch Llama (the benchmark shape, with the test
# tokenizer) trained with DPO on the fixture pairs, batch 6, eval and sampling every 50 steps.
#   workload_toml STEPS [LR] [TRAIN_LINES] [CHECKPOINT_LINES]   prints its gaplab.toml
# TRAIN_LINES are added to [train] (e.g. a schedule); CHECKPOINT_LINES replace the default
# "interval = 0" (no checkpoints).
workload_toml() {
  local steps=$1 lr=${2:-1e-4} train_lines=${3:-} checkpoint_lines=${4:-"interval = 0"}
  cat <<TOML
[model]
tokenizer = "$PWD/tests/fixtures/tiny-llama"
[model.scratch]
arch = "llama"
hidden_size = 256
intermediate_size = 688
num_hidden_layers = 4
num_attention_heads = 8
num_key_value_heads = 8
max_position_embeddings = 512
[data]
train = "$PWD/tests/fixtures/pairs.jsonl"
eval = "$PWD/tests/fixtures/pairs.jsonl"
[train]
objective = "dpo"
lr = $lr
$train_lines
batch_size = 6
steps = $steps
[eval]
interval = 50
pairs = 6
[sample]
interval = 50
max_new_tokens = 16
[checkpoint]
$checkpoint_lines
TOML
}
