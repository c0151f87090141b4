"""Ahead-of-time check: every kernel specialization a plan emits compiles to an sm_90 cubin.

No GPU needed: the generated plan.py runs once per step shape on meta tensors
(no data, no memory) with `record_launches()` on, which collects each launch's
kernel, argument types and constexprs instead of launching; each distinct one is
then compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`
(the wheel ships ptxas). This catches what the CPU interpreter accepts and the
GPU compiler rejects (tl.dot with K < 16, non-power-of-2 aranges, ...).

NOTE: measured on the 2-core CPU machine: SmolLM2-135M + Llama-3.2-1B, decode buckets
1..32 and two prefill layouts: 2164 launches, 29 distinct specializations, 0.1-0.9 s
each, ~19 s in all including the 3 s import.

The plans run as on a GPU: single-row GEMMs and the fused rms_norm_linear /
linear_add take the Triton GEMV (`--no-gemv`: all on cuBLAS, RUSTINFER_TRITON_GEMV=0).
Of the GEMV's specializations it keeps the fewest- and most-rows one per block
config: the others differ only in how many rows the kernel unrolls.

Must run in a process without TRITON_INTERPRET=1: under the interpreter Triton's
own library functions (tl.sum, tl.max, ...) are interpreted objects the compiler
cannot lower. Tests call it in a subprocess:

    python -m rustinfer.kernels.triton.aot CONFIG_JSON [...] [--buckets 1,2,4] [--prefill 128]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from . import gemv, record_launches

_PTR = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32",
        torch.int64: "*i64", torch.int32: "*i32"}


def _signature(kernel, args, constexprs):
    """(signature, constexprs, attrs) as the JIT would specialize this call (ints equal
    to 1 become constants; 16-divisible ints and pointers carry tt.divisibility)."""
    names = kernel.arg_names
    runtime_names = [n for i, n in enumerate(names) if i not in kernel.constexprs]
    sig, consts, attrs = {}, dict(constexprs), {}
    for i, (name, value) in enumerate(zip(runtime_names, args)):
        idx = names.index(name)
        if isinstance(value, torch.Tensor):
            sig[name] = _PTR[value.dtype]
            if value.device.type == "meta" or value.data_ptr() % 16 == 0:
                attrs[(idx,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                sig[name] = "constexpr"
                consts[name] = 1
                continue
            sig[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(idx,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: argument {name} of type {type(value).__name__}")
    for name in constexprs:
        sig[name] = "constexpr"
    ordered = {n: sig[n] for n in names if n in sig}
    return ordered, consts, attrs


def _meta_step(seqs, block_size, max_blocks):
    """A StepInputs on the meta device for seqs = [(new_rows, context_len)], with its
    DeviceMeta attached (what the executor hands the plan)."""
    from rustinfer.compiler.step_inputs import StepInputs
    from rustinfer.kernels.triton_ops import DeviceMeta

    starts = [0]
    for rows, _ in seqs:
        starts.append(starts[-1] + rows)
    t, b = starts[-1], len(seqs)
    meta = lambda *shape: torch.empty(*shape, dtype=torch.int64, device="meta")  # noqa: E731
    step = StepInputs(token_ids=meta(t), positions=meta(t), query_start=starts,
                      context_lens=[c for _, c in seqs], block_tables=[[0]] * b,
                      slot_mapping=meta(t), block_size=block_size, logit_rows=meta(b),
                      block_table_tensor=meta(b, max_blocks))
    step.device_meta = DeviceMeta(query_start=meta(b + 1), context_lens=meta(b),
                                  block_table=meta(b, max_blocks),
                                  max_rows=max(r for r, _ in seqs))
    return step


@contextlib.contextmanager
def _routing(with_gemv: bool):
    """triton_ops routes the GEMV for meta tensors as it does for cuda ones (with_gemv),
    or not at all (every GEMM on cuBLAS, as RUSTINFER_TRITON_GEMV=0 runs)."""
    from rustinfer.kernels import triton_ops

    saved = triton_ops.TRITON_GEMV, triton_ops.GEMV_DEVICES
    triton_ops.TRITON_GEMV, triton_ops.GEMV_DEVICES = with_gemv, ("cuda", "meta")
    try:
        yield
    finally:
        triton_ops.TRITON_GEMV, triton_ops.GEMV_DEVICES = saved


def plan_launches(config: dict, *, buckets=(1, 2, 4, 8, 16, 32), prefill=(128,),
                  block_size: int = 16, max_model_len: int = 4096, num_sms: int = 132,
                  dtype=torch.bfloat16, with_gemv: bool = True) -> list:
    """Every launch the cuda target's plan makes for decode buckets and prefill sizes
    (with_gemv=False: as with RUSTINFER_TRITON_GEMV=0)."""
    from rustinfer.compiler.build import CompileOptions, compile_model
    from rustinfer.compiler.spec import SPECS_DIR
    from rustinfer.kernels import triton_ops
    from rustinfer.runtime.plan_executor import load_plan_module

    max_tokens = max(max(buckets), max(prefill))
    folder, _ = compile_model(SPECS_DIR / "llama3.yaml", config, None,
                              CompileOptions(target="cuda", max_tokens=max_tokens))
    plan = load_plan_module(folder / "plan.py")
    empty = lambda *shape: torch.empty(*shape, dtype=dtype, device="meta")  # noqa: E731
    weights = {name: empty(*shape) for name, (_, _, _, shape) in plan.WEIGHTS.items()}
    caches = {name: empty(4, block_size, kvh, d) for name, (kvh, d) in plan.CACHES.items()}
    arena = empty(plan.ARENA_BYTES // plan.ACT_BYTES)
    outputs = {name: empty(max_tokens, cols) for name, (_, cols) in plan.OUTPUTS.items()}
    limits = plan.LIMITS
    ws = triton_ops.Workspace(max_tokens=max_tokens, max_context=max_model_len,
                              max_heads=limits["max_heads"], max_kv_width=limits["max_kv_width"],
                              max_head_dim=limits["max_head_dim"], block_size=block_size,
                              device="meta", max_seqs=max(buckets), num_sms=num_sms,
                              scratch_width=limits.get("scratch_width", 0), act_dtype=dtype)
    max_blocks = -(-max_model_len // block_size)
    steps = [[(1, 512)] * b for b in buckets]
    steps += [[(n, n)] for n in prefill] + [[(n // 2, n), (1, 9)] for n in prefill]
    launches = []
    for seqs in steps:
        with record_launches() as rec, torch.inference_mode(), _routing(with_gemv):
            plan.run(_meta_step(seqs, block_size, max_blocks), weights, caches, arena, outputs,
                     triton_ops, ws)
        launches += rec
    return launches


def specializations(launches) -> dict:
    """Distinct (kernel, signature, constexprs, attrs, num_warps) keyed by a readable name."""
    found = {}
    for kernel, _, args, constexprs, num_warps in launches:
        sig, consts, attrs = _signature(kernel, args, constexprs)
        key = f"{kernel.fn.__module__.rsplit('.', 1)[-1]}.{kernel.__name__}" \
              f"[{','.join(f'{k}={v}' for k, v in sorted(consts.items()))}]" \
              f"({','.join(sig.values())}) w{num_warps} a{sorted(attrs)}"
        found.setdefault(key, (kernel, sig, consts, attrs, num_warps))
    return found


def thin_gemv(found: dict) -> dict:
    """Of the GEMV's specializations, the ones with the fewest and the most rows (BLOCK_M)
    per block config and dtypes; every other kernel's are all kept. (The 1B plan's 25
    GEMV launches differ mostly in M, which only sets how many rows the kernel unrolls.)"""
    groups: dict = {}
    for key, (kernel, sig, consts, _, num_warps) in found.items():
        if kernel is not gemv._gemv_kernel:
            continue
        config = tuple(sorted((k, v) for k, v in consts.items() if k not in ("BLOCK_M", "M")))
        dtypes = tuple(v for k, v in sig.items() if v.startswith("*"))
        groups.setdefault((config, dtypes, num_warps), []).append((consts["BLOCK_M"], key))
    drop = set()
    for members in groups.values():
        members.sort()
        drop.update(key for _, key in members[1:-1])
    return {key: spec for key, spec in found.items() if key not in drop}


def compile_all(found: dict, arch: int = 90) -> list[tuple[str, float, int]]:
    """Compile each specialization; (key, seconds, cubin bytes) per kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    done = []
    for key, (kernel, sig, consts, attrs, num_warps) in found.items():
        started = time.perf_counter()
        src = ASTSource(kernel, signature=sig, constexprs=consts, attrs=attrs)
        compiled = triton.compile(src, target=target, options={"num_warps": num_warps})
        done.append((key, time.perf_counter() - started, len(compiled.asm["cubin"])))
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="config.json files (Hugging Face Llama configs)")
    p.add_argument("--buckets", default="1,2,4,8,16,32")
    p.add_argument("--prefill", default="128")
    p.add_argument("--no-gemv", action="store_true",
                   help="every GEMM on cuBLAS, as with RUSTINFER_TRITON_GEMV=0")
    args = p.parse_args(argv)
    from . import INTERPRET

    if INTERPRET:
        print("aot: unset TRITON_INTERPRET (the compiler cannot lower interpreted functions)",
              file=sys.stderr)
        return 2
    total = 0
    for path in args.configs:
        config = json.loads(Path(path).read_text())
        launches = plan_launches(config, buckets=[int(b) for b in args.buckets.split(",")],
                                 prefill=[int(n) for n in args.prefill.split(",")],
                                 with_gemv=not args.no_gemv)
        found = thin_gemv(specializations(launches))
        for key, seconds, size in compile_all(found):
            print(f"ok {seconds:5.2f}s {size:7d}B  {key}")
        print(f"{path}: {len(launches)} launches, {len(found)} specializations compiled")
        total += len(found)
    print(f"aot: {total} cubins for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
