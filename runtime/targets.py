"""Targets: how a bound model becomes an executor.

An executor runs one forward step: `forward(step: StepInputs) -> logits [R, vocab]`
(R = rows asked for by `step.logit_rows`), owns its KV cache of `num_blocks`
blocks of `block_size` tokens, and accepts steps of at most `max_tokens` tokens.
Each target is one factory here; `LLM(target=...)` and the CLIs pick by name.
"auto" (the default everywhere) is "cuda" where torch sees a CUDA GPU and "cpu"
(ONNX Runtime) otherwise.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

from rustinfer.compiler.ir import Graph


@dataclass
class LoadContext:
    """Everything a target factory may need."""
    graph: Graph              # the bound (unfused) IR
    spec_path: str
    config: dict
    checkpoint: Any
    num_blocks: int
    block_size: int
    max_model_len: int
    max_step_tokens: int      # largest step the engine will run (max_num_batched_tokens)
    options: dict             # target-specific options, e.g. {"threads": 2, "quant": "int4"}
    max_num_seqs: int = 16    # most sequences the engine keeps running at once


def _reference(ctx: LoadContext):
    from .executor import ReferenceExecutor
    from .weights import load_graph_weights

    weights = load_graph_weights(ctx.graph, ctx.checkpoint)
    ex = ReferenceExecutor(ctx.graph, weights, ctx.num_blocks, ctx.block_size)
    ex.max_tokens = ctx.max_model_len
    return ex


def _cpu_torch(ctx: LoadContext):
    from rustinfer.compiler.build import CompileOptions, compile_model

    from .plan_executor import PlanExecutor

    options = CompileOptions(target="cpu-torch", max_tokens=ctx.max_step_tokens)
    plan_dir, cached = compile_model(ctx.spec_path, ctx.config, ctx.checkpoint, options)
    ex = PlanExecutor(plan_dir / "plan.py", ctx.checkpoint, num_blocks=ctx.num_blocks,
                      block_size=ctx.block_size, max_model_len=ctx.max_model_len)
    ex.plan_dir, ex.plan_cached = plan_dir, cached
    return ex


def _cpu(ctx: LoadContext):
    from .onnx_executor import load

    return load(ctx)


def cuda_unsupported(graph: Graph) -> list[str]:
    """What the Triton kernels cannot run yet: sliding windows, soft-capping, partial rotary."""
    found = []
    for node in graph.nodes:
        a = node.attrs
        if a.get("window") or a.get("softcap"):
            found.append(f"{node.op} window/softcap ({node.name})")
        elif a.get("rotary_dim") not in (None, a.get("head_dim")):
            found.append(f"{node.op} rotary_dim ({node.name})")
    return found


def _cuda(ctx: LoadContext):
    missing = cuda_unsupported(ctx.graph)
    if missing:
        # A slower correct path beats a wrong or crashing one: say so, then run on the CPU.
        print(f"rustinfer: WARNING: the cuda target's Triton kernels do not implement "
              f"{missing[0]}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
              "falling back to target 'cpu-torch' (float32, CPU)", file=sys.stderr)
        return _cpu_torch(ctx)
    from rustinfer.compiler.build import CompileOptions, compile_model

    import torch

    from .cuda_executor import CudaExecutor

    options = CompileOptions(target="cuda", max_tokens=ctx.max_step_tokens)
    plan_dir, cached = compile_model(ctx.spec_path, ctx.config, ctx.checkpoint, options)
    opts = ctx.options
    ex = CudaExecutor(plan_dir / "plan.py", ctx.checkpoint, num_blocks=ctx.num_blocks,
                      block_size=ctx.block_size, max_model_len=ctx.max_model_len,
                      max_batch=int(opts.get("max_batch", min(64, ctx.max_step_tokens))),
                      cuda_graphs=bool(opts.get("cuda_graphs", True)),
                      device=str(opts.get("device", "cuda")),
                      dtype=getattr(torch, str(opts.get("dtype", "bfloat16"))))
    ex.plan_dir, ex.plan_cached = plan_dir, cached
    return ex


TARGETS: dict[str, Callable[[LoadContext], Any]] = {
    "cpu": _cpu,               # ONNX Runtime with contrib ops (float32 / int4 / int8), in-place KV
    "cpu-torch": _cpu_torch,   # the compiled plan on torch CPU kernels (float32)
    "cuda": _cuda,             # the compiled plan on Triton kernels, bf16, CUDA graphs for decode
    "reference": _reference,   # the IR interpreter (float32): slow, the oracle
}


def default_target() -> str:
    """What "auto" means on this machine: the GPU when torch sees one, else ONNX Runtime
    (faster than cpu-torch at every batch size: bench/engine.py)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_target(target: str) -> str:
    """A target name, "auto" replaced by this machine's default; unknown names raise."""
    name = default_target() if target == "auto" else target
    if name not in TARGETS:
        raise ValueError(f"unknown target '{target}'; choose one of: auto, {', '.join(TARGETS)}")
    return name


def describe(executor) -> str:
    """One line for logs: which target runs the model, and how."""
    target = getattr(executor, "target", type(executor).__name__)
    parts = [target]
    meta = getattr(executor, "meta", None)
    if target == "cpu" and meta:
        parts.append(f"ONNX Runtime, {meta.get('quant', 'none').replace('none', 'float32')}, "
                     f"{executor.threads} threads")
    plan = getattr(executor, "plan_dir", None)
    if plan is not None:
        cached = getattr(executor, "plan_cached", None)
        parts.append(f"compiled {'earlier' if cached else 'now'} into {plan}")
    return "; ".join(parts)


def build_executor(target: str, ctx: LoadContext):
    name = resolve_target(target)
    if ctx.options and name in ("reference", "cpu-torch"):
        raise ValueError(f"target '{name}' takes no options, got {sorted(ctx.options)} "
                         "(quant and threads apply to the cpu target)")
    return TARGETS[name](ctx)
