"""Triton kernels of the cuda target: one kernel per file, each behind a thin launcher.

The op interface that generated plans call is `rustinfer.kernels.triton_ops`;
the files here hold the kernels and their launchers:

    rms_norm.py           RMSNorm and fused residual-add + RMSNorm
    rope_kv.py            RoPE on q and k, k and v written into the paged KV cache
    swiglu.py             silu(gate) * up on the fused gate_up output
    gather.py             embedding lookup and logits-row gather (one row copy kernel)
    decode_attention.py   paged GQA decode attention, split-K with an LSE merge
    prefill_attention.py  varlen causal flash attention over the paged cache
    gemv.py               decode-sized GEMM (1-row GEMMs by default) with fused norm,
                          SwiGLU and residual variants; gemv_config.py its block sizes
    argmax.py             row-wise argmax of the logits (greedy sampling, outside the plan)

Every launch goes through `launch()` below, so a dry run can record each
kernel specialization a plan emits (aot.py compiles them all to sm_90 cubins
on a machine with no GPU) instead of running it.

Rules that every kernel here follows, because Triton's CPU interpreter (the CI
oracle) computes wrong answers otherwise (../shared/NOTES.md):
- every load is upcast to fp32 before arithmetic (bf16 math in the interpreter
  runs on the uint16 storage);
- `tl.dot` operands are cast to fp32 when `DOT_FP32` (= interpreting) is set;
- no libdevice, no autotune, no @triton.jit helper functions (aot.py compiles
  the kernels' own source; a helper would be an interpreted function there).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import triton.language as tl

# Interpreting: CPU tensors, tl.dot in fp32. Read once: @triton.jit reads it at decoration time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_recording: list | None = None


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def num_warps_for(block: int) -> int:
    """Warps for a one-row kernel of `block` fp32 elements (Liger's calculate_settings)."""
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4


def launch(kernel, grid: tuple, *args, num_warps: int = 4, num_stages: int | None = None,
           launch_pdl: bool = False, **constexprs) -> None:
    """kernel[grid](*args, **constexprs), or record it during `record_launches()`.
    launch_pdl: launch with programmatic dependent launch (the kernel must gdc_wait)."""
    if _recording is not None:
        _recording.append((kernel, grid, args, constexprs, num_warps))
        return
    if any(g == 0 for g in grid):
        return
    opts = {"num_warps": num_warps}
    if num_stages is not None:
        opts["num_stages"] = num_stages
    if launch_pdl:
        opts["launch_pdl"] = True
    kernel[grid](*args, **constexprs, **opts)


_pdl_capable: dict[int, bool] = {}
_TRITON_HAS_PDL = all(hasattr(tl.extra.cuda, f) for f in ("gdc_wait", "gdc_launch_dependents"))


def pdl_capable(device: torch.device) -> bool:
    """Whether kernels on `device` can launch with programmatic dependent launch: a CUDA
    device of compute capability 9+ (Hopper) and a Triton that has it (gdc_wait and the
    launch_pdl option came with 3.3; pyproject's cuda extra allows 3.0), never under the
    interpreter (it has no griddepcontrol)."""
    if INTERPRET or device.type != "cuda" or not _TRITON_HAS_PDL:
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _pdl_capable:
        _pdl_capable[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _pdl_capable[index]


@contextmanager
def record_launches():
    """Collect (kernel, grid, args, constexprs, num_warps) instead of launching."""
    global _recording
    saved, _recording = _recording, []
    try:
        yield _recording
    finally:
        _recording = saved


def check_rows(what: str, t: torch.Tensor, width: int, rows: int | None = None) -> None:
    """A [rows, width] matrix whose rows may be strided (column views of a fused buffer)
    but whose columns are contiguous."""
    if t.dim() != 2 or t.shape[1] != width or (rows is not None and t.shape[0] != rows):
        raise ValueError(f"{what}: expected [{rows if rows is not None else 'T'}, {width}], "
                         f"got {list(t.shape)}")
    if t.shape[0] > 0 and t.shape[1] > 1 and t.stride(1) != 1:
        raise ValueError(f"{what}: columns must be contiguous (stride(1) == 1), "
                         f"got strides {t.stride()}")


def check_contiguous(what: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{what}: must be contiguous, got shape {list(t.shape)} "
                         f"strides {t.stride()}")
