"""The op interface generated plans call, implemented with Triton kernels (the cuda target).

Same names and signatures as rustinfer.kernels.torch_ops (a test checks), so a
plan runs unchanged with `K = triton_ops`. GEMMs go through torch (cuBLAS on a
GPU); everything else is a kernel in rustinfer.kernels.triton.

RUSTINFER_TRITON_GEMV=1 (read once, at import) routes decode-sized GEMMs (x with
<= 16 rows, cuda tensors) to the Triton GEMV (triton/gemv.py) instead of cuBLAS.
Opt-in until measured: off by default, and `linear` is then exactly torch.mm /
addmm. bench/gpu_gemv.py compares the two (and flips `TRITON_GEMV` in-process).

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

from .rope_tables import inv_freq
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
            query_start=torch.tensor(qs, dtype=torch.int64, device=dev),
            context_lens=torch.tensor(step.context_lens, dtype=torch.int64, device=dev),
            block_table=table.to(dev).contiguous(),
            max_rows=max((qs[i + 1] - qs[i] for i in range(len(qs) - 1)), default=0))
        step.device_meta = meta
    return meta


class Workspace:
    """Kernel scratch for one executor, allocated once: rope tables and split-K partials."""

    def __init__(self, *, max_tokens: int, max_context: int, max_heads: int, max_kv_width: int,
                 max_head_dim: int, block_size: int, dtype=torch.float32, device="cpu",
                 max_seqs: int = 256, num_sms: int | None = None):
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
        self._rope_tables: dict = {}

    def splits(self, batch: int, kv_heads: int) -> int:
        return _decode.num_splits(batch, kv_heads, self.max_context, self.num_sms)

    def rope_table(self, head_dim: int, theta: float, scaling) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [max_context, head_dim // 2] float32 (the half table: rotate-half repeats it)."""
        key = (head_dim, theta, repr(scaling))
        if key not in self._rope_tables:
            pos = torch.arange(self.max_context, dtype=torch.float32)
            freqs = pos[:, None] * inv_freq(head_dim, theta, scaling)[None, :]
            self._rope_tables[key] = (freqs.cos().to(self.device).contiguous(),
                                      freqs.sin().to(self.device).contiguous())
        return self._rope_tables[key]


def embedding(ids, table, *, out):
    _gather.gather_rows(table, ids, out)


# Opt-in until bench/gpu_gemv.py has measured the GEMV against cuBLAS on a GPU.
TRITON_GEMV = os.environ.get("RUSTINFER_TRITON_GEMV", "0") == "1"


def linear(x, weight, bias=None, *, out):
    if TRITON_GEMV and x.shape[0] <= _gemv.MAX_ROWS and x.is_cuda:
        _gemv.gemv(x, weight, out, bias)
    elif bias is None:
        torch.mm(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)


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

