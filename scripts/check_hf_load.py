#!/usr/bin/env python3
"""Checks that a checkpoint folder written by gaplab loads in Hugging Face transformers and
scores like gaplab does.

Usage (from the repository root, with torch and transformers installed):
    python scripts/check_hf_load.py CHECKPOINT_DIR [PAIRS.jsonl] [--peft BASE ADAPTER]

It runs `gaplab eval --objective simpo --json` on the pairs (default: the test fixture pairs)
and recomputes every pair's summed response log-probs with transformers
(AutoModelForCausalLM + AutoTokenizer, float32, gaplab's tokenization convention), and fails
if any differs by more than 1e-3.

With `--peft BASE ADAPTER` (a folder `gaplab merge --model BASE --adapter ADAPTER` wrote; needs
peft) it also merges the adapter with PEFT (PeftModel.from_pretrained + merge_and_unload, in
the checkpoint's stored dtype) and compares every tensor and the logits of the pairs' prompts
with CHECKPOINT_DIR's, failing if a weight differs by more than one step of its dtype at its
magnitude or a logit by more than 1e-3.
"""

import argparse
import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def check_peft_merge(ckpt: str, base: str, adapter: str, pairs: list) -> bool:
    from peft import PeftModel

    ours = AutoModelForCausalLM.from_pretrained(ckpt, dtype="auto").eval()
    theirs = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    theirs = PeftModel.from_pretrained(theirs, adapter).merge_and_unload().eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys(), f"tensor names differ: {sorted(a.keys() ^ b.keys())}"
    worst_steps, identical = 0.0, 0
    for k in a:
        x, y = a[k].double(), b[k].double()
        # One step of the dtype at the tensor's magnitude (weights are rounded to it once).
        step = torch.finfo(a[k].dtype).eps * y.abs().clamp(min=1e-30)
        worst_steps = max(worst_steps, ((x - y).abs() / step).max().item())
        identical += bool(torch.equal(a[k], b[k]))
    tok = AutoTokenizer.from_pretrained(ckpt)
    worst_logit = 0.0
    for p in pairs:
        ids = torch.tensor([tok.encode(p["prompt"] + p["chosen"], add_special_tokens=True)])
        with torch.no_grad():
            d = (ours.float()(ids).logits - theirs.float()(ids).logits).abs().max().item()
        worst_logit = max(worst_logit, d)
    print(
        f"PEFT merge_and_unload ({a[next(iter(a))].dtype}): {identical} of {len(a)} tensors "
        f"bit-identical, max weight difference {worst_steps:.2f} steps of the dtype, "
        f"max |logit difference| {worst_logit:.2e}"
    )
    return worst_steps <= 1.0 and worst_logit < 1e-3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("pairs", nargs="?", default="tests/fixtures/pairs.jsonl")
    ap.add_argument("--peft", nargs=2, metavar=("BASE", "ADAPTER"))
    args = ap.parse_args()
    ckpt, pairs_path = args.ckpt, args.pairs
    out = subprocess.run(
        ["cargo", "run", "--release", "--quiet", "--", "eval", "--model", ckpt,
         "--data", pairs_path, "--objective", "simpo", "--json"],
        check=True, capture_output=True, text=True,
    )
    ours = json.loads(out.stdout)["pairs"]
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    eos = tok.eos_token_id
    worst = 0.0
    with open(pairs_path) as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    for p, o in zip(pairs, ours):
        prompt = tok.encode(p["prompt"], add_special_tokens=True)
        for side in ("chosen", "rejected"):
            resp = tok.encode(p[side], add_special_tokens=False) + [eos]
            ids = torch.tensor([prompt + resp])
            with torch.no_grad():
                logits = model(ids).logits[0].double()
            logp = logits.log_softmax(-1)
            total = sum(logp[len(prompt) + t - 1, y].item() for t, y in enumerate(resp))
            worst = max(worst, abs(total - o[f"{side}_logps"]))
    print(f"{len(pairs)} pairs, max |sum logp difference| = {worst:.2e}")
    ok = worst < 1e-3
    if args.peft:
        ok = check_peft_merge(ckpt, args.peft[0], args.peft[1], pairs) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
