"""Paged decode attention's split count, timed as a step runs it: inside a CUDA graph.

    python bench/gpu_attention.py [--out DIR] [--contexts 512,4096] [--layers 16]

decode_attention.num_splits picks the splits per (sequence, kv head) on the host from
the batch, the kv heads and the SM count (fixed per graph bucket). Here, with the 1B
model's heads (32 query, 8 kv, dim 64) and 16-token cache blocks, each batch size and
context is captured --layers times in a row on distinct caches (as a step's layers read
them, nothing served from L2), for a list of split counts; the graph is replayed and the
time per layer (attention + merge) reported in us and GB/s of K/V read, with the count
num_splits picks now marked. Writes attention.json into --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import replay_ms  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 64, 16


def time_case(batch: int, ctx: int, splits: int, layers: int, block_n: int | None = None,
              num_warps: int | None = None, num_stages: int | None = None) -> float:
    """us per layer: `layers` launches of decode attention (+ merge) in one graph."""
    from rustinfer.kernels.triton import decode_attention as D

    block_n, num_warps = block_n or D.BLOCK_N, num_warps or D.NUM_WARPS
    dev, bf = "cuda", torch.bfloat16
    per_seq = -(-ctx // BLOCK)
    caches = [(torch.randn(batch * per_seq, BLOCK, KV_HEADS, HEAD_DIM, device=dev, dtype=bf),
               torch.randn(batch * per_seq, BLOCK, KV_HEADS, HEAD_DIM, device=dev, dtype=bf))
              for _ in range(layers)]
    # scrambled block order, as a running server's tables are
    table = torch.randperm(batch * per_seq, device=dev).view(batch, per_seq)
    lens = torch.full((batch,), ctx, device=dev, dtype=torch.long)
    q = torch.randn(batch, HEADS * HEAD_DIM, device=dev, dtype=bf)
    out = torch.empty_like(q)
    po = torch.empty(batch * HEADS * splits * HEAD_DIM, device=dev)
    plse = torch.empty(batch * HEADS * splits, device=dev)

    def run():
        for kc, vc in caches:
            D.decode_attention(q, kc, vc, table, lens, out, po, plse, heads=HEADS,
                               kv_heads=KV_HEADS, head_dim=HEAD_DIM, scale=HEAD_DIM ** -0.5,
                               splits=splits, block_n=block_n, num_warps=num_warps,
                               num_stages=num_stages)

    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return 1e3 * replay_ms(graph, reps=32) / layers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".")
    p.add_argument("--batches", default="1,8,32,128")
    p.add_argument("--contexts", default="512,4096")
    p.add_argument("--splits", default="1,2,4,8,16,32,64")
    p.add_argument("--layers", type=int, default=16)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_attention.py: no CUDA device", file=sys.stderr)
        return 2
    from rustinfer.kernels.triton import decode_attention as D

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows, lines = [], [f"decode attention + merge per layer, {torch.cuda.get_device_name()} "
                       f"({sms} SMs); heads {HEADS}/{KV_HEADS}, dim {HEAD_DIM}"]
    for ctx in map(int, args.contexts.split(",")):
        for batch in map(int, args.batches.split(",")):
            if batch * ctx > 32 * 4096:          # 1 GB of cache per layer: enough
                continue
            kv_bytes = batch * ctx * KV_HEADS * HEAD_DIM * 2 * 2
            chosen = D.num_splits(batch, KV_HEADS, ctx, sms)
            cells = []
            for s in sorted(set(map(int, args.splits.split(","))) | {chosen}):
                if s > -(-ctx // D.BLOCK_N):
                    continue
                us = time_case(batch, ctx, s, args.layers)
                rows.append(dict(batch=batch, ctx=ctx, splits=s, us=us, chosen=s == chosen,
                                 gbs=kv_bytes / us / 1e3))
                cells.append(f"{s}{'*' if s == chosen else ''}: {us:.1f} us "
                             f"({kv_bytes / us / 1e3:.0f} GB/s)")
            lines.append(f"ctx {ctx:5d} bs {batch:3d}: " + ", ".join(cells))
            print(lines[-1], flush=True)
            # the tile and warps, at the chosen count and the best one
            best = min((r for r in rows if r["batch"] == batch and r["ctx"] == ctx),
                       key=lambda r: r["us"])
            cells = []
            for s in sorted({chosen, best["splits"]}):
                for block_n, warps in ((32, 4), (64, 4), (64, 8), (128, 2), (128, 4)):
                    if s > -(-ctx // block_n):
                        continue
                    us = time_case(batch, ctx, s, args.layers, block_n, warps)
                    rows.append(dict(batch=batch, ctx=ctx, splits=s, us=us, block_n=block_n,
                                     num_warps=warps, gbs=kv_bytes / us / 1e3))
                    cells.append(f"{s}/{block_n}/{warps}w: {us:.1f}")
            lines.append("      (splits/keys per tile/warps) " + ", ".join(cells))
            print(lines[-1], flush=True)
            # the pipeline's depth over the key tiles (Triton's default is 3 on NVIDIA):
            # at batch 32 the kernel moved ~2.3 TB/s, half the HBM's rate, at every tile
            cells = []
            for block_n, warps in ((D.BLOCK_N, D.NUM_WARPS), (128, 4)):
                for stages in (1, 2, 4):
                    if best["splits"] > -(-ctx // block_n):
                        continue
                    us = time_case(batch, ctx, best["splits"], args.layers, block_n, warps, stages)
                    rows.append(dict(batch=batch, ctx=ctx, splits=best["splits"], us=us,
                                     block_n=block_n, num_warps=warps, num_stages=stages,
                                     gbs=kv_bytes / us / 1e3))
                    cells.append(f"{block_n}/{warps}w/{stages}st: {us:.1f}")
            lines.append(f"      (keys per tile/warps/stages at {best['splits']} splits) "
                         + ", ".join(cells))
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention.json").write_text(json.dumps(rows, indent=1))
    print(f"(* = the split count num_splits picks now; defaults {D.BLOCK_N} keys per tile, "
          f"{D.NUM_WARPS} warps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
