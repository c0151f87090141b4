"""The op interface generated plans call, implemented with Triton kernels (the cuda target).

Same names and signatures as rustinfer.kernels.torch_ops (a test checks), so a
plan runs unchanged with `K = triton_ops`. GEMMs go through torch (cuBLAS on a
GPU); everything else is a kernel in rustinfer.kernels.triton.

Single-row GEMMs (a bs=1 decode step, cuda tensors) go to the Triton GEMV
(triton/gemv.py), and so do the cuda target's fused forms (linear_add,
rms_norm_linear: the residual add, the norm and SwiGLU done inside the GEMV).
Measured on an H200 (bench/gpu_gemv.py, bench/RESULTS.md): at 1 row the GEMV
beat cuBLAS on every Llama-3.2-1B linear and took the bs=1 step from 1.081 to
0.987 ms; at 8 and 16 rows it was 2-5x slower, so more rows take cuBLAS (the
fused ops then run their parts separately, through `ws.scratch`).
RUSTINFER_TRITON_GEMV=0 (read once, at import) turns the GEMV off: every GEMM is
then torch.mm / addmm, as before it was measured.

Capture-safe: no op here reads a device value on the host, allocates, or
branches on data. What the kernels need of the step's layout (row offsets,
context lengths, block table) they read on device from a `DeviceMeta` attached
to the StepInputs; host ints (rows, sequences, the longest query) only pick grid
sizes, which are the same for every replay of one CUDA-graph bucket. The rope
tables are built on first use, which the executor's warm-up run does before
capture.

On CPU, under TRITON_INTERPRET=1, the same code runs the kernels in Triton's
interpreter (the CI tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from rustinfer.compiler.step_inputs import to_device

from . import torch_ops as _torch_ops
from .rope_tables import half_cos_sin
from .triton import decode_attention as _decode
from .triton import gather as _gather
from .triton import gemv as _gemv
from .triton import prefill_attention as _prefill
from .triton import rms_norm as _rms
from .triton import rope_kv as _rope
from .triton import swiglu as _swiglu


@dataclass
class DeviceMeta:
    """A step's batch layout as device tensors (int64), for kernels to read on device."""
    query_start: torch.Tensor     # [B + 1]
    context_lens: torch.Tensor    # [B]
    block_table: torch.Tensor     # [B, max_blocks]
    max_rows: int                 # host: the most rows one sequence has (1 = a decode step)


def device_meta(step) -> DeviceMeta:
    """The step's DeviceMeta: the one the executor attached (static buffers under CUDA
    graphs), else built once from the step's host lists on the device of its tensors."""
    meta = getattr(step, "device_meta", None)
    if meta is None:
        dev = step.slot_mapping.device
        qs = step.query_start
        table = step.block_table_tensor
        if table is None:
            width = max((len(t) for t in step.block_tables), default=0)
            table = torch.tensor([t + [0] * (width - len(t)) for t in step.block_tables],
                                 dtype=torch.int64).reshape(len(step.block_tables), width)
        meta = DeviceMeta(
            query_start=to_device(qs, dev),
            context_lens=to_device(step.context_lens, dev),
            block_table=to_device(table.contiguous(), dev),
            max_rows=max((qs[i + 1] - qs[i] for i in range(len(qs) - 1)), default=0))
        step.device_meta = meta
    return meta


