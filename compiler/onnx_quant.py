"""Weights for ONNX Runtime's MatMulNBits: quantize float matrices, or transcode GGUF blocks.

MatMulNBits (com.microsoft) computes A @ dequant(B).T where B is [N, K] in
blocks of `block` (32, or 16 for Q6_K) along K:

    B           uint8 [N, nb, block * bits / 8]   element 2i in the low nibble of byte i (4-bit)
    scales      float [N, nb]
    zero_points uint8 [N, ceil(nb * bits / 8)] (4-bit: two per byte, low nibble first)
    value       = scale * (q - zero_point)

GGUF blocks (gguf_blocks.py decodes each type to value = scale * code + offset)
run along the row too, so a row of blocks maps onto MatMulNBits blocks one to
one: 4-bit codes (Q4_0, Q4_1, Q4_K) as 4-bit, 5- to 8-bit codes (Q5_0, Q5_1,
Q5_K, Q6_K, Q8_0) as 8-bit, with the zero point z = round(-offset / scale).
Where the offset is not an integer multiple of the scale (Q4_1, Q5_1, and the
K-quants' mins), the residual r = offset + scale * z (|r| <= scale / 2) is kept
as `offsets`, and the lowering adds the exact correction sum_b r[n, b] *
sum(A[k in block b]) with one small MatMul: MatMulNBits' CPU fast path takes
only integer zero points (NOTE, measured with onnxruntime 1.32 on 2 threads, a
576 x 12288 matrix: uint8 zero points 110 us, float zero points 7,000 us).
Nothing is rounded: dequantize() equals gguf's decoder up to float32 rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gguf_blocks import decode

BLOCK = 32


@dataclass
class NBitsWeight:
    """One [N, K] matrix in MatMulNBits form."""
    bits: int
    k: int                              # logical K (the last block may be padded)
    n: int
    packed: np.ndarray                  # uint8 [N, nb, block * bits // 8]
    scales: np.ndarray                  # float32 [N, nb]
    zero_points: np.ndarray | None      # uint8, packed as MatMulNBits wants; None: 2**(bits-1)
    offsets: np.ndarray | None = None   # float32 [N, nb]: residual offsets, added by a correction MatMul
    origin: str = ""                    # "quantized from float32", "transcoded from Q4_0", ...
    block: int = BLOCK                  # elements per block along K (MatMulNBits' block_size)

    def dequantize(self) -> np.ndarray:
        """float32 [N, K]: what MatMulNBits computes with (for tests and reports)."""
        q = unpack(self.packed, self.bits).astype(np.float32)            # [N, nb, block]
        w = (q - self.zero_point_values()[..., None].astype(np.float32)) * self.scales[..., None]
        if self.offsets is not None:
            w = w + self.offsets[..., None]
        return w.reshape(self.n, -1)[:, :self.k]

    def zero_point_values(self) -> np.ndarray:
        """uint8 [N, nb]: every block's zero point, unpacked (the default where none is stored)."""
        nb = self.scales.shape[1]
        if self.zero_points is None:
            return np.full((self.n, nb), 2 ** (self.bits - 1), np.uint8)
        if self.bits == 4:
            return unpack(self.zero_points[:, :, None], 4).reshape(self.n, -1)[:, :nb]
        return self.zero_points


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
    return _build(bits, k, q, scale, zp.astype(np.uint8), None, BLOCK, "quantized from float32")


def transcode(qtype: str, raw: np.ndarray, k: int) -> NBitsWeight:
    """GGUF blocks of one [N, K] matrix (uint8 [N, bytes per row], HF row order) -> NBitsWeight."""
    a = decode(qtype, raw, k)
    bits = 4 if a.bits <= 4 else 8
    safe = np.where(a.scale == 0, 1, a.scale)
    # The nearest integer zero point centres the codes (so int8 activations do not lose
    # the result to cancellation); the residual offset |r| <= scale / 2 stays exact.
    zp = np.clip(np.rint(-a.offset / safe), 0, 2 ** bits - 1).astype(np.uint8)
    residual = (a.offset + a.scale * zp).astype(np.float32)
    n = a.codes.shape[0]
    return _build(bits, k, a.codes.reshape(n, -1, a.block), a.scale, zp, residual, a.block,
                  f"transcoded from {qtype}")


def _build(bits, k, codes, scales, zp, residual, block, origin) -> NBitsWeight:
    """NBitsWeight from unpacked codes [N, nb, block] and zero points [N, nb]: stores no
    zero points when all are the default, no offsets when every residual is 0."""
    n, nb = scales.shape
    packed = _pack4(codes) if bits == 4 else codes.astype(np.uint8)
    if (zp == 2 ** (bits - 1)).all():
        zero_points = None
    elif bits == 4:
        zero_points = _pack4(zp if nb % 2 == 0 else np.concatenate([zp, np.zeros((n, 1), np.uint8)], 1))
    else:
        zero_points = zp.astype(np.uint8)
    offsets = residual if residual is not None and residual.any() else None
    return NBitsWeight(bits, k, n, np.ascontiguousarray(packed), scales.astype(np.float32),
                       zero_points, offsets, origin, block)


def concat_rows(parts: list[NBitsWeight]) -> NBitsWeight:
    """Stack matrices with the same K along N (a fused q|k|v or gate|up), exactly: parts
    stored differently (Q4_K next to Q6_K) are widened to the most bits and the
    smallest block, which represent every part's values unchanged."""
    bits, block = max(p.bits for p in parts), min(p.block for p in parts)
    codes, scales, zps, residuals = [], [], [], []
    for p in parts:
        c, z, r = unpack(p.packed, p.bits), p.zero_point_values(), p.offsets
        r = np.zeros_like(p.scales) if r is None else r
        split = p.block // block                    # 32 -> 16: each block becomes two
        codes.append(c.reshape(p.n, -1, block))
        scales.append(np.repeat(p.scales, split, axis=1))
        zps.append(np.repeat(z, split, axis=1))
        residuals.append(np.repeat(r, split, axis=1))
    origins = "+".join(dict.fromkeys(p.origin.removeprefix("transcoded from ") for p in parts))
    return _build(bits, parts[0].k, np.concatenate(codes), np.concatenate(scales),
                  np.concatenate(zps), np.concatenate(residuals), block, f"transcoded from {origins}")


# MatMulNBits bits each GGUF block type is stored with
TRANSCODABLE = {"Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q5_0": 8, "Q5_1": 8, "Q5_K": 8, "Q6_K": 8,
                "Q8_0": 8}

