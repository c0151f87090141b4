"""The decode GEMV (kernels/triton/gemv.py) against float64 F.linear, in Triton's CPU interpreter.

tests/conftest.py sets TRITON_INTERPRET=1 before the kernel module is imported.
Most cases pass a small explicit config so that a handful of programs walk several
K tiles with ragged tails in both N and K (the default config picks one-row programs
at these sizes: slower to interpret, and a single K tile). The GPU twin at
Llama-3.2-1B shapes is in tests/test_cuda_kernels.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rustinfer.kernels import triton_ops
from rustinfer.kernels.triton import next_pow2
from rustinfer.kernels.triton.gemv import (FMA_ROWS, MAX_ROWS, GemvConfig, gemv,
                                           gemv_config)

# Relative to the output's scale. bf16: the interpreter truncates the fp32 sum to bf16
# (a GPU rounds), one ulp is 2^-7 relative.
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2}
SMALL = GemvConfig(block_n=8, block_k=64, num_warps=4, num_stages=2)
# the tensor-core path (above FMA_ROWS rows by default) at small shapes: any row count
SMALL_DOT = GemvConfig(block_n=16, block_k=64, num_warps=4, num_stages=2, dot=True)


def _rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def _check(out, x, w, b, dtype):
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    err = (out.double() - want).abs().max().item()
    assert err <= TOL[dtype] * want.abs().max().item(), f"max abs error {err}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 3, 16, 20, 32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("config", [SMALL, SMALL_DOT], ids=["fma", "dot"])
def test_gemv_matches_reference(dtype, m, bias, config):
    n, k = 21, 300                                  # 2 full + 1 ragged N block; 4 + 1 K tiles
    # x and out are column views of wider buffers (row strides != their widths), as a
    # plan's split views are.
    x = _rand(m, k + 5, dtype=dtype, seed=0)[:, :k]
    w = _rand(n, k, dtype=dtype, seed=1)
    b = _rand(n, dtype=dtype, seed=2) if bias else None
    out = torch.full((m, n + 3), float("nan"), dtype=dtype)
    gemv(x, w, out[:, :n], b, config=config)
    _check(out[:, :n], x, w, b, dtype)
    assert out[:, n:].isnan().all()                 # nothing written past the view


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_default_config_and_fp32_out(dtype):
    """gemv_config's own choice at an odd shape, into an fp32 out (a cast at the store)."""
    x, w = _rand(2, 37, dtype=dtype, seed=3), _rand(13, 37, dtype=dtype, seed=4)
    out = torch.empty(2, 13)
    gemv(x, w, out)
    _check(out, x, w, None, torch.float32)          # bf16 products are exact in fp32


def test_gemv_rejects_bad_arguments():
    x, w, out = torch.randn(2, 8), torch.randn(5, 8), torch.empty(2, 5)
    with pytest.raises(ValueError, match=r"gemv weight: expected \[5, 8\], got \[5, 7\]"):
        gemv(x, torch.randn(5, 7), out)
    with pytest.raises(ValueError, match=r"gemv out: expected \[2, 5\], got \[2, 4\]"):
        gemv(x, w, torch.empty(2, 4))
    with pytest.raises(ValueError, match="columns must be contiguous"):
        gemv(x, torch.randn(8, 5).t(), out)                 # a transposed weight
    with pytest.raises(ValueError, match="must share one of"):
        gemv(x, w.bfloat16(), out)
    with pytest.raises(ValueError, match="must share one of"):
        gemv(x.long(), w.long(), out)
    with pytest.raises(ValueError, match=r"gemv bias: expected contiguous float \[5\]"):
        gemv(x, w, out, torch.randn(4))
    with pytest.raises(ValueError, match=r"expected x \[M, K\]"):
        gemv(torch.randn(8), w, out)
    with pytest.raises(ValueError, match=r"33 rows; the GEMV serves 1..32 \(use torch.mm\)"):
        gemv(torch.randn(33, 8), w, torch.empty(33, 5))


LLAMA_1B = [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048)]


