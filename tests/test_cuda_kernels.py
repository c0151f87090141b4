"""The Triton kernels on a GPU at real model shapes (Llama-3.2-1B/3B, Llama-3.1-8B), bf16.

    TRITON_INTERPRET=0 pytest -m cuda        (bench/gpu_check.sh does this)

TRITON_INTERPRET must be 0: tests/conftest.py defaults it to 1 (the CPU tests).
"""
from __future__ import annotations

import pytest
import torch

from rustinfer.compiler import fused_ops, interpreter
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.kernels import triton_ops
from rustinfer.kernels.triton import INTERPRET

pytestmark = pytest.mark.cuda
BF16 = torch.bfloat16
LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
# (heads, kv_heads, head_dim, hidden, intermediate): 1B, 3B, 8B
SHAPES = {"1b": (32, 8, 64, 2048, 8192), "3b": (24, 8, 128, 3072, 8192),
          "8b": (32, 8, 128, 4096, 14336)}


@pytest.fixture(autouse=True)
def _gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    assert not INTERPRET, "run the cuda tests with TRITON_INTERPRET=0"
    torch.manual_seed(0)


def _err(got, want):
    if got.numel() == 0:                      # an empty sequence: nothing to compare
        return 0.0
    return (got.float() - want.float()).abs().max().item()


def _ws(max_context=8192):
    return triton_ops.Workspace(max_tokens=4096, max_context=max_context, max_heads=32,
                                max_kv_width=1024, max_head_dim=128, block_size=16,
                                device="cuda", max_seqs=64)


@pytest.mark.parametrize("model", sorted(SHAPES))
def test_norms_and_swiglu(model):
    *_, hidden, inter = SHAPES[model]
    fused = torch.randn(257, hidden + 8, device="cuda", dtype=BF16)
    a, b = fused[:, :hidden], torch.randn(257, hidden, device="cuda", dtype=BF16)
    w = (1 + 0.1 * torch.randn(hidden, device="cuda")).to(BF16)
    normed, residual = torch.empty_like(b), torch.empty_like(b)
    triton_ops.add_rms_norm(a, b, w, out=(normed, residual), eps=1e-5, ws=None)
    h = (a.float() + b.float()).to(BF16)
    assert torch.equal(residual, h)                      # the GPU rounds to nearest even
    want = interpreter.rms_norm(h.float(), w.float(), eps=1e-5, step=None)
    assert _err(normed, want) <= 2e-2 * want.abs().max().item()
    gu = torch.randn(129, 2 * inter, device="cuda", dtype=BF16)
    out = torch.empty(129, inter, device="cuda", dtype=BF16)
    triton_ops.swiglu(gu, out=out)
    want = fused_ops.swiglu(gu.float(), step=None)
    assert _err(out, want) <= 1e-2 * want.abs().max().item()


@pytest.mark.parametrize("model", ["1b", "8b"])
def test_rope_kv_write(model):
    heads, kvh, d, *_ = SHAPES[model]
    t, blocks = 300, 64
    qkv = torch.randn(t, (heads + 2 * kvh) * d, device="cuda", dtype=BF16)
    q, k, v = qkv.split([heads * d, kvh * d, kvh * d], dim=1)
    positions = torch.randint(0, 8192, (t,), device="cuda")
    slots = torch.randperm(blocks * 16, device="cuda")[:t]
    slots[7] = -1                                        # a padded row
    kc = torch.zeros(blocks, 16, kvh, d, device="cuda", dtype=BF16)
    vc = torch.zeros_like(kc)
    out = torch.empty(t, heads * d, device="cuda", dtype=BF16)
    step = StepInputs(token_ids=positions, positions=positions, query_start=[0, t],
                      context_lens=[t], block_tables=[[0]], slot_mapping=slots, block_size=16)
    triton_ops.rope_kv_write(q, k, v, positions, kc, vc, out=out, heads=heads, kv_heads=kvh,
                             head_dim=d, theta=500000.0, scaling=LLAMA3, step=step, ws=_ws())
    keep = slots >= 0
    ref_step = StepInputs(token_ids=positions[keep], positions=positions[keep],
                          query_start=[0, int(keep.sum())], context_lens=[0], block_tables=[[0]],
                          slot_mapping=slots[keep], block_size=16)
    rkc, rvc = torch.zeros(kc.shape, device="cuda"), torch.zeros(kc.shape, device="cuda")
    want = fused_ops.rope_kv_write(q[keep].float(), k[keep].float(), v[keep].float(),
                                   positions[keep], rkc, rvc, heads=heads, kv_heads=kvh,
                                   head_dim=d, theta=500000.0, scaling=LLAMA3, step=ref_step)
    assert _err(out[keep], want) <= 3e-2
    assert _err(kc, rkc) <= 3e-2 and torch.equal(vc.float(), rvc)


