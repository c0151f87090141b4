"""MatMulNBits weights: GGUF transcoding is exact, quantization is close, ORT reads our layout."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize as gguf_quantize
from onnx import TensorProto, helper, numpy_helper

from rustinfer.compiler.onnx_quant import concat_rows, quantize, transcode
from test_checkpoint_gguf import random_kquant_blocks


LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]     # gguf has numpy quantizers for these
KQUANTS = ["Q4_K", "Q5_K", "Q6_K"]                   # these: random blocks


def _gguf(qtype: str, n=8, k=96, seed=0):
    """(raw blocks [n, bytes], gguf's own dequantization [n, k]) of one matrix."""
    if qtype in KQUANTS:
        raw = random_kquant_blocks(np.random.default_rng(seed), n, max(k, 256) // 256 * 256,
                                   GGMLQuantizationType[qtype])
    else:
        w = np.random.default_rng(seed).normal(0, 1, (n, k)).astype(np.float32)
        w[0, :32] = 0.0                   # an all-zero block (scale 0)
        w[1, :32] = 3.0                   # a constant block
        raw = gguf_quantize(w, GGMLQuantizationType[qtype])
    want = dequantize(raw, GGMLQuantizationType[qtype]).reshape(n, -1)
    return raw, want


@pytest.mark.parametrize("qtype", LEGACY + KQUANTS)
def test_transcoding_is_exact(qtype):
    raw, want = _gguf(qtype)
    got = transcode(qtype, raw, want.shape[1])
    assert got.bits == (4 if qtype in ("Q4_0", "Q4_1", "Q4_K") else 8)
    assert got.block == (16 if qtype == "Q6_K" else 32)
    # offsets only where a block's offset is not a whole number of steps
    assert (got.offsets is not None) == (qtype in ("Q4_1", "Q5_1", "Q4_K", "Q5_K"))
    if got.offsets is None:           # scale * (q - z): bit for bit
        np.testing.assert_array_equal(got.dequantize(), want)
    else:                             # scale * (q - z) + (offset + scale * z): float32 rounding
        np.testing.assert_allclose(got.dequantize(), want, rtol=0, atol=4e-7 * np.abs(want).max())


def _matmul_nbits(w, x, accuracy_level=0):
    ins = ["A", "B", "S"] + (["Z"] if w.zero_points is not None else [])
    inits = [numpy_helper.from_array(w.packed, "B"), numpy_helper.from_array(w.scales, "S")]
    if w.zero_points is not None:
        inits.append(numpy_helper.from_array(w.zero_points, "Z"))
    node = helper.make_node("MatMulNBits", ins, ["Y"], domain="com.microsoft", K=w.k, N=w.n,
                            bits=w.bits, block_size=w.block, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT,
                                                                          ["M", w.k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": x})[0]


def _with_offsets(w, x, y):
    """Add what the lowering's correction MatMul adds: the block sums of x times the offsets."""
    if w.offsets is None:
        return y
    sums = x.reshape(len(x), -1, w.block).sum(-1)
    return y + sums @ w.offsets.T


@pytest.mark.parametrize("qtype", LEGACY + KQUANTS)
def test_onnxruntime_reads_transcoded_blocks(qtype):
    """The layout claim checked by ORT itself: MatMulNBits(x) (+ the offset correction)
    == x @ gguf_dequant.T, for 4- and 8-bit codes and blocks of 32 and 16."""
    raw, want = _gguf(qtype)
    x = np.random.default_rng(1).normal(0, 1, (3, want.shape[1])).astype(np.float32)
    w = transcode(qtype, raw, want.shape[1])
    got = _with_offsets(w, x, _matmul_nbits(w, x))
    np.testing.assert_allclose(got, x @ want.T, rtol=1e-5, atol=1e-4 * np.abs(x @ want.T).max())


def test_fused_parts_of_different_types_stay_exact():
    """A fused q|k|v whose parts are Q4_K, Q6_K and Q8_0 (Q4_K_M files mix them): one 8-bit,
    block-16 weight holding every part's values unchanged, which ORT reads the same."""
    parts = [_gguf(t, n=n, k=256, seed=i) for i, (t, n) in enumerate([("Q4_K", 8), ("Q6_K", 4),
                                                                      ("Q8_0", 4)])]
    weights = [transcode(t, raw, 256) for t, (raw, _) in zip(["Q4_K", "Q6_K", "Q8_0"], parts)]
    fused = concat_rows(weights)
    want = np.concatenate([w for _, w in parts])
    assert (fused.bits, fused.block, fused.n) == (8, 16, 16) and fused.offsets is not None
    assert fused.origin == "transcoded from Q4_K+Q6_K+Q8_0"
    np.testing.assert_allclose(fused.dequantize(), want, rtol=0, atol=4e-7 * np.abs(want).max())
    x = np.random.default_rng(5).normal(0, 1, (2, 256)).astype(np.float32)
    got = _with_offsets(fused, x, _matmul_nbits(fused, x))
    np.testing.assert_allclose(got, x @ want.T, rtol=1e-5, atol=1e-4 * np.abs(x @ want.T).max())


@pytest.mark.parametrize("bits,k", [(4, 96), (4, 72), (8, 96), (8, 48)])
def test_quantize_roundtrip_and_onnxruntime(bits, k):
    """Asymmetric block-32 quantization (K padded to whole blocks): error <= scale / 2."""
    w = np.random.default_rng(2).normal(0, 1, (16, k)).astype(np.float32)
    q = quantize(w, bits)
    deq = q.dequantize()
    step = (w.reshape(16, -1).max() - w.min()) / (2 ** bits - 1)
    assert np.abs(deq - w).max() <= step / 2 + 1e-6
    x = np.random.default_rng(3).normal(0, 1, (2, k)).astype(np.float32)
    np.testing.assert_allclose(_matmul_nbits(q, x), x @ deq.T, rtol=1e-5, atol=1e-4)
