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
from rustinfer.kernels.triton.gemv import MAX_ROWS, GemvConfig, gemv, gemv_config

# Relative to the output's scale. bf16: the interpreter truncates the fp32 sum to bf16
# (a GPU rounds), one ulp is 2^-7 relative.
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2}
SMALL = GemvConfig(block_n=8, block_k=64, num_warps=4, num_stages=2)


def _rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def _check(out, x, w, b, dtype):
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    err = (out.double() - want).abs().max().item()
    assert err <= TOL[dtype] * want.abs().max().item(), f"max abs error {err}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_reference(dtype, m, bias):
    n, k = 21, 300                                  # 2 full + 1 ragged N block; 4 + 1 K tiles
    # x and out are column views of wider buffers (row strides != their widths), as a
    # plan's split views are.
    x = _rand(m, k + 5, dtype=dtype, seed=0)[:, :k]
    w = _rand(n, k, dtype=dtype, seed=1)
    b = _rand(n, dtype=dtype, seed=2) if bias else None
    out = torch.full((m, n + 3), float("nan"), dtype=dtype)
    gemv(x, w, out[:, :n], b, config=SMALL)
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
    with pytest.raises(ValueError, match=r"17 rows; the GEMV serves 1..16 \(use torch.mm\)"):
        gemv(torch.randn(17, 8), w, torch.empty(17, 5))


LLAMA_1B = [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048)]


def test_gemv_config_is_small_deterministic_and_bounded():
    shapes = LLAMA_1B + [(1, 1), (13, 37), (21, 300), (960, 576), (49152, 576), (7, 100000)]
    for n, k in shapes:
        for m in range(1, MAX_ROWS + 1):
            cfg = gemv_config(n, k, m)
            assert cfg == gemv_config(n, k, m)               # a pure function of the shape
            assert cfg.block_n <= next_pow2(n) and cfg.block_k <= next_pow2(k), (n, k, m, cfg)
            for block in (cfg.block_n, cfg.block_k):
                assert block & (block - 1) == 0              # powers of 2 (GPU aranges)
            assert cfg.num_warps in (4, 8) and cfg.num_stages in (1, 2)
            assert cfg.num_stages == 1 or k > cfg.block_k    # pipelining needs 2+ K tiles
    # Llama-3.2-1B at bs=1: >= 512 programs for the 2048-row outputs, 16-row ones above
    assert [gemv_config(n, k, 1).block_n for n, k in LLAMA_1B] == [4, 4, 16, 4, 16]
    with pytest.raises(ValueError):
        gemv_config(2048, 2048, 0)


def test_linear_keeps_torch_unless_enabled_on_cuda(monkeypatch):
    """Off by default: linear is torch.mm / addmm, bit for bit. On, it still leaves CPU
    tensors (and more than 16 rows) to torch."""
    x, w, b = torch.randn(3, 40), torch.randn(24, 40), torch.randn(24)
    for flag in (False, True):
        monkeypatch.setattr(triton_ops, "TRITON_GEMV", flag)
        out, out_b = torch.empty(3, 24), torch.empty(3, 24)
        triton_ops.linear(x, w, out=out)
        triton_ops.linear(x, w, b, out=out_b)
        assert torch.equal(out, torch.mm(x, w.t()))
        assert torch.equal(out_b, torch.addmm(b, x, w.t()))
