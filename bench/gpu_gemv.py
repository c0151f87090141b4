"""Triton GEMV against cuBLAS at Llama-3.2-1B's decode shapes, and the 1B bs=1 TPOT with each.

    python bench/gpu_gemv.py [--out DIR] [--rows 1] [--iters 200] [--steps 256] [--sweep]

In one run, on one card:
1. each linear of Llama-3.2-1B (qkv, o, gate+up, down, LM head) at --rows rows, bf16:
   torch.mm (cuBLAS) and the Triton GEMV (gemv_config's choice), each the median of
   --iters calls timed with CUDA events after warm-up, with L2 flushed before every
   call (a decode step streams 2.5 GB of weights, so none of them is in L2 when its
   GEMM runs); GB/s = bytes read + written / time; ratio = cuBLAS time / GEMV time
   (> 1: the GEMV is faster). "per step" adds them up as one decode step does
   (16 x (qkv + o + gate+up + down) + LM head), the number the profile's 0.81 ms of
   GEMMs compares with. --sweep also times the neighbours of each default config
   (one knob halved or doubled), so the next tuning starts from measurements.
   At rows=1 also the GEMV's fused variants (qkv+norm, gate_up+norm+swiglu, o+residual,
   down+residual, lm_head+norm), each against the unfused torch sequence it replaces
   (torch rms_norm, torch.mm, silu(gate) * up / torch.add: the "cuBLAS" columns of those
   rows), and against the cuda target's own unfused kernels (Triton rms_norm / swiglu,
   cuBLAS, torch.add; a plan folds the residual add into its add_rms_norm, so that
   column slightly over-counts the residual rows); "per step, fused" adds them up;
2. the 1B bs=1 decode TPOT at context 512 (engine-style step, and graph replay alone),
   once on cuBLAS and once with the GEMV: triton_ops.TRITON_GEMV is flipped before the
   executor captures its graphs, which is what RUSTINFER_TRITON_GEMV=1 does at import;
   plus how far apart the two runs' logits are for one decode step after a prefill;
3. the same TPOT with programmatic dependent launch (PDL_VARIANTS): the GEMVs launched
   early, and decode attention + merge launched early too (attention; the default), each
   A/B against the GEMV without PDL.
Writes gemv.json and gemv.md into --out (after each part: a timeout keeps what ran).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import (BLOCK, CTX, MODELS, REPO, RandomCheckpoint, hbm_bandwidth,  # noqa: E402
                 overlapped_tpot_ms, replay_ms)

SHAPES = {"qkv": (3072, 2048), "o": (2048, 2048), "gate_up": (16384, 2048),
          "down": (2048, 8192), "lm_head": (128256, 2048)}
PER_STEP = {"qkv": 16, "o": 16, "gate_up": 16, "down": 16, "lm_head": 1}    # 1B: 16 layers
# Fused GEMVs at rows=1: name -> (linear of SHAPES, norm folded in, swiglu, residual added)
FUSED = {"qkv+norm": ("qkv", True, False, False),
         "gate_up+norm+swiglu": ("gate_up", True, True, False),
         "o+residual": ("o", False, False, True), "down+residual": ("down", False, False, True),
         "lm_head+norm": ("lm_head", True, False, False)}
EPS = 1e-5


# Calls are queued in chunks of CHUNK behind a GPU-side sleep of SLEEP_CYCLES (~5 ms at the
# H100/H200's <= 2 GHz: 20 calls' host time at <= 250 us each), so the GPU never waits on the
# host inside an event pair. Without it a ~10 us kernel whose launch costs the host more than
# the GPU's flush + kernel time is timed with the launcher's Python overhead (seen on an H200,
# 2026-11-26: the 1B qkv / o GEMVs read 19-29 us without the sleep, 9.2 / 8.0 us with it).
CHUNK, SLEEP_CYCLES = 20, 10_000_000


def median_time(fn, iters: int, flush: torch.Tensor) -> float:
    """Seconds: the median of `iters` event-timed calls, each after an L2 flush (GPU time:
    the host queues the calls ahead, see CHUNK)."""
    for _ in range(5):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i, (s, e) in enumerate(zip(starts, ends)):
        if i % CHUNK == 0:
            torch.cuda._sleep(SLEEP_CYCLES)
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3


def neighbours(cfg, k: int):
    """The default config with one knob halved or doubled (within sane bounds)."""
    from rustinfer.kernels.triton import next_pow2

    out = []
    for bn in (cfg.block_n // 2, cfg.block_n * 2):
        out.append(cfg._replace(block_n=bn))
    for bk in (cfg.block_k // 2, cfg.block_k * 2):
        out.append(cfg._replace(block_k=bk, num_stages=1 if bk >= k else cfg.num_stages))
    out.append(cfg._replace(num_warps=4 if cfg.num_warps == 8 else 8))
    if k > cfg.block_k:
        if cfg.dot:                      # tensor cores: how many K tiles in flight
            out += [cfg._replace(num_stages=st) for st in (2, 4) if st != cfg.num_stages]
        else:
            out.append(cfg._replace(num_stages=1 if cfg.num_stages > 1 else 2))
            out.append(cfg._replace(num_stages=3))
    # tl.dot needs >= 16 rows of W a tile; the FMA path keeps tiles of <= 32 rows
    low, high = (16, 128) if cfg.dot else (1, 32)
    return [c for c in dict.fromkeys(out) if low <= c.block_n <= high and 16 <= c.block_k
            <= next_pow2(k) and c.block_n * c.block_k <= 32768]


def bench_linears(rows: list[int], iters: int, sweep: bool,
                  sweep_rows: set[int] | None = None) -> list[dict]:
    from rustinfer.kernels.triton.gemv import FMA_ROWS, gemv, gemv_config

    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")     # 5x the H200's L2
    results = []
    swept = lambda m: sweep and (sweep_rows is None or m in sweep_rows)  # noqa: E731
    for m in rows:
        for name, (n, k) in SHAPES.items():
            w = (0.02 * torch.randn(n, k, device="cuda")).to(torch.bfloat16)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            nbytes = 2 * (n * k + m * k + m * n)
            want = torch.mm(x, w.t())
            scale = want.float().abs().max().item()
            t_cublas = median_time(lambda: torch.mm(x, w.t(), out=out), iters, flush)
            cfg = gemv_config(n, k, m)
            t_gemv = median_time(lambda: gemv(x, w, out), iters, flush)
            err = (out.float() - want.float()).abs().max().item() / scale
            r = dict(linear=name, n=n, k=k, rows=m, cublas_us=1e6 * t_cublas,
                     cublas_gb_s=nbytes / t_cublas / 1e9, gemv_us=1e6 * t_gemv,
                     gemv_gb_s=nbytes / t_gemv / 1e9, ratio=t_cublas / t_gemv,
                     config=list(cfg), rel_err=err)
            # The sweep is for the bs=1 step's FMA configs and the tensor-core ones above
            # FMA_ROWS rows (the batch-32 step's GEMMs are cuBLAS until those beat it);
            # compiles cost time, so not for the rows in between.
            if swept(m) and (m == 1 or m > FMA_ROWS):
                r["sweep"] = []
                for alt in neighbours(cfg, k):
                    t = median_time(lambda: gemv(x, w, out, config=alt), max(50, iters // 4),
                                    flush)
                    ok = (out.float() - want.float()).abs().max().item() <= 2e-2 * scale
                    r["sweep"].append(dict(config=list(alt), us=1e6 * t,
                                           gb_s=nbytes / t / 1e9, ok=ok))
            print(json.dumps(r), flush=True)
            results.append(r)
    for m in rows:
        if m == 1 or m > FMA_ROWS:          # the FMA path at 1 row, tensor cores above 4
            results += bench_fused(iters, flush, m, swept(m))
    return results


def torch_rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """RMSNorm with torch ops (fp32 math, rounded to x's dtype), as an unfused step does it."""
    if hasattr(torch.nn.functional, "rms_norm"):
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), w, EPS)
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS) * w.float()).to(x.dtype)


