#!/usr/bin/env python3
"""PyTorch eager CPU baseline for gaplab's training-step benchmarks.

gaplab's candle implementation is compared against this script: same model
shape, same batch shapes, same loss formulation (TRL-style log_softmax +
gather per-token log-probs).

Model: LlamaForCausalLM, random init (seed 0), float32, hidden 256, 4 layers,
8 heads / 8 kv heads, intermediate 688, vocab 4096, untied embeddings,
max_position_embeddings 512. Every workload is measured once with
attn_implementation="eager" and once with "sdpa" (transformers' default).

Workloads (median wall time over --iters after --warmup):
  sft_step  8 rows x 128 tokens; full-logits forward; mean NLL over the last
            96 tokens of each row (positions 32..127 = response); backward;
            AdamW(lr=1e-4, weight_decay=0.01) step; zero_grad.
  dpo_step  8 pairs = 16 rows x 128 tokens (prompt 32 + response 96; chosen
            rows first, then rejected rows); policy forward + masked sum of
            response log-probs; frozen reference copy forward under no_grad;
            DPO sigmoid loss (beta 0.1); backward; AdamW step; zero_grad.
  sample    KV-cached greedy generate() at batch 1: 32-token prompt, exactly
            128 new tokens; reported as new tokens per second.

Training-step tokens/s counts rows x 128 tokens.

Usage (from the repository root):
    pip install torch transformers
    python benches/pytorch_step.py --threads 2
    python benches/pytorch_step.py --threads 2 --iters 10 --warmup 2 --json
"""

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

SEQ = 128
PROMPT = 32
RESPONSE = SEQ - PROMPT
VOCAB = 4096


def build_model(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(cfg).float()


def response_mask(rows: int) -> torch.Tensor:
    """Mask over the shifted label positions (labels = ids[:, 1:]): a label at
    sequence position p >= PROMPT is a response token."""
    mask = torch.zeros(rows, SEQ - 1)
    mask[:, PROMPT - 1 :] = 1.0
    return mask


def per_token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """TRL-style: log_softmax over the vocabulary, then gather the labels."""
    logp = logits[:, :-1].log_softmax(-1)
    return torch.gather(logp, 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def timed(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_sft(attn: str, iters: int, warmup: int) -> dict:
    model = build_model(attn).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    rows = 8
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (rows, SEQ), generator=g)
    mask = response_mask(rows)

    def step():
        logits = model(input_ids=ids).logits
        logps = per_token_logps(logits, ids)
        loss = -(logps * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    s = timed(step, iters, warmup)
    return {"s_per_step": s, "tokens_per_s": rows * SEQ / s, "rows": rows, "seq": SEQ}


def bench_dpo(attn: str, iters: int, warmup: int) -> dict:
    model = build_model(attn).train()
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    pairs = 8
    rows = 2 * pairs
    beta = 0.1
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(3, VOCAB, (pairs, PROMPT), generator=g)
    chosen = torch.randint(3, VOCAB, (pairs, RESPONSE), generator=g)
    rejected = torch.randint(3, VOCAB, (pairs, RESPONSE), generator=g)
    ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)], 0)
    mask = response_mask(rows)

    def seq_logps(m, x):
        return (per_token_logps(m(input_ids=x).logits, x) * mask).sum(-1)

    def step():
        pol = seq_logps(model, ids)
        with torch.no_grad():
            refl = seq_logps(ref, ids)
        pi = pol[:pairs] - pol[pairs:]
        rf = refl[:pairs] - refl[pairs:]
        loss = -F.logsigmoid(beta * (pi - rf)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    s = timed(step, iters, warmup)
    return {"s_per_step": s, "tokens_per_s": rows * SEQ / s, "rows": rows, "seq": SEQ}


@torch.no_grad()
def bench_sample(attn: str, iters: int, warmup: int) -> dict:
    model = build_model(attn).eval()
    new = 128
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, VOCAB, (1, PROMPT), generator=g)

    def run():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
        assert out.shape[1] == PROMPT + new

    s = timed(run, iters, warmup)
    return {"s_per_call": s, "tokens_per_s": new / s, "prompt": PROMPT, "new_tokens": new}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    results = []
    for attn in ("eager", "sdpa"):
        results.append(
            {
                "attn_implementation": attn,
                "sft_step": bench_sft(attn, args.iters, args.warmup),
                "dpo_step": bench_dpo(attn, args.iters, args.warmup),
                "sample": bench_sample(attn, args.iters, args.warmup),
            }
        )

    report = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "iters": args.iters,
        "warmup": args.warmup,
        "device": "cpu",
        "dtype": "float32",
        "results": results,
    }
    if args.json:
        print(json.dumps(report))
        return

    print(f"torch {report['torch']}  transformers {report['transformers']}  threads {report['threads']}")
    print(f"{'attn':6s} {'workload':9s} {'s/step':>9s} {'tokens/s':>10s}")
    for r in results:
        for name in ("sft_step", "dpo_step"):
            m = r[name]
            print(f"{r['attn_implementation']:6s} {name:9s} {m['s_per_step']:9.4f} {m['tokens_per_s']:10.1f}")
        m = r["sample"]
        print(f"{r['attn_implementation']:6s} {'sample':9s} {m['s_per_call']:9.4f} {m['tokens_per_s']:10.1f}")


if __name__ == "__main__":
    main()