def _paged(seqs, kvh, d, blocks):
    kc = torch.randn(blocks, 16, kvh, d, device="cuda", dtype=BF16)
    vc = torch.randn_like(kc)
    perm, tables, starts = torch.randperm(blocks).tolist(), [], [0]
    for rows, ctx in seqs:
        n = -(-ctx // 16)
        tables.append(perm[:n])
        perm = perm[n:]
        starts.append(starts[-1] + rows)
    width = max(len(t) for t in tables)
    zeros = torch.zeros(starts[-1], dtype=torch.int64, device="cuda")
    step = StepInputs(token_ids=zeros, positions=zeros, query_start=starts,
                      context_lens=[c for _, c in seqs], block_tables=tables, slot_mapping=zeros,
                      block_size=16, block_table_tensor=torch.tensor(
                          [t + [0] * (width - len(t)) for t in tables], device="cuda"))
    return kc, vc, step


def _check_attention(seqs, model, skip):
    heads, kvh, d, *_ = SHAPES[model]
    kc, vc, step = _paged(seqs, kvh, d, blocks=1024)
    q = torch.randn(step.query_start[-1], heads * d, device="cuda", dtype=BF16)
    out = torch.full_like(q, float("nan"))
    triton_ops.cached_attention(q, kc, vc, out=out, heads=heads, kv_heads=kvh, head_dim=d,
                                step=step, ws=_ws())
    for b, (rows, ctx) in enumerate(seqs):
        lo, hi = step.query_start[b], step.query_start[b + 1]
        if b in skip:
            assert (out[lo:hi] == 0).all()
            continue
        sub = StepInputs(token_ids=q[lo:hi, 0].long(), positions=q[lo:hi, 0].long(),
                         query_start=[0, hi - lo], context_lens=[ctx],
                         block_tables=[step.block_tables[b]], slot_mapping=q[lo:hi, 0].long(),
                         block_size=16)
        want = interpreter.paged_attention(q[lo:hi].float(), kc.float(), vc.float(), sub,
                                           heads=heads, kv_heads=kvh, head_dim=d,
                                           scale=d ** -0.5)
        assert _err(out[lo:hi], want) <= 2e-2, (b, rows, ctx)


@pytest.mark.parametrize("model", sorted(SHAPES))
def test_decode_attention(model):
    _check_attention([(1, 4000), (1, 1), (1, 0), (1, 513), (1, 64)], model, skip={2})


@pytest.mark.parametrize("model", ["1b", "3b"])
def test_prefill_attention(model):
    _check_attention([(1000, 1500), (128, 128), (1, 700), (0, 0), (513, 513)], model, skip=())


# Llama-3.2-1B's linears as the cuda target runs them: (N, K) of out = x @ W^T.
GEMV_1B = {"qkv": (3072, 2048), "o": (2048, 2048), "gate_up": (16384, 2048),
           "down": (2048, 8192), "lm_head": (128256, 2048)}


@pytest.mark.parametrize("rows", [1, 8, 32])          # 8 and 32: the tensor-core (DOT) path
@pytest.mark.parametrize("name", sorted(GEMV_1B))
def test_gemv_matches_cublas(name, rows):
    from rustinfer.kernels.triton.gemv import gemv

    n, k = GEMV_1B[name]
    x = torch.randn(rows, k, device="cuda", dtype=BF16)
    w = (0.02 * torch.randn(n, k, device="cuda")).to(BF16)
    out = torch.full((rows, n), float("nan"), device="cuda", dtype=BF16)
    gemv(x, w, out)
    want = x.float() @ w.float().t()
    cublas = torch.mm(x, w.t())
    scale = want.abs().max().item()
    # both accumulate in fp32 and round once to bf16: each within ~1 bf16 ulp of fp32
    assert _err(out, want) <= 1e-2 * scale
    assert _err(out, cublas) <= 2e-2 * scale
    bias = torch.randn(n, device="cuda", dtype=BF16)
    gemv(x, w, out, bias)
    assert _err(out, torch.addmm(bias, x, w.t())) <= 2e-2 * (scale + bias.abs().max().item())


def test_linear_routes_decode_rows_to_the_gemv(monkeypatch):
    """The GEMV takes 1-row GEMMs (measured faster than cuBLAS; 8 and 16 rows were slower)."""
    from rustinfer.kernels.triton import gemv as gemv_mod

    calls = []
    monkeypatch.setattr(triton_ops, "TRITON_GEMV", True)
    monkeypatch.setattr(gemv_mod, "gemv", lambda *a, **kw: calls.append(a[0].shape[0]))
    w = torch.randn(64, 32, device="cuda", dtype=BF16)
    for rows in (1, 2, 16, 17):
        triton_ops.linear(torch.randn(rows, 32, device="cuda", dtype=BF16), w,
                          out=torch.empty(rows, 64, device="cuda", dtype=BF16))
    assert calls == [1]


# The GEMV's fused variants at Llama-3.2-1B's bs=1 shapes: (weight N, K, norm, swiglu,
# residual), as a decode step would chain them (residual adds write the residual stream in
# place; the next linear's norm reads it).
GEMV_FUSED_1B = {"qkv+norm": (3072, 2048, True, False, False),
                 "gate_up+norm+swiglu": (16384, 2048, True, True, False),
                 "o+residual": (2048, 2048, False, False, True),
                 "down+residual": (2048, 8192, False, False, True),
                 "lm_head+norm": (128256, 2048, True, False, False)}


@pytest.mark.parametrize("rows", [1, 32])              # 32: the tensor-core (DOT) path
@pytest.mark.parametrize("name", sorted(GEMV_FUSED_1B))
def test_gemv_fused_matches_unfused_torch(name, rows):
    from rustinfer.kernels.triton.gemv import gemv

    n, k, norm, swiglu, residual = GEMV_FUSED_1B[name]
    eps = 1e-5
    x = (3 * torch.randn(rows, k, device="cuda")).to(BF16)        # a residual stream's scale
    w = (0.02 * torch.randn(n, k, device="cuda")).to(BF16)
    nw = (1 + 0.1 * torch.randn(k, device="cuda")).to(BF16) if norm else None
    f = n // 2 if swiglu else n
    r = torch.randn(rows, f, device="cuda", dtype=BF16) if residual else None
    out = r.clone() if residual else torch.full((rows, f), float("nan"), device="cuda",
                                                dtype=BF16)
    gemv(x, w, out, norm_weight=nw, eps=eps, swiglu=swiglu, residual=out if residual else None)
    # the unfused computation in fp32 (the fused kernel keeps the normalized x in fp32)
    h = x.float()
    if norm:
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * nw.float()
    want = h @ w.float().t()
    if swiglu:
        want = torch.nn.functional.silu(want[:, :f]) * want[:, f:]
    if residual:
        want = want + r.float()
    scale = want.abs().max().item()
    assert _err(out, want) <= 1e-2 * scale, name                 # ~1 bf16 ulp of the output
    # and the unfused bf16 torch ops (normalized x rounded to bf16, cuBLAS, bf16 swiglu / add)
    hb = x
    if norm:
        hb = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
              * nw.float()).to(BF16)
    yb = torch.mm(hb, w.t())
    if swiglu:
        yb = torch.nn.functional.silu(yb[:, :f]) * yb[:, f:]
    if residual:
        yb = r + yb
    assert _err(out, yb) <= 3e-2 * scale, name


