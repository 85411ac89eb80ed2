#!/usr/bin/env python3
"""Summarise demo runs: final eval metrics per variant, mean and spread over seeds.

    python3 scripts/demo_results.py [--per-seed] RUNS_ROOT [RUNS_ROOT ...]

Each RUNS_ROOT is a `runs/` folder of one demo run (one seed); any variant names are read from
the run folders. Prints two Markdown tables.

The first has, per variant (mean ± sd over seeds), the judge's score and exact-sort rate of
greedy generations for the held-out prompts, the mean generated length (words) and the share
with a courtesy tail, the eval reward accuracy and margin, and the eval prefix accuracy at
j = 1 and 2, at the start (SFT policy, step 0) and at the end.

The second sets reward accuracy against the judge: reward accuracy, margin, judge score, exact
sort and the gap (reward accuracy minus judge score, per seed), each as mean ± sd and
[min, max] over seeds. With --per-seed a third table lists these per seed.
"""
import glob
import json
import os
import re
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

# The gap table: what the implicit reward says against what the judge says of generations.
GAP_LABELS = ["reward acc", "margin", "judge score", "exact sort", "gap"]
PER_SEED_LABELS = ["reward acc", "judge score", "gap", "exact sort", "length", "overrun"]

# A run folder is `<variant>-<YYYYMMDD>-<HHMMSS>`, suffixed `-N` when the name was taken.
RUN_SUFFIX = re.compile(r"-\d{8}-\d{6}(-\d+)?$")


def variant_name(d):
    """The variant as config.toml records it; else the folder name less its timestamp."""
    config = os.path.join(d, "config.toml")
    if os.path.exists(config):
        for line in open(config):
            m = re.match(r'^variant\s*=\s*"(.*)"\s*$', line)
            if m:
                return m.group(1)
            if line.startswith("["):
                break
    return RUN_SUFFIX.sub("", os.path.basename(d))


def runs(root):
    for d in sorted(glob.glob(os.path.join(root, "*"))):
        name = os.path.basename(d)
        if name.startswith(("sft-", "init-", ".")) or not os.path.exists(os.path.join(d, "metrics.jsonl")):
            continue
        evals = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if '"split":"eval"' in l]
        prefix_path = os.path.join(d, "prefix.jsonl")
        prefix = [json.loads(l) for l in open(prefix_path)] if os.path.exists(prefix_path) else []
        if not evals:
            continue
        yield variant_name(d), evals, prefix


def prefix_acc(rec, j):
    if rec is None:
        return float("nan")
    p = rec.get("prefix", rec)
    for jj, acc in zip(p["j"], p["accuracy"]):
        if jj == j:
            return acc
    return float("nan")


def fmt(values):
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def fmt_range(values):
    """mean ± sd [min, max]: the sd alone hides a single seed that went its own way."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{fmt(values)} [{min(values):.3f}, {max(values):.3f}]"


def collect(roots):
    """table[variant][(when, label)] = values over seeds; per_seed[variant] = [(seed, values)]."""
    table, per_seed, last_steps = {}, {}, {}
    for index, root in enumerate(roots):
        # demo_seeds.sh's layout is OUT/seed-S/runs; elsewhere the position on the command line.
        m = re.search(r"seed-(\d+)", root)
        seed = int(m.group(1)) if m else index
        for variant, evals, prefix in runs(root):
            row = table.setdefault(variant, {})
            for when, rec in (("start", evals[0]), ("end", evals[-1])):
                for label, key in COLUMNS:
                    row.setdefault((when, label), []).append(rec.get(key, float("nan")))
                row.setdefault((when, "gap"), []).append(
                    rec.get("eval_rewards/accuracies", float("nan")) - rec.get("eval_judge/score", float("nan"))
                )
                p = (prefix[0] if when == "start" else prefix[-1]) if prefix else None
                for j in (1, 2):
                    row.setdefault((when, f"prefix acc j={j}"), []).append(prefix_acc(p, j))
            per_seed.setdefault(variant, []).append((seed, evals[-1]))
            last_steps.setdefault(evals[-1]["step"], []).append(f"{variant} (seed {seed})")
    return table, per_seed, last_steps


def main():
    args = sys.argv[1:]
    show_per_seed = "--per-seed" in args
    roots = [a for a in args if a != "--per-seed"]
    if not roots:
        sys.exit(__doc__)
    table, per_seed, last_steps = collect(roots)
    if not table:
        sys.exit("no finished variant runs under " + " ".join(roots))
    step = max(last_steps)
    for s, names in sorted(last_steps.items()):
        if s != step:
            print(f"warning: last eval at step {s}, not {step}: {', '.join(names)}", file=sys.stderr)
    seeds = len(roots)
    labels = [l for l, _ in COLUMNS] + ["prefix acc j=1", "prefix acc j=2"]
    print(f"Final eval metrics (step {step}), mean ± sd over {seeds} seed(s); SFT policy (step 0) in the first row.\n")
    print("| variant | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    first = next(iter(table.values()))
    print("| SFT (step 0) | " + " | ".join(fmt(first[("start", l)]) for l in labels) + " |")
    for variant, row in table.items():
        print(f"| {variant} | " + " | ".join(fmt(row[("end", l)]) for l in labels) + " |")

    print(
        f"\nReward accuracy against the judge (step {step}): mean ± sd [min, max] over {seeds} seed(s); "
        "gap = reward acc − judge score, per seed.\n"
    )
    print("| variant | seeds | " + " | ".join(GAP_LABELS) + " |")
    print("|---|---|" + "---|" * len(GAP_LABELS))
    print(
        f"| SFT (step 0) | {len(first[('start', 'gap')])} | "
        + " | ".join(fmt_range(first[("start", l)]) for l in GAP_LABELS)
        + " |"
    )
    for variant, row in table.items():
        n = len(row[("end", "gap")])
        print(f"| {variant} | {n} | " + " | ".join(fmt_range(row[("end", l)]) for l in GAP_LABELS) + " |")

    if show_per_seed:
        keys = dict(COLUMNS)
        print(f"\nPer seed (step {step}).\n")
        print("| variant | seed | " + " | ".join(PER_SEED_LABELS) + " |")
        print("|---|---|" + "---|" * len(PER_SEED_LABELS))
        for variant, recs in per_seed.items():
            for seed, rec in recs:
                cells = []
                for label in PER_SEED_LABELS:
                    if label == "gap":
                        v = rec.get(keys["reward acc"], float("nan")) - rec.get(keys["judge score"], float("nan"))
                    else:
                        v = rec.get(keys[label], float("nan"))
                    cells.append(f"{v:.3f}")
                print(f"| {variant} | {seed} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