def test_gemv_config_is_small_deterministic_and_bounded():
    shapes = LLAMA_1B + [(1, 1), (13, 37), (21, 300), (960, 576), (49152, 576), (7, 100000)]
    for n, k in shapes:
        for m in range(1, FMA_ROWS + 1):
            cfg = gemv_config(n, k, m)
            assert cfg == gemv_config(n, k, m)               # a pure function of the shape
            assert cfg.block_n <= next_pow2(n) and cfg.block_k <= next_pow2(k), (n, k, m, cfg)
            for block in (cfg.block_n, cfg.block_k):
                assert block & (block - 1) == 0              # powers of 2 (GPU aranges)
            assert cfg.num_warps in (4, 8) and cfg.num_stages == 1  # measured: no pipelining
    # Llama-3.2-1B at bs=1: >= 512 programs for the 2048-row outputs, 16-row ones above
    assert [gemv_config(n, k, 1).block_n for n, k in LLAMA_1B] == [4, 4, 16, 4, 16]
    with pytest.raises(ValueError):
        gemv_config(2048, 2048, 0)


def test_gemv_config_above_fma_rows_is_tensor_cores():
    """Above FMA_ROWS rows the tl.dot path: tiles of >= 16 W rows (tl.dot's minimum) and
    >= 16 K, pipelined; >= 256 programs where the weight has the rows for it."""
    for n, k in LLAMA_1B + [(1, 1), (13, 37), (960, 576)]:
        for m in (FMA_ROWS + 1, 16, 24, MAX_ROWS):
            for swiglu in (False, True):
                cfg = gemv_config(n, k, m, swiglu=swiglu)
                assert cfg.dot and cfg.block_n >= 16 and cfg.block_k >= 16, (n, k, m, cfg)
                assert cfg.block_k <= max(16, next_pow2(k)) and cfg.num_stages > 1
                rows = 2 * n if swiglu else n
                if rows >= 256 * 64:
                    assert -(-rows // (cfg.block_n * (2 if swiglu else 1))) >= 256
    assert not any(gemv_config(n, k, m).dot for n, k in LLAMA_1B
                   for m in range(1, FMA_ROWS + 1))


def test_gemv_config_swiglu_splits_the_unfused_tile():
    """swiglu: n is F and a program reads BLOCK_N gate + BLOCK_N up rows, so the config is the
    unfused [2F, K] GEMV's with BLOCK_K halved (as many weights per tile, twice the rows,
    half the programs; measured in a CUDA graph on an H200, see gemv_config)."""
    for f, k in [(8192, 2048), (4096, 4096), (7168, 2048), (1, 1), (19, 37), (1536, 576)]:
        for m in (1, 3, FMA_ROWS):
            fused, plain = gemv_config(f, k, m, swiglu=True), gemv_config(2 * f, k, m)
            assert fused == plain._replace(block_n=min(plain.block_n, next_pow2(f)),
                                           block_k=max(min(16, plain.block_k),
                                                       plain.block_k // 2)), (f, k, m)
            assert fused.block_n <= next_pow2(f) and fused.block_k <= next_pow2(k)
            if plain.block_k >= 32 and plain.block_n <= next_pow2(f):
                assert 2 * fused.block_n * fused.block_k == plain.block_n * plain.block_k
    # Llama-3.2-1B gate_up at bs=1: the [16384, 2048] tile of 16 x 512 as 16 + 16 rows x 256
    assert gemv_config(8192, 2048, 1, swiglu=True) == GemvConfig(16, 256, 8, 1)


def test_linear_keeps_torch_unless_enabled_on_cuda(monkeypatch):
    """On or off, linear leaves CPU tensors to torch.mm / addmm, bit for bit (the GEMV
    takes 1-row GEMMs on cuda tensors only)."""
    x, w, b = torch.randn(3, 40), torch.randn(24, 40), torch.randn(24)
    for flag in (False, True):
        monkeypatch.setattr(triton_ops, "TRITON_GEMV", flag)
        out, out_b = torch.empty(3, 24), torch.empty(3, 24)
        triton_ops.linear(x, w, out=out)
        triton_ops.linear(x, w, b, out=out_b)
        assert torch.equal(out, torch.mm(x, w.t()))
        assert torch.equal(out_b, torch.addmm(b, x, w.t()))


# ---- fused prologue / epilogues: norm_weight, swiglu, residual ----

EPS = 0.5       # large enough that dropping eps from rsqrt(mean(x^2) + eps) shows
# name: (norm offset or None, swiglu, bias, residual: None / "view" of another buffer /
# "out": out is the residual itself, updated in place)
FUSED = {"norm": (0.0, False, False, None), "norm_offset1": (1.0, False, False, None),
         "swiglu": (None, True, False, None), "swiglu_bias": (None, True, True, None),
         "residual": (None, False, True, "view"), "residual_in_place": (None, False, False, "out"),
         "norm_swiglu": (0.0, True, True, None), "norm_bias": (1.0, False, True, None),
         "norm_residual": (0.0, False, False, "out")}


def _fused_reference(x, w, b, nw, offset, swiglu, r):
    """The unfused ops in float64: rms_norm, linear, swiglu, residual add."""
    x = x.double()
    if nw is not None:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * (nw.double() + offset)
    y = F.linear(x, w.double(), None if b is None else b.double())
    if swiglu:
        gate, up = y.chunk(2, dim=1)
        y = F.silu(gate) * up
    return y if r is None else y + r.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 3, 16, 25])
@pytest.mark.parametrize("variant", sorted(FUSED))
@pytest.mark.parametrize("config", [SMALL, SMALL_DOT], ids=["fma", "dot"])
def test_gemv_fused_matches_reference(dtype, m, variant, config):
    offset, swiglu, bias, residual = FUSED[variant]
    n, k = 37, 100                                 # odd: ragged N block (8) and K tile (64)
    rows_w = 2 * n if swiglu else n
    # Rows of different RMS (2, 3, ...), none near 1: a missing or shared rsqrt is off by 2x+
    scale = (2.0 + torch.arange(m, dtype=torch.float32))[:, None]
    x = (_rand(m, k + 5, dtype=torch.float32, seed=0) * scale).to(dtype)[:, :k]
    w = _rand(rows_w, k, dtype=dtype, seed=1)
    b = _rand(rows_w, dtype=dtype, seed=2) if bias else None
    nw = None
    if offset is not None:       # (1 + w) style weights near 0 with offset 1, else around 1
        nw = (_rand(k, dtype=torch.float32, seed=3) * (0.3 if offset else 1.0)
              + (0.0 if offset else 1.0)).to(dtype)
    out = torch.full((m, n + 3), float("nan"), dtype=dtype)
    r = None
    if residual is not None:      # the size of x @ W^T (~ 10 at K = 100): missing it shows
        r = (10 * _rand(m, n, dtype=torch.float32, seed=4)).to(dtype)
        if residual == "out":
            out[:, :n] = r
            res_arg = out[:, :n]
        else:
            res_arg = torch.zeros(m, n + 7, dtype=dtype)[:, 2:n + 2]
            res_arg.copy_(r)
    gemv(x, w, out[:, :n], b, norm_weight=nw, eps=EPS if nw is not None else 0.0,
         offset=offset or 0.0, swiglu=swiglu, residual=None if r is None else res_arg,
         config=config)
    want = _fused_reference(x, w, b, nw, offset, swiglu, r)
    err = (out[:, :n].double() - want).abs().max().item()
    assert err <= TOL[dtype] * want.abs().max().item(), f"max abs error {err}"
    assert out[:, n:].isnan().all()                 # nothing written past the view
    if residual == "view":
        assert torch.equal(res_arg, r)              # the residual is only read


def test_gemv_fused_default_config():
    """gemv_config's own (swiglu) choice at odd shapes; bf16 weights into an fp32 out."""
    x = (3 * _rand(2, 37, dtype=torch.float32, seed=5)).bfloat16()
    w, b = _rand(38, 37, dtype=torch.bfloat16, seed=6), _rand(38, dtype=torch.bfloat16, seed=7)
    nw = _rand(37, dtype=torch.bfloat16, seed=8)
    out = torch.empty(2, 19)
    gemv(x, w, out, b, norm_weight=nw, eps=EPS, swiglu=True)
    want = _fused_reference(x, w, b, nw, 0.0, True, None)
    assert (out.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    r = _rand(2, 38, dtype=torch.float32, seed=9)
    out = r.clone()
    gemv(x, w, out, norm_weight=nw, eps=EPS, offset=1.0, residual=out)
    want = _fused_reference(x, w, None, nw, 1.0, False, r)
    assert (out.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_gemv_fused_rejects_bad_arguments():
    x, w, out = torch.randn(2, 8), torch.randn(10, 8), torch.empty(2, 5)
    with pytest.raises(ValueError, match=r"gemv weight: swiglu expects gate_up \[2F, 8\].*"
                                         r"got \[9, 8\] \(an odd row count\)"):
        gemv(x, torch.randn(9, 8), out, swiglu=True)
    with pytest.raises(ValueError, match="swiglu and residual do not combine"):
        gemv(x, w, out, swiglu=True, residual=torch.empty(2, 5))
    with pytest.raises(ValueError, match=r"gemv out: expected \[2, 5\], got \[2, 10\]"):
        gemv(x, w, torch.empty(2, 10), swiglu=True)               # out is [M, F]
    with pytest.raises(ValueError, match=r"gemv bias: expected contiguous float \[10\]"):
        gemv(x, w, out, torch.randn(5), swiglu=True)              # bias is [2F]
    with pytest.raises(ValueError, match=r"gemv norm_weight: expected contiguous float \[8\], "
                                         r"got \[10\]"):
        gemv(x, w, torch.empty(2, 10), norm_weight=torch.randn(10))
    with pytest.raises(ValueError, match=r"gemv norm_weight: expected contiguous float \[8\]"):
        gemv(x, w, torch.empty(2, 10), norm_weight=torch.randn(16)[::2])
    with pytest.raises(ValueError, match=r"gemv norm_weight: .* torch.int64"):
        gemv(x, w, torch.empty(2, 10), norm_weight=torch.ones(8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"gemv residual: expected \[2, 10\], got \[2, 5\]"):
        gemv(x, w, torch.empty(2, 10), residual=torch.empty(2, 5))
    with pytest.raises(ValueError, match="gemv residual: columns must be contiguous"):
        gemv(x, w, torch.empty(2, 10), residual=torch.empty(10, 2).t())
    with pytest.raises(ValueError, match="gemv residual: dtype torch.bfloat16 differs"):
        gemv(x, w, torch.empty(2, 10), residual=torch.empty(2, 10, dtype=torch.bfloat16))


AOT_FUSED = """
import torch
from rustinfer.kernels.triton import record_launches
from rustinfer.kernels.triton.aot import compile_all, specializations
from rustinfer.kernels.triton.gemv import gemv
e = lambda *s: torch.empty(*s, dtype=torch.bfloat16, device="meta")
with record_launches() as rec:       # 1B: norm+qkv, norm+gate_up+swiglu, o / down+residual
    gemv(e(1, 2048), e(3072, 2048), e(1, 3072), norm_weight=e(2048), eps=1e-5)
    gemv(e(16, 2048), e(16384, 2048), e(16, 8192), e(16384), norm_weight=e(2048), eps=1e-5,
         swiglu=True)
    gemv(e(1, 8192), e(2048, 8192), e(1, 2048), residual=e(1, 2048))
    gemv(e(16, 2048), e(2048, 2048), e(16, 2048), e(2048), norm_weight=e(2048),
         residual=e(16, 2048))
    # qkv with RoPE and the KV append in the epilogue (1B: 32 q heads, 8 kv heads, d 64)
    from rustinfer.kernels.triton import gemv as gemv_mod
    from rustinfer.kernels.triton.decode_attention import decode_attention
    from rustinfer.kernels.triton.gemv import gemv_rope_kv
    i = lambda *s: torch.empty(*s, dtype=torch.int64, device="meta")
    f = lambda *s: torch.empty(*s, dtype=torch.float32, device="meta")
    gemv_rope_kv(e(1, 2048), e(3072, 2048), e(1, 2048), i(1), i(1), f(600, 32), f(600, 32),
                 e(40, 16, 8, 64), e(40, 16, 8, 64), heads=32, kv_heads=8, head_dim=64,
                 norm_weight=e(2048), eps=1e-5)
    # programmatic dependent launch: griddepcontrol, without and with L2 prefetches
    # (inline PTX)
    gemv(e(1, 2048), e(16384, 2048), e(1, 8192), norm_weight=e(2048), eps=1e-5, swiglu=True,
         pdl=True)
    gemv_mod.PDL_PREFETCH = True
    gemv(e(1, 2048), e(2048, 2048), e(1, 2048), residual=e(1, 2048), pdl=True)
    gemv_mod.PDL_PREFETCH = False
    # decode attention + merge launched with PDL, signalling their dependents early
    decode_attention(e(1, 2048), e(40, 16, 8, 64), e(40, 16, 8, 64), i(1, 40), i(1), e(1, 2048),
                     f(64 * 8 * 64), f(64 * 8), heads=32, kv_heads=8, head_dim=64, scale=0.125,
                     splits=8, pdl=True)
    # 32 rows on tensor cores (DOT): norm + gate_up + SwiGLU, down + residual, qkv + RoPE
    gemv(e(32, 2048), e(16384, 2048), e(32, 8192), norm_weight=e(2048), eps=1e-5,
         swiglu=True)
    gemv(e(32, 8192), e(2048, 8192), e(32, 2048), residual=e(32, 2048))
    gemv_rope_kv(e(32, 2048), e(3072, 2048), e(32, 2048), i(32), i(32), f(600, 32),
                 f(600, 32), e(40, 16, 8, 64), e(40, 16, 8, 64), heads=32, kv_heads=8,
                 head_dim=64, norm_weight=e(2048), eps=1e-5)
for key, seconds, size in compile_all(specializations(rec)):
    print("ok", key)
"""


def test_gemv_fused_variants_compile_for_sm90(tmp_path):
    """Each fused flag, at M = 1 (FMA) and 16 and 32 (tensor cores), through the GPU compiler
    (what the interpreter cannot check); kernels/triton/aot.py's path, in a subprocess
    without TRITON_INTERPRET."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")      # compile for real, every run
    done = subprocess.run([sys.executable, "-c", AOT_FUSED], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("ok gemv._gemv_kernel")]
    assert len(lines) == 10, done.stdout
    for flag in ("HAS_NORM=True", "SWIGLU=True", "HAS_RESIDUAL=True", "HAS_BIAS=True",
                 "PDL=True", "ROPE=True", "PREFETCH=True"):
        assert any(flag in line for line in lines), flag
    attention = [line for line in done.stdout.splitlines()
                 if line.startswith("ok decode_attention.")]
    assert len(attention) == 2 and all("PDL=True" in line for line in attention), done.stdout
    assert sum("DOT=True" in line for line in lines) == 5, lines     # the 16- and 32-row ones


# ---- gemv_rope_kv: the qkv GEMV with RoPE and the KV-cache append in its epilogue ----

def _rope_tables(head_dim, positions=32):
    from rustinfer.kernels.rope_tables import inv_freq

    freqs = torch.arange(positions, dtype=torch.float32)[:, None] * \
        inv_freq(head_dim, 10000.0, None)[None, :]
    return freqs.cos().contiguous(), freqs.sin().contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim,m", [(4, 2, 16, 1), (3, 1, 12, 3),
                                                       (2, 2, 8, 2), (2, 1, 32, 3)])
@pytest.mark.parametrize("config", [None, SMALL_DOT], ids=["default", "dot"])
def test_gemv_rope_kv_matches_reference(dtype, heads, kv_heads, head_dim, m, config):
    """q rotated into q_out; k rotated and v as is at each row's slot; a padded row (slot
    -1) writes no cache slot. Odd K, a head_dim whose half (6) is not a power of 2, GQA and
    MHA, the norm folded in with an offset, a bias, several rows at different positions."""
    from rustinfer.kernels.triton.gemv import gemv_rope_kv

    k, hd = 37, head_dim
    rows_w = (heads + 2 * kv_heads) * hd
    x = (3 * _rand(m, k, dtype=torch.float32, seed=1)).to(dtype)
    w = (0.3 * _rand(rows_w, k, dtype=torch.float32, seed=2)).to(dtype)
    b = _rand(rows_w, dtype=dtype, seed=3)
    nw = (1 + 0.2 * _rand(k, dtype=torch.float32, seed=4)).to(dtype)
    positions = torch.tensor([5, 0, 9][:m])
    slots = torch.tensor([7, -1, 3][:m])
    cos, sin = _rope_tables(hd)
    k_cache = torch.zeros(4, 4, kv_heads, hd, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    q = torch.full((m, heads * hd), float("nan"), dtype=dtype)
    gemv_rope_kv(x, w, q, positions, slots, cos, sin, k_cache, v_cache, heads=heads,
                 kv_heads=kv_heads, head_dim=hd, bias=b, norm_weight=nw, eps=EPS, offset=1.0,
                 config=config)

    xd = x.double()
    normed = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + EPS) * (nw.double() + 1.0)
    qkv = normed @ w.double().t() + b.double()
    c, s = cos.double()[positions][:, None, :], sin.double()[positions][:, None, :]

    def rot(t, n):
        t = t.reshape(m, n, hd)
        x1, x2 = t[..., :hd // 2], t[..., hd // 2:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1).reshape(m, n * hd)

    want_q = rot(qkv[:, :heads * hd], heads)
    want_k = rot(qkv[:, heads * hd:(heads + kv_heads) * hd], kv_heads)
    want_v = qkv[:, (heads + kv_heads) * hd:]
    tol = TOL[dtype] * 4 * qkv.abs().max().item()
    assert (q.double() - want_q).abs().max().item() <= tol
    kf, vf = k_cache.view(-1, kv_heads * hd).double(), v_cache.view(-1, kv_heads * hd).double()
    for i in range(m):
        if slots[i] >= 0:
            assert (kf[slots[i]] - want_k[i]).abs().max().item() <= tol
            assert (vf[slots[i]] - want_v[i]).abs().max().item() <= tol
    written = sorted(int(sl) for sl in slots if sl >= 0)
    assert (kf.abs().sum(-1) > 0).nonzero().flatten().tolist() == written
    assert (vf.abs().sum(-1) > 0).nonzero().flatten().tolist() == written


def test_gemv_rope_kv_rejects_bad_arguments():
    from rustinfer.kernels.triton.gemv import gemv_rope_kv

    x, w = torch.randn(1, 8), torch.randn((4 + 2 * 2) * 4, 8)
    pos, slots = torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
    cos, sin = _rope_tables(4)
    kc = torch.zeros(2, 4, 2, 4)
    q = torch.empty(1, 16)
    with pytest.raises(ValueError, match="gemv_rope_kv weight"):
        gemv_rope_kv(x, w[:-4], q, pos, slots, cos, sin, kc, kc.clone(), heads=4, kv_heads=2,
                     head_dim=4)
    with pytest.raises(ValueError, match="k_cache"):
        gemv_rope_kv(x, w, q, pos, slots, cos, sin, kc[:, :, :1], kc.clone(), heads=4,
                     kv_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="cos table"):
        gemv_rope_kv(x, w, q, pos, slots, cos[:, :1], sin, kc, kc.clone(), heads=4,
                     kv_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="positions"):
        gemv_rope_kv(x, w, q, pos[:0], slots, cos, sin, kc, kc.clone(), heads=4, kv_heads=2,
                     head_dim=4)
