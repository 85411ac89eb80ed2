#!/usr/bin/env python3
"""Summarise scripts/demo_rm_seeds.sh: per variant, mean ± sd over seeds of the final eval.

    python3 scripts/demo_rm_results.py SEED_DIR [SEED_DIR ...]

Each SEED_DIR is OUT/seed-S of demo_rm_seeds.sh (runs/, rm/train_rm.json, prefix_gap.json).
Prints three Markdown tables: the variants' final eval metrics (sort judge score and exact sort,
length and tail share of greedy generations, the reward model's score of the full generation
(eval_judge/rm_score) and of its first 2 tokens, eval reward accuracy and margin, and every
eval_gen/* health metric present); the reward model (eval accuracy and loss); ΔQ(k) of the
eval data under it (mean ± sd over seeds of each seed's ΔQ(k), and the share of pairs > 0).
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_results import runs  # noqa: E402

COLUMNS = [
    ("judge score", "eval_judge/score"),
    ("exact sort", "eval_judge/correct"),
    ("length", "eval_judge/length"),
    ("tail", "eval_judge/tail"),
    ("RM score", "eval_judge/rm_score"),
    ("RM score k=2", "eval_judge/prefix_score@2"),
    ("RM sampled", "eval_judge/rm_score_sampled"),
    ("reward acc", "eval_rewards/accuracies"),
    ("margin", "eval_rewards/margins"),
]


def fmt(values):
    values = [v for v in values if v == v]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main():
    dirs = sys.argv[1:]
    if not dirs:
        sys.exit(__doc__)
    table, health, first = {}, set(), {}
    for d in dirs:
        for variant, evals, _ in runs(os.path.join(d, "runs")):
            row = table.setdefault(variant, {})
            end = evals[-1]
            first.setdefault("SFT (step 0)", []).append(evals[0])
            health.update(k for k in end if k.startswith("eval_gen/") and isinstance(end[k], (int, float)))
            for label, metric in COLUMNS:
                row.setdefault(label, []).append(end.get(metric, float("nan")))
            for metric in health:
                row.setdefault(metric, []).append(end.get(metric, float("nan")))
    if not table:
        sys.exit("no finished variant runs under " + " ".join(dirs))
    labels = [l for l, _ in COLUMNS] + sorted(health)
    print(f"Final eval metrics, mean ± sd over {len(dirs)} seed(s); the SFT policy (step 0) first.\n")
    print("| variant | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    keys = dict(COLUMNS)
    sft = first.get("SFT (step 0)", [])
    # Every variant starts from the same SFT checkpoint: its step-0 eval is one per seed.
    sft = sft[:: max(1, len(table))]
    print("| SFT (step 0) | " + " | ".join(fmt([r.get(keys.get(l, l), float("nan")) for r in sft]) for l in labels) + " |")
    for variant, row in table.items():
        print(f"| {variant} | " + " | ".join(fmt(row.get(l, [])) for l in labels) + " |")

    print("\nReward model (gaplab train-rm --scratch on each seed's train pairs):\n")
    print("| eval accuracy | eval loss | train accuracy | seconds |")
    print("|---|---|---|---|")
    rms = [json.load(open(os.path.join(d, "rm", "train_rm.json"))) for d in dirs]
    print("| " + " | ".join(fmt([r[k] if r[k] is not None else float("nan") for r in rms])
                          for k in ("eval_accuracy", "eval_loss", "train_accuracy", "seconds")) + " |")

    print("\nΔQ(k) of the eval pairs under the reward model (k in its tokens; full: whole responses):\n")
    print("| k | ΔQ | share > 0 | pairs shorter |")
    print("|---|---|---|---|")
    gaps = [json.load(open(os.path.join(d, "prefix_gap.json"))) for d in dirs]
    for i, row in enumerate(gaps[0]["rows"]):
        vals = [g["rows"][i] for g in gaps]
        print(f"| {row['k']} | {fmt([v['delta'] for v in vals])} | {fmt([v['share_positive'] for v in vals])} | {fmt([v['shorter'] for v in vals])} |")
    full = [g["full"] for g in gaps]
    print(f"| full | {fmt([v['delta'] for v in full])} | {fmt([v['share_positive'] for v in full])} | – |")


if __name__ == "__main__":
    main()
