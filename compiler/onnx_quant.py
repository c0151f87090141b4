"""Weights for ONNX Runtime's MatMulNBits: quantize float matrices, or transcode GGUF blocks.

MatMulNBits (com.microsoft) computes A @ dequant(B).T where B is [N, K] in
blocks of 32 along K:

    B           uint8 [N, nb, 32 * bits / 8]   element 2i in the low nibble of byte i (4-bit)
    scales      float [N, nb]
    zero_points uint8 [N, ceil(nb * bits / 8)] (4-bit: two per byte, low nibble first)
    value       = scale * (q - zero_point)

GGUF blocks are the same 32 elements along the row, so a row of Q4_0 / Q8_0
blocks maps onto MatMulNBits blocks one to one, bit-exactly:

    Q4_0  [d fp16][16 bytes: element j low nibble, element j+16 high]  value d * (q - 8)
    Q8_0  [d fp16][32 x int8]                                          value d * q
    Q4_1  [d fp16][m fp16][16 bytes like Q4_0]                         value d * q + m

Q4_1's offset m is not an integer multiple of d, and MatMulNBits' CPU fast path
takes only integer zero points (NOTE, measured with onnxruntime 1.32 on 2
threads, a 576 x 12288 matrix: uint8 zero points 110 us, float zero points
7,000 us). `transcode` therefore returns Q4_1 as its 4-bit codes with the
nearest integer zero point z = round(-m / d), plus the residual offsets
r = m + d * z [N, nb] (|r| <= d / 2); the lowering adds the exact correction
sum_b r[n, b] * sum(A[k in block b]) with one small MatMul.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32


@dataclass
class NBitsWeight:
    """One [N, K] matrix in MatMulNBits form."""
    bits: int
    k: int                              # logical K (the last block may be padded)
    n: int
    packed: np.ndarray                  # uint8 [N, nb, BLOCK * bits // 8]
    scales: np.ndarray                  # float32 [N, nb]
    zero_points: np.ndarray | None      # uint8, packed as MatMulNBits wants; None: 2**(bits-1)
    offsets: np.ndarray | None = None   # float32 [N, nb]: Q4_1's m, added by a correction MatMul
    origin: str = ""                    # "quantized from float32", "transcoded from Q4_0", ...

    def dequantize(self) -> np.ndarray:
        """float32 [N, K]: what MatMulNBits computes with (for tests and reports)."""
        q = unpack(self.packed, self.bits).astype(np.float32)            # [N, nb, 32]
        nb = q.shape[1]
        if self.zero_points is None:
            zp = np.full((self.n, nb), 2 ** (self.bits - 1), np.float32)
        elif self.bits == 4:
            zp = unpack(self.zero_points[:, :, None], 4).reshape(self.n, -1)[:, :nb]
        else:
            zp = self.zero_points.astype(np.float32)
        w = (q - zp[..., None].astype(np.float32)) * self.scales[..., None]
        if self.offsets is not None:
            w = w + self.offsets[..., None]
        return w.reshape(self.n, -1)[:, :self.k]


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [..., bytes] -> uint8 [..., values] in MatMulNBits order (low nibble first)."""
    if bits == 8:
        return packed
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def _pack4(q: np.ndarray) -> np.ndarray:
    """uint8 [..., 2m] values 0..15 -> [..., m] bytes, low nibble first."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _blocks(w: np.ndarray) -> np.ndarray:
    """float32 [N, K] -> [N, nb, 32], zero-padding K to whole blocks."""
    n, k = w.shape
    nb = -(-k // BLOCK)
    if nb * BLOCK != k:
        w = np.concatenate([w, np.zeros((n, nb * BLOCK - k), np.float32)], axis=1)
    return w.reshape(n, nb, BLOCK)


def quantize(w: np.ndarray, bits: int) -> NBitsWeight:
    """Asymmetric min/max quantization per block of 32, with uint8 zero points.

    The grid always contains 0 (min <= 0 <= max), so zero padding stays exact."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    n, k = w.shape
    blocks = _blocks(w)
    top = 2 ** bits - 1
    lo = np.minimum(blocks.min(axis=-1), 0.0)
    hi = np.maximum(blocks.max(axis=-1), 0.0)
    scale = (hi - lo) / top
    safe = np.where(scale == 0, 1.0, scale)
    zp = np.clip(np.rint(-lo / safe), 0, top)
    q = np.clip(np.rint(blocks / safe[..., None] + zp[..., None]), 0, top).astype(np.uint8)
    scale = scale.astype(np.float32)
    if bits == 4:
        zp8 = zp.astype(np.uint8)
        if zp8.shape[1] % 2:
            zp8 = np.concatenate([zp8, np.zeros((n, 1), np.uint8)], axis=1)
        return NBitsWeight(4, k, n, _pack4(q), scale, _pack4(zp8), origin="quantized from float32")
    return NBitsWeight(8, k, n, q, scale, zp.astype(np.uint8), origin="quantized from float32")


def transcode(qtype: str, raw: np.ndarray, k: int) -> NBitsWeight:
    """GGUF blocks of one [N, K] matrix (uint8 [N, bytes per row], HF row order) -> NBitsWeight."""
    n = raw.shape[0]
    nb = k // BLOCK
    if qtype == "Q4_0":
        blocks = raw.reshape(n, nb, 18)
        d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        return NBitsWeight(4, k, n, _gguf_nibbles(blocks[..., 2:]), d, None,
                           origin="transcoded from Q4_0")
    if qtype == "Q4_1":
        blocks = raw.reshape(n, nb, 20)
        d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        # The nearest integer zero point centres the codes (so int8 activations do not
        # lose the result to cancellation); the residual offset |r| <= d/2 stays exact.
        zp = np.clip(np.rint(-m / np.where(d == 0, 1, d)), 0, 15).astype(np.uint8)
        residual = (m + d * zp).astype(np.float32)
        if nb % 2:
            zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
        return NBitsWeight(4, k, n, _gguf_nibbles(blocks[..., 4:]), d, _pack4(zp),
                           offsets=residual, origin="transcoded from Q4_1")
    if qtype == "Q8_0":
        blocks = raw.reshape(n, nb, 34)
        d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        q = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        # zero point 128 for every block: MatMulNBits' default for 8 bits, so none is
        # stored (a byte per block less to read)
        return NBitsWeight(8, k, n, q, d, None, origin="transcoded from Q8_0")
    raise ValueError(f"no transcoding from GGUF {qtype} to MatMulNBits")


TRANSCODABLE = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}


def _gguf_nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF's 16 bytes (element j low, j+16 high) -> MatMulNBits' (element 2i low, 2i+1 high)."""
    values = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)   # [N, nb, 32] in element order
    return _pack4(values)