@pytest.mark.cuda
def test_gemv_pdl_chain_matches_plain_launches_eager_and_replayed():
    """Programmatic dependent launch lets each GEMV start before the previous one ends;
    its gdc_wait must still order every read of the previous output. A chain of dependent
    1B-shaped GEMVs (norm+qkv-like, swiglu, residual), launched with PDL eagerly and under
    CUDA graph replay, gives exactly what plain launches give."""
    from rustinfer.kernels.triton.gemv import gemv

    g = torch.Generator("cuda").manual_seed(0)
    h = 3 * torch.randn(1, 2048, device="cuda", generator=g).to(BF16)
    ln = (1 + 0.1 * torch.randn(2048, device="cuda", generator=g)).to(BF16)
    w_o = (0.02 * torch.randn(2048, 2048, device="cuda", generator=g)).to(BF16)
    w_gu = (0.02 * torch.randn(16384, 2048, device="cuda", generator=g)).to(BF16)
    w_d = (0.02 * torch.randn(2048, 8192, device="cuda", generator=g)).to(BF16)
    x0, x1 = (torch.empty(1, 2048, device="cuda", dtype=BF16) for _ in range(2))
    act = torch.empty(1, 8192, device="cuda", dtype=BF16)

    def chain(pdl):
        x0.copy_(h)
        for _ in range(4):      # each GEMV reads what the one before it wrote
            gemv(x0, w_o, x1, residual=x0, pdl=pdl)
            gemv(x1, w_gu, act, norm_weight=ln, eps=1e-5, swiglu=True, pdl=pdl)
            gemv(act, w_d, x0, residual=x1, pdl=pdl)
        return x0.clone()

    want = chain(False)
    assert torch.equal(chain(True), want)
    chain(True)                                   # warm-up before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain(True)
    for _ in range(3):
        x0.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(x0, want)


