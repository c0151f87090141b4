"""Where a bs=1 decode step's GPU time goes (Llama-3.2-1B shapes, random bf16 weights).

    python bench/gpu_profile.py [--model 1b] [--batch 1] [--out DIR]

Profiles 20 decode steps of --batch sequences at context 512 under CUDA-graph replay with torch.profiler and
prints the kernels by total GPU time, grouped (GEMM / attention / norm / rope / ...), so
the next optimisation goes where the time is. Run by bench/gpu_check.sh.
Programmatic dependent launch is off here unless --pdl: a kernel launched early is timed
from its start, its wait for the kernel before included (seen on an H200, 2026-11-27: the
merge kernel read 74 us a step with PDL against 23 without), which hides where time goes.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import BLOCK, MODELS, REPO, RandomCheckpoint  # noqa: E402

GROUPS = [("gemm", ("gemm", "gemv", "nvjet", "cutlass", "sm90_xmma", "splitk", "cublas")),
          ("attention", ("attention", "attn", "_merge")),
          ("norm", ("rms",)), ("rope", ("rope",)), ("swiglu", ("swiglu",)),
          ("gather", ("gather", "index", "embedding")), ("copy", ("copy", "memcpy", "fill"))]


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="1b", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=1, help="sequences per decode step (<= 32)")
    p.add_argument("--out", default=None)
    p.add_argument("--pdl", action="store_true", help="keep programmatic dependent launch on")
    args = p.parse_args()
    if not args.pdl:
        from rustinfer.kernels.triton import decode_attention, gemv
        gemv.PDL = decode_attention.PDL = False
    from rustinfer.compiler.build import CompileOptions, compile_model
    from rustinfer.compiler.spec import SPECS_DIR
    from rustinfer.compiler.step_inputs import StepInputs
    from rustinfer.runtime.cuda_executor import CudaExecutor
    from rustinfer.runtime.sampling import greedy_argmax

    config = json.loads((REPO / "bench" / "models" / MODELS[args.model] / "config.json").read_text())
    ckpt = RandomCheckpoint(config)
    folder, _ = compile_model(SPECS_DIR / "llama3.yaml", config, ckpt,
                              CompileOptions(target="cuda", max_tokens=1024))
    b = args.batch
    ex = CudaExecutor(folder / "plan.py", ckpt, num_blocks=48 * b + 16, block_size=BLOCK,
                      max_model_len=768, max_batch=b)
    tables = [list(range(48 * i, 48 * (i + 1))) for i in range(b)]
    for table in tables:
        ex.forward(StepInputs.for_sequences([(list(range(1, 513)), 0, table)], BLOCK))
    steps = [StepInputs.for_sequences([([7], 512 + i, t) for t in tables], BLOCK)
             for i in range(30)]
    # Each step reads back its greedy tokens only, as the engine does (a [32, vocab] float32 copy of
    # the logits to pageable memory took 1.75 ms of a 3.0 ms batch-32 profile).
    for s in steps[:10]:
        greedy_argmax(ex.forward_device(s)).tolist()                # warm-up replays
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for s in steps[10:]:
            greedy_argmax(ex.forward_device(s)).tolist()
        torch.cuda.synchronize()
    per_kernel: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[ev.name][0] += ev.device_time_total
            per_kernel[ev.name][1] += 1
    n = len(steps) - 10
    total = sum(t for t, _ in per_kernel.values()) / n
    groups: dict[str, float] = defaultdict(float)
    for name, (t, _) in per_kernel.items():
        groups[group_of(name)] += t / n
    lines = [f"{MODELS[args.model]} bs={b} decode at context 512: {total / 1e3:.3f} ms of kernel "
             f"time per step ({sum(c for _, c in per_kernel.values()) // n} kernels per step)"]
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {g:<10} {t / 1e3:7.3f} ms  {100 * t / total:5.1f}%")
    lines.append("top kernels (ms per step, launches per step):")
    for name, (t, c) in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:15]:
        lines.append(f"  {t / n / 1e3:7.3f}  {c // n:4d}  {name[:110]}")
    try:
        lines += per_launch(prof, config)
    except Exception as e:                       # a profiler without start times: skip this part
        lines.append(f"(per-launch breakdown unavailable: {type(e).__name__}: {e})")
    text = "\n".join(lines)
    print(text)
    if args.out:
        name = "profile.txt" if b == 1 else f"profile_bs{b}.txt"
        Path(args.out, name).write_text(text + "\n")
    return 0


def per_launch(prof, config: dict) -> list[str]:
    """The GEMVs of each step in launch order, named by their place in a layer (qkv, o,
    gate_up, down, then the LM head), with their bandwidth, and the idle time between a
    step's kernels (its span minus its kernel time)."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    d = config.get("head_dim") or hidden // config["num_attention_heads"]
    qkv = (config["num_attention_heads"] + 2 * config["num_key_value_heads"]) * d
    inter = config["intermediate_size"]
    shapes = {"qkv": (qkv, hidden), "o": (hidden, config["num_attention_heads"] * d),
              "gate_up": (2 * inter, hidden), "down": (hidden, inter),
              "lm_head": (config["vocab_size"], hidden)}
    events = sorted((ev for ev in prof.events()
                     if ev.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda ev: ev.time_range.start)
    steps, current = [], []
    for ev in events:                             # each replay starts with its H2D input copy
        if "HtoD" in ev.name and current:
            steps.append(current)
            current = []
        current.append(ev)
    steps.append(current)
    names = [k for _ in range(layers) for k in ("qkv", "o", "gate_up", "down")] + ["lm_head"]
    per: dict[str, list[float]] = defaultdict(list)
    gaps, spans = [], []
    for step in steps:
        gemvs = [ev for ev in step if "gemv" in ev.name.lower()]
        if len(gemvs) != len(names):
            continue
        for name, ev in zip(names, gemvs):
            per[name].append(ev.time_range.end - ev.time_range.start)
        span = step[-1].time_range.end - step[0].time_range.start
        busy = sum(ev.time_range.end - ev.time_range.start for ev in step)
        spans.append(span)
        gaps.append(span - busy)
    if not spans:
        return ["(per-launch breakdown: no step had the expected GEMV count)"]
    n = len(spans)
    out = [f"per launch, {n} steps (us per launch, GB/s of weights):"]
    for name, times in per.items():
        t = sorted(times)[len(times) // 2]
        rows, cols = shapes[name]
        out.append(f"  {name:<8} {t:7.1f} us x {len(times) // n:2d}  "
                   f"{rows * cols * 2 / t / 1e3:7.0f} GB/s   [{rows} x {cols}]")
    out.append(f"  step span {sorted(spans)[n // 2]:.1f} us, idle between kernels "
               f"{sorted(gaps)[n // 2]:.1f} us")
    return out


if __name__ == "__main__":
    sys.exit(main())