def bench_fused(iters: int, flush: torch.Tensor, m: int = 1, sweep: bool = False) -> list[dict]:
    """The fused GEMVs at m rows vs the unfused torch sequence each replaces (and vs the
    cuda target's unfused kernels): same timing as the plain rows. sweep: above FMA_ROWS,
    also each default's neighbours (the tensor-core path's fused configs)."""
    from rustinfer.kernels.triton import rms_norm as triton_rms
    from rustinfer.kernels.triton import swiglu as triton_swiglu
    from rustinfer.kernels.triton.gemv import FMA_ROWS, gemv, gemv_config

    results = []
    for name, (linear, norm, swiglu, residual) in FUSED.items():
        n, k = SHAPES[linear]
        f = n // 2 if swiglu else n                     # out's width
        w = (0.02 * torch.randn(n, k, device="cuda")).to(torch.bfloat16)
        x = (3 * torch.randn(m, k, device="cuda")).to(torch.bfloat16)
        nw = (1 + 0.1 * torch.randn(k, device="cuda")).to(torch.bfloat16) if norm else None
        res = torch.randn(m, f, device="cuda", dtype=torch.bfloat16)
        out = res.clone() if residual else torch.empty(m, f, device="cuda", dtype=torch.bfloat16)
        xn, y = torch.empty_like(x), torch.empty(m, n, device="cuda", dtype=torch.bfloat16)

        def unfused_torch():
            h = torch_rms_norm(x, nw) if norm else x
            if swiglu:
                torch.mm(h, w.t(), out=y)
                torch.mul(torch.nn.functional.silu(y[:, :f]), y[:, f:], out=out)
            elif residual:
                torch.mm(h, w.t(), out=y)
                torch.add(out, y, out=out)              # the residual stream, in place
            else:
                torch.mm(h, w.t(), out=out)

        def unfused_plan():                             # the cuda target's kernels
            h = x
            if norm:
                triton_rms.rms_norm(x, nw, xn, eps=EPS)
                h = xn
            if swiglu:
                torch.mm(h, w.t(), out=y)
                triton_swiglu.swiglu(y, out)
            elif residual:
                torch.mm(h, w.t(), out=y)
                torch.add(out, y, out=out)
            else:
                torch.mm(h, w.t(), out=out)

        def fused(config=None):
            gemv(x, w, out, norm_weight=nw, eps=EPS, swiglu=swiglu,
                 residual=out if residual else None, config=config)

        # correctness once, from the same residual: fused vs unfused torch (bf16 roundings)
        out.copy_(res)
        unfused_torch()
        want = out.float().clone()
        out.copy_(res)
        fused()
        got = out.float().clone()
        scale = want.abs().max().item()
        t_torch = median_time(unfused_torch, iters, flush)
        t_plan = median_time(unfused_plan, iters, flush)
        t_fused = median_time(fused, iters, flush)
        nbytes = 2 * (n * k + m * k + m * f * (2 if residual else 1) + (k if norm else 0))
        r = dict(linear=name, n=n, k=k, rows=m, cublas_us=1e6 * t_torch,
                 cublas_gb_s=nbytes / t_torch / 1e9, gemv_us=1e6 * t_fused,
                 gemv_gb_s=nbytes / t_fused / 1e9, ratio=t_torch / t_fused,
                 plan_unfused_us=1e6 * t_plan, plan_ratio=t_plan / t_fused,
                 config=list(gemv_config(f, k, m, swiglu=swiglu)),
                 rel_err=(got - want).abs().max().item() / scale)
        if sweep and m > FMA_ROWS:
            r["sweep"] = []
            for alt in neighbours(gemv_config(f, k, m, swiglu=swiglu), k):
                out.copy_(res)
                fused(alt)
                ok = (out.float() - want).abs().max().item() <= 2e-2 * scale
                t = median_time(lambda: fused(alt), max(50, iters // 4), flush)
                r["sweep"].append(dict(config=list(alt), us=1e6 * t, gb_s=nbytes / t / 1e9,
                                       ok=ok))
        print(json.dumps(r), flush=True)
        results.append(r)
    return results


# The programmatic-dependent-launch variants bench_tpot times after the GEMV without it:
# the GEMVs alone, and with decode attention and its merge launched early too (the
# default on compute capability 9+). Measured and dropped, 2026-11-27: each GEMV program
# loading its first weight tile before gdc_wait (0.26 ms slower replayed), and GEMVs
# letting their dependents launch before their K loop (0.01-0.05 ms slower). Measured and
# dropped in a later session the same day (bench/RESULTS.md, runs W-Z): the o projection
# prefetching its rows into L2 while attention runs (0.817-0.824 vs 0.814 ms), each GEMV
# prefetching the next one's first 4-16 MB after its K loop (0.863-0.998), and decode
# attention merging its splits in its last program (0.822).
PDL_VARIANTS = (dict(), dict(attention_pdl=True))


def variant_name(t: dict) -> str:
    """A bench_tpot result's row name."""
    name = "Triton GEMV" if t["gemv"] else "cuBLAS (the fused ops in parts)"
    if t.get("pdl"):
        name += " + PDL" + ", L2 prefetch" * bool(t.get("prefetch")) \
            + ", attention" * bool(t.get("attention_pdl"))
    return name


def bench_tpot(use_gemv: bool, steps: int, pdl: bool = False, prefetch: bool = False,
               attention_pdl: bool = False) -> tuple[dict, torch.Tensor]:
    """bs=1 decode on Llama-3.2-1B (random bf16 weights) with or without the GEMV (and its
    programmatic dependent launch: with L2 prefetches; decode attention launched with PDL
    too): timings, and the logits of one decode step after a 128-token prefill."""
    from rustinfer.kernels.triton import decode_attention as attention_mod
    from rustinfer.kernels.triton import gemv as gemv_mod
    from rustinfer.compiler.build import CompileOptions, compile_model
    from rustinfer.compiler.spec import SPECS_DIR
    from rustinfer.compiler.step_inputs import StepInputs
    from rustinfer.kernels import triton_ops
    from rustinfer.runtime.cuda_executor import CudaExecutor
    from rustinfer.runtime.sampling import greedy_argmax

    config = json.loads((REPO / "bench" / "models" / MODELS["1b"] / "config.json").read_text())
    ckpt = RandomCheckpoint(config)                      # same seed: same weights both runs
    folder, _ = compile_model(SPECS_DIR / "llama3.yaml", config, ckpt,
                              CompileOptions(target="cuda", max_tokens=1024))
    max_len = CTX + steps + 16
    saved, triton_ops.TRITON_GEMV = triton_ops.TRITON_GEMV, use_gemv
    saved_pdl, gemv_mod.PDL = gemv_mod.PDL, pdl
    saved_prefetch, gemv_mod.PDL_PREFETCH = gemv_mod.PDL_PREFETCH, prefetch
    saved_attention, attention_mod.PDL = attention_mod.PDL, attention_pdl
    try:
        ex = CudaExecutor(folder / "plan.py", ckpt, num_blocks=-(-max_len // BLOCK) + 8,
                          block_size=BLOCK, max_model_len=max_len, max_batch=1)
        table = list(range(-(-max_len // BLOCK)))
        prompt = torch.randint(0, config["vocab_size"], (128,),
                               generator=torch.Generator().manual_seed(0)).tolist()
        ex.forward(StepInputs.for_sequences([(prompt, 0, table)], BLOCK))     # cuBLAS: > 16 rows
        logits = ex.forward(StepInputs.for_sequences([([7], 128, table)], BLOCK))[0]
        tok, times = 1, []
        for i in range(steps):
            t0 = time.perf_counter()            # the engine's layout + ours + reading tokens
            step = StepInputs.for_sequences([([tok], CTX + i, table)], BLOCK)
            tok = greedy_argmax(ex.forward_device(step)).tolist()[0]
            times.append(time.perf_counter() - t0)
        r = dict(gemv=use_gemv, pdl=pdl, prefetch=pdl and prefetch,
                 attention_pdl=attention_pdl,
                 tpot_ms=1e3 * statistics.median(times[3:]), replay_ms=replay_ms(ex.graphs[1]),
                 overlap_ms=overlapped_tpot_ms(ex, table, steps))
    finally:
        triton_ops.TRITON_GEMV = saved
        gemv_mod.PDL = saved_pdl
        gemv_mod.PDL_PREFETCH = saved_prefetch
        attention_mod.PDL = saved_attention
    del ex
    gc.collect()
    torch.cuda.empty_cache()
    return r, logits


def bench_batched(batches=(1, 8, 32), reps: int = 64) -> list[dict]:
    """Replay ms of the 1B decode step at each batch, with the cuda target's fuse_norm_linear
    and without it (the plan before it existed), in one run: above one row the fused ops
    run in parts (cuBLAS addmm copies the residual first), so this shows what they cost
    there."""
    from rustinfer.compiler.build import CompileOptions, compile_model
    from rustinfer.compiler.spec import SPECS_DIR
    from rustinfer.compiler.step_inputs import StepInputs
    from rustinfer.kernels import triton_ops
    from rustinfer.runtime.cuda_executor import CudaExecutor

    config = json.loads((REPO / "bench" / "models" / MODELS["1b"] / "config.json").read_text())
    ckpt = RandomCheckpoint(config)
    max_len = CTX + 16
    blocks = -(-max_len // BLOCK)
    out = []
    # (passes disabled, rows up to which GEMMs take the Triton GEMV): the default plan, the
    # plan before fuse_norm_linear, and every bucket up to 32 rows on the GEMV (tensor cores
    # above 4 rows: RUSTINFER_TRITON_GEMV_ROWS=32)
    saved = triton_ops.GEMV_MAX_ROWS
    for disable, gemv_rows in (((), saved), (("fuse_norm_linear",), saved), ((), 32)):
        folder, _ = compile_model(SPECS_DIR / "llama3.yaml", config, ckpt,
                                  CompileOptions(target="cuda", max_tokens=1024,
                                                 disable=disable))
        triton_ops.GEMV_MAX_ROWS = gemv_rows
        try:
            ex = CudaExecutor(folder / "plan.py", ckpt, num_blocks=blocks * max(batches) + 8,
                              block_size=BLOCK, max_model_len=max_len, max_batch=max(batches))
            row = dict(fused=not disable, gemv_rows=gemv_rows)
            for b in batches:
                tables = [list(range(i * blocks, (i + 1) * blocks)) for i in range(b)]
                step = StepInputs.for_sequences([([1], CTX, t) for t in tables], BLOCK)
                ex.forward_device(step)                    # fills the bucket's static inputs
                row[f"replay_bs{b}_ms"] = replay_ms(ex.graphs[ex.bucket_for(step)], reps)
        finally:
            triton_ops.GEMV_MAX_ROWS = saved
        out.append(row)
        del ex
        gc.collect()
        torch.cuda.empty_cache()
    return out


def batched_table(batched: list[dict]) -> str:
    if not batched:
        return ""
    cols = [k for k in batched[0] if k.startswith("replay_bs")]
    rows = ["", "", "| Llama-3.2-1B plan, replay ms | " + " | ".join(
        c.replace("replay_", "").replace("_ms", "") for c in cols) + " |",
        "|---|" + "---|" * len(cols)]
    for r in batched:
        name = "with fuse_norm_linear" if r["fused"] else "without (add_rms_norm, swiglu)"
        if r.get("gemv_rows", 1) > 1:
            name += f", Triton GEMV up to {r['gemv_rows']} rows"
        rows.append(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    return "\n".join(rows)


def table(device: str, bandwidth: float, linears: list[dict], tpot: list[dict],
          logits_diff: dict | None) -> str:
    rows = [f"Device: {device}; copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write); "
            f"{time.strftime('%Y-%m-%d')}", "",
            "| linear | N x K | rows | cuBLAS us | cuBLAS GB/s | GEMV us | GEMV GB/s | "
            "cuBLAS/GEMV | GEMV config (BN, BK, warps, stages) |", "|" + "---|" * 9]
    for r in linears:
        rows.append(f"| {r['linear']} | {r['n']} x {r['k']} | {r['rows']} | "
                    f"{r['cublas_us']:.1f} | {r['cublas_gb_s']:.0f} | {r['gemv_us']:.1f} | "
                    f"{r['gemv_gb_s']:.0f} | {r['ratio']:.2f} | {tuple(r['config'])} |")
    for m in sorted({r["rows"] for r in linears}):
        mine = [r for r in linears if r["rows"] == m and r["linear"] in SHAPES]
        if len(mine) == len(SHAPES):
            c = sum(PER_STEP[r["linear"]] * r["cublas_us"] for r in mine) / 1e3
            g = sum(PER_STEP[r["linear"]] * r["gemv_us"] for r in mine) / 1e3
            rows.append(f"| per step (16 layers + LM head) | | {m} | {1e3 * c:.0f} | | "
                        f"{1e3 * g:.0f} | | {c / g:.2f} | |")
    for m in sorted({r["rows"] for r in linears}):
        fused = [r for r in linears if r["linear"] in FUSED and r["rows"] == m]
        if len(fused) != len(FUSED):
            continue
        per = lambda key: sum(PER_STEP[FUSED[r["linear"]][0]] * r[key] for r in fused)  # noqa
        c, g, p = per("cublas_us"), per("gemv_us"), per("plan_unfused_us")
        rows.append(f"| per step, fused (16 layers + LM head) | | {m} | {c:.0f} | | {g:.0f} | "
                    f"| {c / g:.2f} | |")
        rows += ["", f"Fused rows at {m} rows (a name with +): the cuBLAS columns time the "
                 "unfused torch sequence the fused GEMV replaces (torch rms_norm, torch.mm, "
                 "silu(gate) * up or torch.add). Against the cuda target's unfused kernels "
                 "(Triton rms_norm / swiglu, cuBLAS, torch.add):", "",
                 "| fused | rows | plan unfused us | fused GEMV us | plan / fused | config | "
                 "rel err vs torch |", "|---|---|---|---|---|---|---|"]
        for r in fused:
            rows.append(f"| {r['linear']} | {m} | {r['plan_unfused_us']:.1f} | "
                        f"{r['gemv_us']:.1f} | {r['plan_ratio']:.2f} | {tuple(r['config'])} | "
                        f"{r['rel_err']:.1e} |")
        rows.append(f"| per step (16 layers + LM head) | {m} | {p:.0f} | {g:.0f} | {p / g:.2f} "
                    "| | |")
    sweeps = [r for r in linears if r.get("sweep")]
    if sweeps:
        rows += ["", "Sweep (one knob of the default changed; us, GB/s; * = faster than the "
                 "default; ! = wrong result):"]
        for r in sweeps:
            cells = [f"{tuple(s['config'])} {s['us']:.1f}/{s['gb_s']:.0f}"
                     f"{'*' if s['us'] < r['gemv_us'] else ''}{'' if s['ok'] else '!'}"
                     for s in r["sweep"]]
            rows.append(f"- {r['linear']} rows={r['rows']}: default {tuple(r['config'])} "
                        f"{r['gemv_us']:.1f}/{r['gemv_gb_s']:.0f}; " + "; ".join(cells))
    if tpot:
        rows += ["", "| Llama-3.2-1B bs=1, context 512 | TPOT ms | overlapped TPOT ms | "
                 "graph replay ms |", "|---|---|---|---|"]
        for t in tpot:
            name = variant_name(t)
            if "error" in t:
                rows.append(f"| {name} | failed: {t['error']} | | |")
                continue
            note = (f" (logits vs no PDL: max abs diff {t['max_abs_vs_gemv']:.4f})"
                    if "max_abs_vs_gemv" in t else "")
            rows.append(f"| {name} | {t['tpot_ms']:.3f} | {t.get('overlap_ms', float('nan')):.3f} "
                        f"| {t['replay_ms']:.3f}{note} |")
        for t in tpot[1:]:
            if "error" not in t:
                name = variant_name(t).replace("Triton GEMV", "GEMV")
                rows.append(f"| cuBLAS / {name} | "
                            f"{tpot[0]['tpot_ms'] / t['tpot_ms']:.3f} | "
                            f"{tpot[0].get('overlap_ms', 1) / t.get('overlap_ms', 1):.3f} | "
                            f"{tpot[0]['replay_ms'] / t['replay_ms']:.3f} |")
    if logits_diff:
        rows += ["", f"Decode logits after a 128-token prefill, GEMV vs cuBLAS: max abs diff "
                 f"{logits_diff['max_abs']:.4f} (logit scale {logits_diff['scale']:.2f}), "
                 f"same argmax: {logits_diff['same_argmax']}"]
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".")
    p.add_argument("--rows", default="1", help="comma-separated row counts (<= 32; above 4 the "
                   "GEMV runs on tensor cores)")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--sweep", action="store_true", help="also time each default's neighbours "
                   "(rows=1, and rows above FMA_ROWS on tensor cores)")
    p.add_argument("--sweep-rows", default="", help="with --sweep: only these row counts "
                   "(comma-separated; default all of --rows)")
    p.add_argument("--no-tpot", action="store_true", help="skip the 1B TPOT part")
    p.add_argument("--batched", action="store_true", help="also replay batches 1/8/32 with "
                   "and without fuse_norm_linear")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_gemv.py: no CUDA device", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name()
    bandwidth = hbm_bandwidth()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    linears, tpot, diff, batched = [], [], None, []

    def write():
        (out / "gemv.json").write_text(json.dumps(
            {"device": device, "bandwidth": bandwidth, "linears": linears, "tpot": tpot,
             "logits_diff": diff, "batched": batched}, indent=1))
        (out / "gemv.md").write_text(table(device, bandwidth, linears, tpot, diff)
                                     + batched_table(batched) + "\n")

    linears += bench_linears([int(m) for m in args.rows.split(",")], args.iters, args.sweep,
                             {int(m) for m in args.sweep_rows.split(",")} if args.sweep_rows
                             else None)
    write()
    if not args.no_tpot:
        (off, ref), (on, got) = bench_tpot(False, args.steps), bench_tpot(True, args.steps)
        tpot += [off, on]
        for variant in PDL_VARIANTS:   # opt-in until measured: a failure must not lose the rest
            try:
                pdl, got_pdl = bench_tpot(True, args.steps, pdl=True, **variant)
                pdl["max_abs_vs_gemv"] = (got_pdl - got).abs().max().item()
                tpot.append(pdl)
            except Exception as err:   # noqa: BLE001 (reported in the table)
                tpot.append(dict(gemv=True, pdl=True, **variant,
                                 error=f"{type(err).__name__}: {err}"[:300]))
            write()
        diff = dict(max_abs=(got - ref).abs().max().item(), scale=ref.abs().max().item(),
                    same_argmax=bool(got.argmax() == ref.argmax()))
        print(json.dumps(dict(tpot=tpot, logits_diff=diff)), flush=True)
        write()
    # Last: three plans captured at every bucket (the longest part; a stage timeout then
    # loses only this table).
    if args.batched:
        try:
            batched += bench_batched()
        except Exception as err:   # noqa: BLE001 (new: a failure must not lose the rest)
            print(f"bench_batched failed: {type(err).__name__}: {err}", file=sys.stderr)
        print(json.dumps(dict(batched=batched)), flush=True)
        write()
    print(table(device, bandwidth, linears, tpot, diff) + batched_table(batched))
    return 0

if __name__ == "__main__":
    sys.exit(main())
