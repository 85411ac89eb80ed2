#!/usr/bin/env python3
"""Checks that a checkpoint folder written by gaplab loads in Hugging Face transformers and
scores like gaplab does.

Usage (from the repository root, with torch and transformers installed):
    python scripts/check_hf_load.py CHECKPOINT_DIR [PAIRS.jsonl]

It runs `gaplab eval --objective simpo --json` on the pairs (default: the test fixture pairs)
and recomputes every pair's summed response log-probs with transformers
(AutoModelForCausalLM + AutoTokenizer, float32, gaplab's tokenization convention), and fails
if any differs by more than 1e-3.
"""

import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    ckpt = sys.argv[1]
    pairs_path = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/pairs.jsonl"
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
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
