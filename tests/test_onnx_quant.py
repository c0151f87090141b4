"""MatMulNBits weights: GGUF transcoding is exact, quantization is close, ORT reads our layout."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize as gguf_quantize
from onnx import TensorProto, helper, numpy_helper

from rustinfer.compiler.onnx_quant import quantize, transcode


def _gguf(qtype: str, n=8, k=96, seed=0):
    w = np.random.default_rng(seed).normal(0, 1, (n, k)).astype(np.float32)
    w[0, :32] = 0.0                       # an all-zero block (scale 0)
    w[1, :32] = 3.0                       # a constant block
    raw = gguf_quantize(w, GGMLQuantizationType[qtype])
    return raw, dequantize(raw, GGMLQuantizationType[qtype]).reshape(n, k)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_transcoding_is_exact(qtype):
    raw, want = _gguf(qtype)
    got = transcode(qtype, raw, want.shape[1]).dequantize()
    if qtype == "Q4_1":      # d * (q - z) + (m + d * z): equal up to float32 rounding
        np.testing.assert_allclose(got, want, rtol=0, atol=4e-7 * np.abs(want).max())
    else:
        np.testing.assert_array_equal(got, want)


def _matmul_nbits(w, x, accuracy_level=0):
    ins = ["A", "B", "S"] + (["Z"] if w.zero_points is not None else [])
    inits = [numpy_helper.from_array(w.packed, "B"), numpy_helper.from_array(w.scales, "S")]
    if w.zero_points is not None:
        inits.append(numpy_helper.from_array(w.zero_points, "Z"))
    node = helper.make_node("MatMulNBits", ins, ["Y"], domain="com.microsoft", K=w.k, N=w.n,
                            bits=w.bits, block_size=32, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT,
                                                                          ["M", w.k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": x})[0]


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_onnxruntime_reads_transcoded_blocks(qtype):
    """The layout claim checked by ORT itself: MatMulNBits(x) == x @ gguf_dequant.T."""
    raw, want = _gguf(qtype)
    x = np.random.default_rng(1).normal(0, 1, (3, want.shape[1])).astype(np.float32)
    got = _matmul_nbits(transcode(qtype, raw, want.shape[1]), x)
    np.testing.assert_allclose(got, x @ want.T, rtol=1e-5, atol=1e-4)


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