@pytest.mark.cuda
def test_gemv_rope_kv_matches_unfused_kernels():
    """Llama-3.2-1B's bs=1 qkv (32 q heads, 8 kv heads, head_dim 64) with its norm, RoPE
    (Llama 3 scaling) and the KV append fused, against the unfused path: Triton rms_norm,
    cuBLAS, the rope_kv kernel."""
    from rustinfer.kernels.triton.gemv import gemv_rope_kv

    heads, kvh, d, hidden = 32, 8, 64, 2048
    ws = triton_ops.Workspace(max_tokens=4, max_context=1024, max_heads=heads,
                              max_kv_width=kvh * d, max_head_dim=d, block_size=16,
                              device="cuda", scratch_width=hidden + (heads + 2 * kvh) * d)
    cos, sin = ws.rope_table(d, 500000.0, {"rope_type": "llama3", "factor": 32.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 8192})
    g = torch.Generator("cuda").manual_seed(0)
    x = (3 * torch.randn(1, hidden, device="cuda", generator=g)).to(BF16)
    w = (0.02 * torch.randn((heads + 2 * kvh) * d, hidden, device="cuda", generator=g)).to(BF16)
    ln = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=g)).to(BF16)
    positions = torch.tensor([700], device="cuda")
    slots = torch.tensor([37], device="cuda")
    caches = [torch.zeros(8, 16, kvh, d, device="cuda", dtype=BF16) for _ in range(4)]
    q_fused, q_parts = (torch.empty(1, heads * d, device="cuda", dtype=BF16) for _ in range(2))
    gemv_rope_kv(x, w, q_fused, positions, slots, cos, sin, caches[0], caches[1], heads=heads,
                 kv_heads=kvh, head_dim=d, norm_weight=ln, eps=1e-5)
    from rustinfer.kernels.triton import rms_norm as rms
    from rustinfer.kernels.triton import rope_kv

    normed = torch.empty_like(x)
    rms.rms_norm(x, ln, normed, eps=1e-5)
    qkv = normed @ w.t()
    q, k, v = qkv.split([heads * d, kvh * d, kvh * d], dim=-1)
    rope_kv.rope_kv_write(q, k, v, positions, slots, cos, sin, q_parts, caches[2], caches[3],
                          heads=heads, kv_heads=kvh, head_dim=d)
    scale = qkv.float().abs().max().item()
    assert _err(q_fused, q_parts.float()) <= 2e-2 * scale
    for fused, parts in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert _err(fused, parts.float()) <= 2e-2 * scale
        assert torch.equal(fused.abs().sum(dim=(2, 3)) > 0, parts.abs().sum(dim=(2, 3)) > 0)


