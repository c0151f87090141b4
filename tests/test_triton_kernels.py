"""Every Triton kernel against its float32 reference, in Triton's CPU interpreter.

tests/conftest.py sets TRITON_INTERPRET=1 before any kernel module is imported.
Shapes are tiny on purpose (~3 ms per program instance in the interpreter): the
grids here are a few dozen programs each. Cases cover fp32 and bf16, GQA and MQA,
sizes that are not powers of two, strided column views of a fused buffer, ragged
lengths and padded rows. The same tests run on a GPU with `pytest -m cuda`
(tests/test_cuda_kernels.py, real shapes).
"""
from __future__ import annotations

import pytest
import torch

from rustinfer.compiler import fused_ops, interpreter
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.kernels import triton_ops
from rustinfer.kernels.triton import decode_attention, prefill_attention

TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _close(got, want, dtype, scale=1.0):
    err = (got.float() - want.float()).abs().max().item()
    assert err <= TOL[dtype] * max(1.0, scale), f"max abs error {err}"


def _rand(*shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def _columns(t, widths, dtype, seed=0):
    """Column views of one fused [t, sum(widths)] buffer, as the plan's split makes them."""
    fused = _rand(t, sum(widths), dtype=dtype, seed=seed)
    return fused, list(torch.split(fused, widths, dim=1))


# --- norms, swiglu, gather ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,offset", [(64, 0.0), (72, 0.0), (100, 1.0)])
def test_rms_norm(dtype, n, offset):
    _, (x, _) = _columns(3, [n, 5], dtype)                      # strided rows
    w = _rand(n, dtype=dtype, seed=1)
    out = torch.empty(3, n, dtype=dtype)
    triton_ops.rms_norm(x, w, out=out, eps=1e-5, offset=offset, ws=None)
    want = interpreter.rms_norm(x.float(), w.float(), eps=1e-5, offset=offset, step=None)
    _close(out, want, dtype, scale=want.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("keep_sum", [True, False])
def test_add_rms_norm(dtype, keep_sum):
    n = 48
    a, b = _rand(4, n, dtype=dtype), _rand(4, n, dtype=dtype, seed=2)
    w = _rand(n, dtype=dtype, seed=3)
    h = (a.float() + b.float()).to(dtype).float()               # the stored residual
    want = interpreter.rms_norm(h, w.float(), eps=1e-6, step=None)
    if keep_sum:
        normed, residual = torch.empty_like(a), torch.empty_like(a)
        triton_ops.add_rms_norm(a, b, w, out=(normed, residual), eps=1e-6, ws=None)
        # NOTE: the interpreter casts fp32 -> bf16 by truncation (a GPU rounds to nearest
        # even): allow one bf16 ulp (2^-7 relative).
        assert ((residual.float() - h).abs() <= h.abs() * 2 ** -7).all()
    else:
        normed = a                                              # in place over an input
        triton_ops.add_rms_norm(a, b, w, out=normed, eps=1e-6, ws=None)
    _close(normed, want, dtype, scale=want.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("f", [96, 40])
def test_swiglu(dtype, f):
    _, (gu, _) = _columns(5, [2 * f, 3], dtype)
    out = torch.empty(5, f, dtype=dtype)
    triton_ops.swiglu(gu, out=out)
    _close(out, fused_ops.swiglu(gu.float(), step=None), dtype, scale=4.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedding_and_gather_rows_copy_exactly(dtype):
    table = _rand(50, 24, dtype=dtype)
    ids = torch.tensor([3, 0, 49, 3, 17])
    out = torch.empty(5, 24, dtype=dtype)
    triton_ops.embedding(ids, table, out=out)
    assert torch.equal(out, table[ids])
    rows = torch.tensor([4, 1])
    picked = torch.empty(2, 24, dtype=dtype)
    triton_ops.gather_rows(out, rows, out=picked)
    assert torch.equal(picked, out[rows])


def test_launchers_reject_bad_layouts():
    x = torch.randn(4, 8).t()                                   # columns not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        triton_ops.rms_norm(x, torch.ones(4), out=torch.empty(8, 4), eps=1e-5, ws=None)
    with pytest.raises(ValueError, match=r"expected \[3, 32\], got \[3, 20\]"):
        triton_ops.swiglu(torch.randn(3, 20), out=torch.empty(3, 16))


# --- rope + kv write ------------------------------------------------------------------

LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def _ws(**kw):
    args = dict(max_tokens=16, max_context=128, max_heads=8, max_kv_width=64, max_head_dim=32,
                block_size=4, max_seqs=8)
    args.update(kw)
    return triton_ops.Workspace(**args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim,scaling", [
    (4, 2, 16, None), (8, 1, 16, LLAMA3), (3, 3, 32, None)])
def test_rope_kv_write(dtype, heads, kv_heads, head_dim, scaling):
    t, block_size, blocks = 5, 4, 6
    widths = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    _, (q, k, v) = _columns(t, widths, dtype)
    positions = torch.tensor([0, 7, 3, 60, 2])
    slots = torch.tensor([1, 9, -1, 22, 5])                     # row 2 is padding
    step = StepInputs(token_ids=torch.zeros(t, dtype=torch.int64), positions=positions,
                      query_start=[0, t], context_lens=[t], block_tables=[[0]],
                      slot_mapping=slots, block_size=block_size)
    kc = torch.zeros(blocks, block_size, kv_heads, head_dim, dtype=dtype)
    vc = torch.zeros_like(kc)
    out = torch.empty(t, heads * head_dim, dtype=dtype)
    triton_ops.rope_kv_write(q, k, v, positions, kc, vc, out=out, heads=heads,
                             kv_heads=kv_heads, head_dim=head_dim, theta=10000.0,
                             scaling=scaling, step=step, ws=_ws())

    keep = torch.tensor([0, 1, 3, 4])                            # the reference skips padding
    ref_step = StepInputs(token_ids=step.token_ids[keep], positions=positions[keep],
                          query_start=[0, 4], context_lens=[4], block_tables=[[0]],
                          slot_mapping=slots[keep], block_size=block_size)
    rkc = torch.zeros(kc.shape)
    rvc = torch.zeros(kc.shape)
    want = fused_ops.rope_kv_write(q[keep].float(), k[keep].float(), v[keep].float(),
                                   positions[keep], rkc, rvc, heads=heads, kv_heads=kv_heads,
                                   head_dim=head_dim, theta=10000.0, scaling=scaling,
                                   step=ref_step)
    _close(out[keep], want, dtype, scale=4.0)
    _close(kc, rkc, dtype, scale=4.0)                           # slot of row 2 untouched
    assert torch.equal(vc.float(), rvc)                          # v is copied exactly


def test_rope_alone_matches_reference():
    x = _rand(3, 4 * 16, dtype=torch.float32)
    pos = torch.tensor([5, 0, 9])
    out = torch.empty_like(x)
    triton_ops.rope(x, pos, out=out, heads=4, head_dim=16, theta=500000.0, scaling=LLAMA3,
                    ws=_ws())
    want = interpreter.rope(x, pos, heads=4, head_dim=16, theta=500000.0, scaling=LLAMA3,
                            step=None)
    _close(out, want, torch.float32)


# --- attention ------------------------------------------------------------------------

def _paged(seqs, kv_heads, head_dim, block_size, dtype, blocks=16, seed=0):
    """A filled paged cache and per-sequence tables: seqs = [(new_rows, context_len)]."""
    kc = _rand(blocks, block_size, kv_heads, head_dim, dtype=dtype, seed=seed)
    vc = _rand(blocks, block_size, kv_heads, head_dim, dtype=dtype, seed=seed + 1)
    perm = torch.randperm(blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    tables, starts = [], [0]
    for rows, ctx in seqs:
        n = -(-ctx // block_size)
        tables.append(perm[:n])
        perm = perm[n:]
        starts.append(starts[-1] + rows)
    width = max(len(t) for t in tables)
    step = StepInputs(token_ids=torch.zeros(starts[-1], dtype=torch.int64),
                      positions=torch.zeros(starts[-1], dtype=torch.int64),
                      query_start=starts, context_lens=[c for _, c in seqs],
                      block_tables=tables, slot_mapping=torch.zeros(starts[-1], dtype=torch.int64),
                      block_size=block_size,
                      block_table_tensor=torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                                      dtype=torch.int64))
    return kc, vc, step


def _reference(q, kc, vc, step, heads, kv_heads, head_dim, skip=()):
    """interpreter.paged_attention over the rows of the sequences not in `skip`."""
    keep = [b for b in range(step.num_seqs) if b not in skip]
    rows = torch.cat([torch.arange(step.query_start[b], step.query_start[b + 1]) for b in keep])
    starts = [0]
    for b in keep:
        starts.append(starts[-1] + step.query_start[b + 1] - step.query_start[b])
    sub = StepInputs(token_ids=rows, positions=rows, query_start=starts,
                     context_lens=[step.context_lens[b] for b in keep],
                     block_tables=[step.block_tables[b] for b in keep], slot_mapping=rows,
                     block_size=step.block_size)
    out = interpreter.paged_attention(q[rows].float(), kc.float(), vc.float(), sub, heads=heads,
                                      kv_heads=kv_heads, head_dim=head_dim,
                                      scale=head_dim ** -0.5)
    return rows, out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size,sms", [
    (4, 2, 16, 4, 1),     # GQA, one split: the DIRECT path
    (4, 1, 32, 16, 4),    # MQA, split-K with an LSE merge
    (6, 3, 16, 4, 8),     # group of 2, more splits than some sequences have tiles
])
def test_decode_attention(dtype, heads, kv_heads, head_dim, block_size, sms):
    seqs = [(1, 70), (1, 1), (1, 0), (1, 33)]                   # row 2 is a padded row
    kc, vc, step = _paged(seqs, kv_heads, head_dim, block_size, dtype, blocks=40)
    q = _rand(4, heads * head_dim, dtype=dtype, seed=5)
    out = torch.full_like(q, float("nan"))
    ws = _ws(num_sms=sms)
    triton_ops.cached_attention(q, kc, vc, out=out, heads=heads, kv_heads=kv_heads,
                                head_dim=head_dim, step=step, ws=ws)
    rows, want = _reference(q, kc, vc, step, heads, kv_heads, head_dim, skip=(2,))
    _close(out[rows], want, dtype)
    assert torch.equal(out[2].float(), torch.zeros(heads * head_dim))


def test_decode_split_count_is_fixed_by_host_sizes():
    assert decode_attention.num_splits(1, 8, 4096, 132) == 33      # Llama-3.2-1B, bs=1
    assert decode_attention.num_splits(128, 8, 4096, 132) == 1
    assert decode_attention.num_splits(1, 8, 64, 132) == 1         # one key tile at most


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 1)])
def test_prefill_attention_ragged_with_cached_prefix(dtype, heads, kv_heads):
    head_dim, block_size = 16, 4
    # a whole prompt, a chunk after an 8-token prefix, a decode token, a padded entry,
    # and a prompt longer than one 64-row tile
    seqs = [(5, 5), (3, 11), (1, 7), (0, 0), (70, 72)]
    kc, vc, step = _paged(seqs, kv_heads, head_dim, block_size, dtype, blocks=40)
    t = step.query_start[-1]
    q = _rand(t, heads * head_dim, dtype=dtype, seed=6)
    out = torch.empty_like(q)
    triton_ops.cached_attention(q, kc, vc, out=out, heads=heads, kv_heads=kv_heads,
                                head_dim=head_dim, step=step, ws=_ws())
    rows, want = _reference(q, kc, vc, step, heads, kv_heads, head_dim, skip=(3,))
    _close(out[rows], want, dtype)
    assert prefill_attention.BLOCK_M < 70                        # the test spans two tiles


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_per_head(dtype):
    """QK-norm: each head's [D] slice of a [T, H*D] row (a strided split view) on its own."""
    heads, d = 4, 16
    _, (x, _) = _columns(3, [heads * d, 8], dtype)
    w = _rand(d, dtype=dtype, seed=4)
    out = torch.empty(3, heads * d, dtype=dtype)
    triton_ops.rms_norm(x, w, out=out, eps=1e-6, heads=heads, ws=None)
    want = interpreter.rms_norm(x.float().view(3, heads, d), w.float(), eps=1e-6, step=None)
    _close(out, want.reshape(3, heads * d), dtype, scale=want.abs().max().item())


def test_decode_batch_above_workspace_takes_the_varlen_kernel():
    """More decode rows than the split-K scratch holds (an eager step past the largest
    graph bucket): the varlen kernel serves them, same answer."""
    seqs = [(1, 9), (1, 20), (1, 3)]
    kc, vc, step = _paged(seqs, 2, 16, 4, torch.float32, blocks=16)
    q = _rand(3, 4 * 16, dtype=torch.float32, seed=7)
    out = torch.empty_like(q)
    triton_ops.cached_attention(q, kc, vc, out=out, heads=4, kv_heads=2, head_dim=16,
                                step=step, ws=_ws(max_seqs=2))
    rows, want = _reference(q, kc, vc, step, 4, 2, 16)
    _close(out[rows], want, torch.float32)
