"""Aggregate decode throughput of the engine with 1, 4 and 16 concurrent requests.

    .venv/bin/python bench/engine.py [--model M] [--target auto|cpu|cpu-torch] [--tokens 64]

Decode on a CPU is memory-bound: one pass over the weights serves the whole
batch, so aggregate tokens/s should grow almost linearly with the batch until
compute saturates. Prints tokens/s per concurrency and the ratio to 1 request,
plus the bandwidth roofline for one sequence (weight bytes per token / measured
copy bandwidth).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def measure_bandwidth(nbytes: int = 1 << 29) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best                 # read + write


def run(llm, concurrency: int, tokens: int, prompt_len: int) -> tuple[float, float]:
    """Aggregate decode tok/s and the median decode step (prefill steps not timed)."""
    from rustinfer.runtime.bench_cmd import run_requests

    r = run_requests(llm, concurrency, prompt_len, tokens, seed=concurrency)
    return r["generated"] / sum(r["steps"]), statistics.median(r["steps"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--target", default="auto", help="auto (the default: cuda with a GPU, else cpu), cpu, cpu-torch, ...")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quant", help="cpu target only: none | int4 | int8")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from rustinfer.runtime import LLM

    extra = {"quant": args.quant} if args.quant else {}
    llm = LLM(model=args.model, target=args.target, max_num_seqs=16, max_num_batched_tokens=512,
              max_model_len=1024, **extra)
    weight_bytes = sum(t.numel() * t.element_size() for t in llm.executor.weights.values()) \
        if hasattr(llm.executor, "weights") else 0
    bw = measure_bandwidth()
    print(f"model {llm.model_path.name}, target {args.target} {args.quant or ''}, "
          f"threads {args.threads}, "
          f"{args.tokens} tokens per request")
    if weight_bytes:
        print(f"weights {weight_bytes / 1e6:.0f} MB read per step; copy bandwidth "
              f"{bw / 1e9:.1f} GB/s -> roofline {bw / weight_bytes:.1f} steps/s")
    run(llm, 1, 4, args.prompt_len)                          # warm-up
    base = None
    for c in (1, 4, 16):
        tps, step = run(llm, c, args.tokens, args.prompt_len)
        base = base or tps
        print(f"concurrency {c:>2}: {tps:8.1f} tok/s aggregate, median step {step * 1e3:6.1f} ms, "
              f"{tps / base:4.1f}x of 1 request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