def test_pdl_layer_chain_matches_plain_launches_eager_and_replayed():
    """A 1B bs=1 layer as the fused plan launches it, every kernel with programmatic
    dependent launch: norm+qkv+RoPE+KV append, decode attention (8 splits) and its merge
    signalling their dependents at once, o + residual, norm+gate_up+SwiGLU, down +
    residual. Three layers in a row (each reads the cache and the residual the last one wrote),
    eagerly and under CUDA graph replay, give exactly what plain launches give."""
    from rustinfer.kernels.triton.decode_attention import decode_attention
    from rustinfer.kernels.triton.gemv import gemv, gemv_rope_kv

    heads, kvh, d, hidden, ffn, splits = 32, 8, 64, 2048, 8192, 8
    g = torch.Generator("cuda").manual_seed(1)
    rnd = lambda *s, a=0.02: (a * torch.randn(*s, device="cuda", generator=g)).to(BF16)
    w_qkv, w_o = rnd((heads + 2 * kvh) * d, hidden), rnd(hidden, heads * d)
    w_gu, w_d = rnd(2 * ffn, hidden), rnd(hidden, ffn)
    ln1, ln2 = (1 + rnd(hidden, a=0.1).float()).to(BF16), (1 + rnd(hidden, a=0.1).float()).to(BF16)
    h0 = rnd(1, hidden, a=3.0)
    cos = torch.randn(600, d // 2, device="cuda", generator=g)
    sin = torch.randn(600, d // 2, device="cuda", generator=g)
    cache0 = [rnd(40, 16, kvh, d, a=1.0) for _ in range(2)]
    table = torch.arange(40, device="cuda").view(1, 40)
    h, x1 = torch.empty_like(h0), torch.empty_like(h0)
    q, attn = (torch.empty(1, heads * d, device="cuda", dtype=BF16) for _ in range(2))
    act = torch.empty(1, ffn, device="cuda", dtype=BF16)
    po = torch.empty(heads * splits * d, device="cuda")
    plse = torch.empty(heads * splits, device="cuda")
    caches = [c.clone() for c in cache0]
    pos, slot, ctx = (torch.empty(1, dtype=torch.int64, device="cuda") for _ in range(3))

    def layers(pdl):
        h.copy_(h0)
        for c, c0 in zip(caches, cache0):
            c.copy_(c0)
        for i in range(3):
            for t, value in ((pos, 500 + i), (slot, 500 + i), (ctx, 501 + i)):
                t.fill_(value)
            gemv_rope_kv(h, w_qkv, q, pos, slot, cos, sin, *caches, heads=heads, kv_heads=kvh,
                         head_dim=d, norm_weight=ln1, eps=1e-5, pdl=pdl)
            decode_attention(q, *caches, table, ctx, attn, po, plse, heads=heads, kv_heads=kvh,
                             head_dim=d, scale=d ** -0.5, splits=splits, pdl=pdl)
            gemv(attn, w_o, x1, residual=h, pdl=pdl)
            gemv(x1, w_gu, act, norm_weight=ln2, eps=1e-5, swiglu=True, pdl=pdl)
            gemv(act, w_d, h, residual=x1, pdl=pdl)
        return h.clone(), caches[0].clone(), caches[1].clone()

    want = layers(False)
    for got in layers(True), layers(True):
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        layers(True)
    for _ in range(3):
        h.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(h, want[0]) and torch.equal(caches[0], want[1])


@pytest.mark.parametrize("rows", [1, 32])
def test_chunked_argmax_at_llama3_vocab(rows):
    """Greedy sampling's argmax on the GPU (kernels/triton/argmax.py) == torch.argmax on a
    row of Llama 3's 128,256 bf16 logits, ties planted across chunks included."""
    from rustinfer.kernels.triton.argmax import argmax_rows
    from rustinfer.runtime.sampling import greedy_argmax

    g = torch.Generator(device="cuda").manual_seed(rows)
    x = torch.randn(rows, 128256, device="cuda", generator=g).to(torch.bfloat16)
    x[0, [100000, 4099, 70000]] = 60.0
    want = x.argmax(-1)
    assert want[0].item() == 4099
    assert torch.equal(argmax_rows(x), want)
    assert torch.equal(greedy_argmax(x), want)           # the sampler takes this path on a GPU