class Workspace:
    """Kernel scratch for one executor, allocated once: rope tables and split-K partials."""

    def __init__(self, *, max_tokens: int, max_context: int, max_heads: int, max_kv_width: int,
                 max_head_dim: int, block_size: int, dtype=torch.float32, device="cpu",
                 max_seqs: int = 256, num_sms: int | None = None, scratch_width: int = 0,
                 act_dtype=torch.bfloat16):
        self.device = torch.device(device)
        if num_sms is None:
            num_sms = (torch.cuda.get_device_properties(self.device).multi_processor_count
                       if self.device.type == "cuda" else 2)
        self.num_sms, self.max_context, self.max_seqs = num_sms, max_context, max_seqs
        # B * heads * splits <= heads * (2 * SMs + B) by num_splits' rule (splits <=
        # 2 SMs / (B kv_heads) + 1), so this bound holds for every batch size.
        rows = (2 * num_sms + max_seqs) * max_heads
        self.partial_out = torch.empty(rows * max_head_dim, dtype=torch.float32, device=device)
        self.partial_lse = torch.empty(rows, dtype=torch.float32, device=device)
        # rms_norm_linear's parts when it cannot be one GEMV (plan LIMITS["scratch_width"]):
        # allocated here, never during a step (CUDA graphs replay fixed addresses).
        self.scratch = torch.empty(max_tokens * scratch_width, dtype=act_dtype, device=device)
        self._rope_tables: dict = {}

    def scratch_views(self, rows: int, *widths: int) -> list[torch.Tensor]:
        """Disjoint [rows, width] views of `scratch`, one per width."""
        need = rows * sum(widths)
        if need > self.scratch.numel():
            raise ValueError(f"kernel scratch holds {self.scratch.numel()} elements, a step "
                             f"needs {need}: the plan's LIMITS['scratch_width'] is too small")
        views, start = [], 0
        for w in widths:
            views.append(self.scratch[start:start + rows * w].view(rows, w))
            start += rows * w
        return views

    def splits(self, batch: int, kv_heads: int) -> int:
        return _decode.num_splits(batch, kv_heads, self.max_context, self.num_sms)

    def rope_table(self, head_dim: int, theta: float, scaling) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [max_context, head_dim // 2] float32 (the half table: rotate-half repeats it)."""
        key = (head_dim, theta, repr(scaling))
        if key not in self._rope_tables:
            pos = torch.arange(self.max_context, dtype=torch.float32)
            cos, sin = half_cos_sin(pos, head_dim, theta, scaling)
            self._rope_tables[key] = (cos.to(self.device).contiguous(),
                                      sin.to(self.device).contiguous())
        return self._rope_tables[key]


def embedding(ids, table, *, out):
    _gather.gather_rows(table, ids, out)


# On by default since measured (module docstring); RUSTINFER_TRITON_GEMV=0 turns it off.
TRITON_GEMV = os.environ.get("RUSTINFER_TRITON_GEMV", "1") != "0"
# Rows up to which a GEMM takes the GEMV: 1 measured faster than cuBLAS, 8 and 16 slower
# (on the FMA path then). RUSTINFER_TRITON_GEMV_ROWS=N (up to 32) sends decode buckets of up
# to N rows to it, above 4 rows on its tensor-core path. Measured slower there on an H200
# (2026-11-27, bench/gpu_gemv.py --batched): the 1B step replayed in 1.44 / 1.99 ms at
# batch 8 / 32 against 1.14 / 1.30 on cuBLAS; sending only the norm-fused GEMMs (with
# SwiGLU, RoPE) there, 1.37-1.38 / 1.87-1.90. Its fused variants at 32 rows lose to cuBLAS
# plus the separate kernels (gate_up + norm + SwiGLU 34.8 us at its best config vs 32.9).
GEMV_MAX_ROWS = max(1, min(_gemv.MAX_ROWS, int(os.environ.get("RUSTINFER_TRITON_GEMV_ROWS",
                                                              "1"))))
# Devices whose tensors take the GEMV ("meta" is added by the AOT check, which runs plans
# on meta tensors to list the kernel specializations).
GEMV_DEVICES = ("cuda",)


def use_gemv(x) -> bool:
    """Whether a GEMM of x's rows takes the Triton GEMV (a shape and device test only, so
    a CUDA graph bucket always routes the same way)."""
    return TRITON_GEMV and 1 <= x.shape[0] <= GEMV_MAX_ROWS and x.device.type in GEMV_DEVICES


def linear(x, weight, bias=None, *, out):
    if use_gemv(x):
        _gemv.gemv(x, weight, out, bias)
    elif bias is None:
        torch.mm(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)


def linear_add(x, weight, residual, *, out):
    """out = residual + x @ weight^T (the residual stream's update): the GEMV adds it in its
    epilogue; more rows take torch_ops' cuBLAS addmm (in place on the plan's residual
    stream, so nothing is copied)."""
    if use_gemv(x):
        _gemv.gemv(x, weight, out, residual=residual)
    else:
        _torch_ops.linear_add(x, weight, residual, out=out)


def rms_norm_linear(x, norm_weight, weight, bias=None, *, out, eps, offset=0.0, act=None, ws):
    """out = act(rms_norm(x) @ weight^T + bias): one GEMV for a decode row, else the norm
    kernel, cuBLAS and (act='swiglu') the SwiGLU kernel through the workspace's scratch."""
    _torch_ops._check_act(act)  # the same rule as the CPU twin
    if use_gemv(x):
        _gemv.gemv(x, weight, out, bias, norm_weight=norm_weight, eps=eps, offset=offset,
                   swiglu=act == "swiglu")
        return
    # The product goes straight to `out` unless SwiGLU still has to combine its halves.
    normed, *product = ws.scratch_views(x.shape[0], x.shape[1],
                                        *([weight.shape[0]] if act else []))
    _rms.rms_norm(x, norm_weight, normed, eps=eps, offset=offset)
    linear(normed, weight, bias, out=product[0] if act else out)
    if act:
        _swiglu.swiglu(product[0], out)


def rms_norm_linear_rope_kv(x, norm_weight, weight, positions, k_cache, v_cache, *, out, eps,
                            offset=0.0, heads, kv_heads, head_dim, theta, scaling=None, step,
                            ws):
    """out = rotated q of qkv = rms_norm(x) @ weight^T; rotated k and v into the cache at
    the step's slots. One GEMV (RoPE and the cache append in its epilogue) for a decode
    row, else the norm kernel, cuBLAS and the rope_kv kernel through `ws.scratch`."""
    cos, sin = ws.rope_table(head_dim, theta, scaling)
    if use_gemv(x):
        _gemv.gemv_rope_kv(x, weight, out, positions, step.slot_mapping, cos, sin, k_cache,
                           v_cache, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                           norm_weight=norm_weight, eps=eps, offset=offset)
        return
    normed, qkv = ws.scratch_views(x.shape[0], x.shape[1], weight.shape[0])
    _rms.rms_norm(x, norm_weight, normed, eps=eps, offset=offset)
    linear(normed, weight, out=qkv)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    _rope.rope_kv_write(q, k, v, positions, step.slot_mapping, cos, sin, out, k_cache, v_cache,
                        heads=heads, kv_heads=kv_heads, head_dim=head_dim)


def rms_norm(x, weight, *, out, eps, offset=0.0, heads=1, ws):
    _rms.rms_norm(x, weight, out, eps=eps, offset=offset, heads=heads)


def add_rms_norm(a, b, weight, *, out, eps, offset=0.0, ws):
    """out = (normed, residual), or just normed when nothing reads the residual sum."""
    normed, residual = out if isinstance(out, tuple) else (out, None)
    _rms.add_rms_norm(a, b, weight, normed, residual, eps=eps, offset=offset)


# Plain elementwise ops (and other families' GELU / scale / softcap): torch's out= forms are
# already capture-safe and allocation-free, so the GPU interface shares them with the CPU one.
# Fused Triton versions can replace them when a plan needs the speed.
from .torch_ops import add, geglu, gelu, mul, scale, silu, softcap  # noqa: E402,F401


def _unsupported(op, **attrs):
    """Attributes the kernels do not implement yet: fail at the first (warm-up) run."""
    set_ = {k: v for k, v in attrs.items() if v}
    if set_:
        raise NotImplementedError(f"triton_ops.{op}: {set_} not implemented in the Triton "
                                  "kernels yet (use target cpu-torch)")


def swiglu(gate_up, *, out):
    _swiglu.swiglu(gate_up, out)


def gather_rows(x, rows, *, out):
    _gather.gather_rows(x, rows, out)


def rope(x, positions, *, out, heads, head_dim, theta, scaling=None, rotary_dim=None, ws):
    _unsupported("rope", rotary_dim=rotary_dim not in (None, head_dim))
    cos, sin = ws.rope_table(head_dim, theta, scaling)
    _rope.rope(x, positions, cos, sin, out, heads=heads, head_dim=head_dim)


def rope_kv_write(q, k, v, positions, k_cache, v_cache, *, out, heads, kv_heads, head_dim,
                  theta, scaling=None, rotary_dim=None, step, ws):
    """Rotate q into `out`; rotate k and store it, with v, at the step's cache slots."""
    _unsupported("rope_kv_write", rotary_dim=rotary_dim not in (None, head_dim))
    cos, sin = ws.rope_table(head_dim, theta, scaling)
    _rope.rope_kv_write(q, k, v, positions, step.slot_mapping, cos, sin, out, k_cache, v_cache,
                        heads=heads, kv_heads=kv_heads, head_dim=head_dim)


def attention(q, k, v, k_cache, v_cache, *, out, heads, kv_heads, head_dim, scale=None,
              window=0, softcap=0.0, step, ws):
    """Unfused form (k arrives rotated). Not emitted for the cuda target: the fusion
    passes always produce rope_kv_write + cached_attention; kept for interface parity."""
    t = k.shape[0]
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, step.slot_mapping,
                                                     k.reshape(t, kv_heads, head_dim))
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, step.slot_mapping,
                                                     v.reshape(t, kv_heads, head_dim))
    cached_attention(q, k_cache, v_cache, out=out, heads=heads, kv_heads=kv_heads,
                     head_dim=head_dim, scale=scale, window=window, softcap=softcap,
                     step=step, ws=ws)


def cached_attention(q, k_cache, v_cache, *, out, heads, kv_heads, head_dim, scale=None,
                     window=0, softcap=0.0, step, ws):
    """Causal GQA attention of each sequence's new queries over its cached keys."""
    _unsupported("cached_attention", window=window, softcap=softcap)
    scale = head_dim ** -0.5 if scale is None else scale
    meta = device_meta(step)
    b = meta.context_lens.shape[0]
    # Decode (row i is sequence i) with split-K; batches past the workspace's max_seqs
    # (eager only: above the largest graph bucket) take the varlen kernel instead.
    if meta.max_rows <= 1 and q.shape[0] == b and b <= ws.max_seqs:
        _decode.decode_attention(q, k_cache, v_cache, meta.block_table, meta.context_lens, out,
                                 ws.partial_out, ws.partial_lse, heads=heads, kv_heads=kv_heads,
                                 head_dim=head_dim, scale=scale, splits=ws.splits(b, kv_heads))
    else:
        _prefill.prefill_attention(q, k_cache, v_cache, meta.block_table, meta.query_start,
                                   meta.context_lens, out, heads=heads, kv_heads=kv_heads,
                                   head_dim=head_dim, scale=scale, num_seqs=b,
                                   max_rows=meta.max_rows)

