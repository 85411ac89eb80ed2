#!/usr/bin/env python3
"""TRL + PEFT CPU baseline for gaplab's LoRA DPO step (`gaplab bench --lora 16 --only dpo`).

Model: LlamaForCausalLM with SmolLM2-135M's shape (hidden 576, intermediate 1536, 30 layers,
9 heads / 3 kv heads, vocab 49152, tied embeddings, rope theta 100000), random init (seed 0),
float32. attn_implementation "sdpa" (transformers' default) unless --attn says otherwise.

Adapters: PEFT get_peft_model(LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
lora_dropout=0.0, task_type="CAUSAL_LM")), the same adapters gaplab's `--lora 16` trains.

One step is TRL's own DPO step: a DPOTrainer (beta 0.1, loss_type "sigmoid", no ref model, so
the reference is the base under PEFT's disabled adapters) is built around the PEFT model, and
each timed step calls `trainer.compute_loss(model, batch)` (policy forward through TRL's fused
LM head, reference forward under no_grad with the adapters off, sigmoid loss), then
`loss.backward()`, torch AdamW on the adapter parameters (lr 1e-4, weight decay 0.01, as
gaplab's bench) and `zero_grad(set_to_none=True)`. The trainer's own loop (accelerate,
scheduler, logging) is not timed: only what one optimizer step costs.

Batch: P pairs = 2P rows (chosen rows first, then rejected), each prompt A + response B random
tokens, no padding; the completion mask covers the response. Tokens/s counts 2P*(A+B).

--gradient-checkpointing calls model.gradient_checkpointing_enable() (non-reentrant, TRL's
default) and enable_input_require_grads() (which PEFT needs with a frozen embedding).

Reports the median step time over --iters after --warmup and the process's peak resident
memory (resource.getrusage ru_maxrss), so run each configuration in its own process.

Usage (from the repository root):
    python3 benches/peft_lora_step.py --pairs 2 --prompt-len 64 --response-len 192 \
        --iters 3 --warmup 1 [--gradient-checkpointing] [--json]
"""

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
import warnings

import torch

VOCAB = 49152


def build_model(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(cfg).float()


def tiny_tokenizer():
    """A word-level tokenizer built in memory: DPOTrainer needs a processing class to prepare
    its (unused) dataset; the timed batches are token ids built directly."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "c": 5}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def batch(pairs: int, prompt_len: int, response_len: int) -> dict:
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(3, VOCAB, (pairs, prompt_len), generator=g)
    chosen = torch.randint(3, VOCAB, (pairs, response_len), generator=g)
    rejected = torch.randint(3, VOCAB, (pairs, response_len), generator=g)
    ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)], 0)
    completion = torch.zeros_like(ids)
    completion[:, prompt_len:] = 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--response-len", type=int, default=192)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import datasets
    import peft
    import transformers
    import trl
    from peft import LoraConfig, get_peft_model
    from trl import DPOConfig, DPOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    model = build_model(args.attn)
    model = get_peft_model(
        model,
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"),
    )
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]

    out = tempfile.mkdtemp(prefix="peft-lora-step-")
    cfg = DPOConfig(
        output_dir=out,
        beta=0.1,
        loss_type=["sigmoid"],
        learning_rate=1e-4,
        weight_decay=0.01,
        per_device_train_batch_size=args.pairs,
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        report_to="none",
        use_cpu=True,
        max_length=None,
        save_strategy="no",
        logging_strategy="no",
    )
    data = datasets.Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]})
    trainer = DPOTrainer(model=model, ref_model=None, args=cfg, train_dataset=data, processing_class=tiny_tokenizer())
    assert trainer.ref_model is None, "the reference must be the base with the adapters off"
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01)
    inputs = batch(args.pairs, args.prompt_len, args.response_len)
    policy = trainer.model

    def step():
        loss = trainer.compute_loss(policy, inputs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(max(args.iters, 1)):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    rows = 2 * args.pairs
    tokens = rows * (args.prompt_len + args.response_len)
    report = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "threads": torch.get_num_threads(),
        "attn_implementation": args.attn,
        "gradient_checkpointing": args.gradient_checkpointing,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in trainable),
        "pairs": args.pairs,
        "rows": rows,
        "prompt_len": args.prompt_len,
        "response_len": args.response_len,
        "iters": args.iters,
        "warmup": args.warmup,
        "median_s": median,
        "min_s": min(times),
        "tokens_per_s": tokens / median,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        gc = "on" if args.gradient_checkpointing else "off"
        print(
            f"TRL {trl.__version__} + PEFT {peft.__version__} LoRA r16 DPO step · {args.attn} · recompute {gc} · "
            f"{report['threads']} threads · {rows} rows x {args.prompt_len + args.response_len} tokens\n"
            f"median {median:.3f} s  min {min(times):.3f} s  {report['tokens_per_s']:.0f} tokens/s  "
            f"peak resident memory {report['peak_rss_bytes'] / 2**30:.2f} GiB"
        )


if __name__ == "__main__":
    main()
