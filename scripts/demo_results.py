#!/usr/bin/env python3
"""Summarise demo runs: final eval metrics per variant, mean and spread over seeds.

    python3 scripts/demo_results.py RUNS_ROOT [RUNS_ROOT ...]

Each RUNS_ROOT is a `runs/` folder of one demo run (one seed). Prints a Markdown table with,
per variant, the judge's score and exact-sort rate of greedy generations for the held-out
prompts, the mean generated length (words) and the share with a courtesy tail, the eval reward
accuracy and margin, and the eval prefix accuracy at j = 1 and 2, at the start (SFT policy,
step 0) and at the end.
"""
import glob
import json
import os
import statistics
import sys

COLUMNS = [
    ("judge score", "eval_judge/score"),
    ("exact sort", "eval_judge/correct"),
    ("sampled score", "eval_judge/score_sampled"),
    ("length", "eval_judge/length"),
    ("tail", "eval_judge/tail"),
    ("overrun", "eval_judge/overrun"),
    ("reward acc", "eval_rewards/accuracies"),
    ("margin", "eval_rewards/margins"),
]


def runs(root):
    for d in sorted(glob.glob(os.path.join(root, "*"))):
        name = os.path.basename(d)
        if name.startswith(("sft-", "init-", ".")) or not os.path.exists(os.path.join(d, "metrics.jsonl")):
            continue
        variant = name.rsplit("-", 2)[0]
        evals = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if '"split":"eval"' in l]
        prefix = [json.loads(l) for l in open(os.path.join(d, "prefix.jsonl"))]
        if not evals:
            continue
        yield variant, evals, prefix


def prefix_acc(rec, j):
    p = rec.get("prefix", rec)
    for jj, acc in zip(p["j"], p["accuracy"]):
        if jj == j:
            return acc
    return float("nan")


def fmt(values):
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main():
    table = {}
    for root in sys.argv[1:]:
        for variant, evals, prefix in runs(root):
            row = table.setdefault(variant, {})
            for label, key in COLUMNS:
                row.setdefault(("start", label), []).append(evals[0].get(key, float("nan")))
                row.setdefault(("end", label), []).append(evals[-1].get(key, float("nan")))
            for j in (1, 2):
                row.setdefault(("start", f"prefix acc j={j}"), []).append(prefix_acc(prefix[0], j))
                row.setdefault(("end", f"prefix acc j={j}"), []).append(prefix_acc(prefix[-1], j))
    labels = [l for l, _ in COLUMNS] + ["prefix acc j=1", "prefix acc j=2"]
    seeds = len(sys.argv) - 1
    print(f"Final eval metrics (step {evals[-1]['step']}), mean ± sd over {seeds} seed(s); SFT policy (step 0) in the first row.\n")
    print("| variant | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    first = next(iter(table.values()))
    print("| SFT (step 0) | " + " | ".join(fmt(first[("start", l)]) for l in labels) + " |")
    for variant, row in table.items():
        print(f"| {variant} | " + " | ".join(fmt(row[("end", l)]) for l in labels) + " |")


if __name__ == "__main__":
    main()
