"""The decode GEMV's block configs timed as a step runs them: back to back inside a CUDA graph.

    python bench/gpu_gemv_graph.py [--out DIR] [--layers 16] [--budget 200]

bench/gpu_gemv.py times single calls after an L2 flush, so each includes a launch and a
ramp that a replayed graph hides; the profile (bench/gpu_profile.py) showed the two
pictures disagree for the small matrices (1B's qkv GEMV: 9.9 us alone, 8.3 us in the
graph; o: 8.3 alone, 4.3 in the graph). Here each of the 1B step's four fused GEMVs is
captured --layers times in a row on distinct weights (so nothing is served from L2), the
graph replayed, and the time per launch is the replay time / --layers. First the default
config, then one-knob neighbours and a grid of tiles, within --budget seconds in all.

Prints, per GEMV, the default's us and GB/s and the best configs found; writes
gemv_graph.json into --out.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import replay_ms  # noqa: E402

EPS = 1e-5
H, HEADS, KV_HEADS, HEAD_DIM, F = 2048, 32, 8, 64, 8192       # Llama-3.2-1B


def make_case(name: str, layers: int, dev):
    """(weight bytes per launch, run(cfg) that launches the GEMV `layers` times, the default)."""
    from rustinfer.kernels.triton import gemv as G

    bf = torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)

    def weights(n, k):
        return [torch.randn(n, k, device=dev, dtype=bf, generator=g) * 0.02 for _ in range(layers)]

    if name == "qkv+norm+rope":
        rows = (HEADS + 2 * KV_HEADS) * HEAD_DIM
        ws, x = weights(rows, H), torch.randn(1, H, device=dev, dtype=bf, generator=g)
        nw = torch.ones(H, device=dev, dtype=bf)
        q = torch.empty(1, HEADS * HEAD_DIM, device=dev, dtype=bf)
        cos = torch.rand(1024, HEAD_DIM // 2, device=dev)
        sin = torch.rand(1024, HEAD_DIM // 2, device=dev)
        kc = torch.zeros(8, 16, KV_HEADS, HEAD_DIM, device=dev, dtype=bf)
        vc = torch.zeros_like(kc)
        pos = torch.tensor([500], device=dev)
        slot = torch.tensor([3], device=dev)

        def run(cfg):
            for w in ws:
                G.gemv_rope_kv(x, w, q, pos, slot, cos, sin, kc, vc, heads=HEADS,
                               kv_heads=KV_HEADS, head_dim=HEAD_DIM, norm_weight=nw, eps=EPS,
                               config=cfg)
        return rows * H * 2, run, G.gemv_config(rows // 2, H, 1, swiglu=True)
    if name == "gate_up+norm+swiglu":
        ws, x = weights(2 * F, H), torch.randn(1, H, device=dev, dtype=bf, generator=g)
        nw = torch.ones(H, device=dev, dtype=bf)
        out = torch.empty(1, F, device=dev, dtype=bf)

        def run(cfg):
            for w in ws:
                G.gemv(x, w, out, norm_weight=nw, eps=EPS, swiglu=True, config=cfg)
        return 2 * F * H * 2, run, G.gemv_config(F, H, 1, swiglu=True)
    n, k = {"o+residual": (H, H), "down+residual": (H, F)}[name]
    ws, x = weights(n, k), torch.randn(1, k, device=dev, dtype=bf, generator=g)
    res = torch.randn(1, n, device=dev, dtype=bf, generator=g)

    def run(cfg):
        for w in ws:
            G.gemv(x, w, res, residual=res, config=cfg)
    return n * k * 2, run, G.gemv_config(n, k, 1)


def graph_us(run, cfg, layers: int) -> float:
    """Microseconds per launch of `layers` launches captured in one graph, replayed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run(cfg)                                       # compile + warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(cfg)
    for _ in range(3):
        graph.replay()
    us = replay_ms(graph, 15) * 1e3 / layers
    del graph
    return us


def candidates(default, name: str):
    """The default's one-knob neighbours, then a grid of tiles (8 warps, 1 stage)."""
    from rustinfer.kernels.triton.gemv import GemvConfig

    seen, out = {tuple(default)}, []

    def add(c):
        c = GemvConfig(*c)
        if tuple(c) not in seen and c.block_n >= 1 and c.block_k >= 64:
            seen.add(tuple(c))
            out.append(c)

    bn, bk, w, s = default
    for c in ((bn * 2, bk, w, s), (bn // 2, bk, w, s), (bn, bk * 2, w, s), (bn, bk // 2, w, s),
              (bn, bk, 4 if w == 8 else 8, s), (bn, bk, w, 2), (bn, bk, w, 3),
              (bn // 2, bk * 2, w, s), (bn * 2, bk // 2, w, s)):
        add(c)
    max_k = 8192 if name == "down+residual" else 2048
    for bn2, bk2 in itertools.product((1, 2, 4, 8, 16), (256, 512, 1024, 2048, 4096, 8192)):
        if bk2 <= max_k and 1024 <= bn2 * bk2 <= 32768:
            add((bn2, bk2, 8, 1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--budget", type=float, default=200.0, help="seconds for the whole sweep")
    ap.add_argument("--configs", default=None,
                    help='JSON {"gemv name": [[block_n, block_k, warps, stages], ...]}: time '
                         "only these (and the default) for the GEMVs named")
    args = ap.parse_args()
    from rustinfer.kernels.triton.gemv import GemvConfig

    only = json.loads(args.configs) if args.configs else None
    dev = torch.device("cuda")
    names = ["qkv+norm+rope", "o+residual", "gate_up+norm+swiglu", "down+residual"]
    if only is not None:
        names = [n for n in names if n in only]
    started = time.perf_counter()
    results = {}
    print(f"in-graph GEMV configs, {torch.cuda.get_device_name()}, {args.layers} launches "
          "per graph on distinct weights (us per launch)")
    for i, name in enumerate(names):
        nbytes, run, default = make_case(name, args.layers, dev)
        us = graph_us(run, default, args.layers)
        rows = [(tuple(default), us)]
        share = (args.budget - (time.perf_counter() - started)) / (len(names) - i)
        case_end = time.perf_counter() + share
        tries = (candidates(default, name) if only is None
                 else [GemvConfig(*c) for c in only[name]])
        for cfg in tries:
            if time.perf_counter() > case_end:
                break
            try:
                rows.append((tuple(cfg), graph_us(run, cfg, args.layers)))
            except Exception as e:                 # a config Triton cannot compile: skip it
                print(f"  {name} {tuple(cfg)}: {type(e).__name__}")
        best = sorted(rows, key=lambda r: r[1])[:4 if only is None else len(rows)]
        results[name] = dict(bytes=nbytes, default=list(default), default_us=us,
                             tried=len(rows), best=[[list(c), t] for c, t in best])
        print(f"{name:<20} default {tuple(default)} {us:6.2f} us {nbytes / us / 1e3:6.0f} GB/s; "
              f"{len(rows)} configs; best: " + ", ".join(
                  f"{c} {t:.2f} us ({nbytes / t / 1e3:.0f} GB/s)" for c, t in best), flush=True)
        if args.out:
            Path(args.out, "gemv_graph.json").write_text(json.dumps(results, indent=1))
        del run
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
