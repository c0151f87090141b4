"""Where a bs=1 decode step's GPU time goes (Llama-3.2-1B shapes, random bf16 weights).

    python bench/gpu_profile.py [--model 1b] [--out DIR]

Profiles 20 decode steps at context 512 under CUDA-graph replay with torch.profiler and
prints the kernels by total GPU time, grouped (GEMM / attention / norm / rope / ...), so
the next optimisation goes where the time is. Run by bench/gpu_check.sh.
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
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from rustinfer.compiler.build import CompileOptions, compile_model
    from rustinfer.compiler.spec import SPECS_DIR
    from rustinfer.compiler.step_inputs import StepInputs
    from rustinfer.runtime.cuda_executor import CudaExecutor

    config = json.loads((REPO / "bench" / "models" / MODELS[args.model] / "config.json").read_text())
    ckpt = RandomCheckpoint(config)
    folder, _ = compile_model(SPECS_DIR / "llama3.yaml", config, ckpt,
                              CompileOptions(target="cuda", max_tokens=1024))
    ex = CudaExecutor(folder / "plan.py", ckpt, num_blocks=64, block_size=BLOCK,
                      max_model_len=768, max_batch=1)
    table = list(range(48))
    ex.forward(StepInputs.for_sequences([(list(range(1, 513)), 0, table)], BLOCK))
    steps = [StepInputs.for_sequences([([7], 512 + i, table)], BLOCK) for i in range(30)]
    for s in steps[:10]:
        ex.forward(s)                                           # warm-up replays
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for s in steps[10:]:
            ex.forward(s)
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
    lines = [f"{MODELS[args.model]} bs=1 decode at context 512: {total / 1e3:.3f} ms of kernel "
             f"time per step ({sum(c for _, c in per_kernel.values()) // n} kernels per step)"]
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {g:<10} {t / 1e3:7.3f} ms  {100 * t / total:5.1f}%")
    lines.append("top kernels (ms per step, launches per step):")
    for name, (t, c) in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:15]:
        lines.append(f"  {t / n / 1e3:7.3f}  {c // n:4d}  {name[:110]}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out, "profile.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
