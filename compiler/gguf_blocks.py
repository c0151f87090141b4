"""GGUF's quantized blocks, decoded as affine blocks: value = scale * code + offset.

Every block type that ggml stores as small integer codes with a per-block scale
(and a per-block offset) decodes to the same form, so that onnx_quant can map it
onto MatMulNBits without rounding anything:

    type   block  code bits  layout (bytes)                                  value
    Q4_0    32      4        d f16, 16 x nibbles                             d * (q - 8)
    Q4_1    32      4        d f16, m f16, 16 x nibbles                      d * q + m
    Q5_0    32      5        d f16, qh u32 (5th bits), 16 x nibbles          d * (q - 16)
    Q5_1    32      5        d f16, m f16, qh u32, 16 x nibbles              d * q + m
    Q8_0    32      8        d f16, 32 x int8                                d * q
    Q4_K    32      4        per 256: d, dmin f16, 12 bytes of 6-bit         d*sc * q - dmin*mn
                             (sc, mn) per 32, 128 bytes of nibbles
    Q5_K    32      5        Q4_K + 32 bytes of 5th bits                     d*sc * q - dmin*mn
    Q6_K    16      6        per 256: 128 bytes low nibbles, 64 bytes of     d*sc * (q - 32)
                             2-bit highs, 16 x int8 sc, d f16

Nibble order (ggml): in a 32-block, byte j holds element j (low nibble) and
element j + 16 (high); in a K-quant's 64-element chunk, byte l holds element l
of the first 32 (low) and of the second 32 (high). Checked element for element
against gguf's own decoder in tests/test_onnx_quant.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AffineBlocks:
    """One [N, K] matrix: codes [N, K] uint8, scale / offset float32 [N, K // block]."""
    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    block: int
    bits: int              # code width in the file (4, 5, 6, 8)


def _f16(b: np.ndarray) -> np.ndarray:
    """uint8 [..., 2] -> float32 [...] (little-endian fp16)."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes of a 32-block -> [..., 32] codes: low nibbles first, then high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _fifth_bits32(qh: np.ndarray) -> np.ndarray:
    """[..., 4] bytes (a little-endian u32) -> [..., 32] bits, element j = bit j."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _legacy(qtype: str, raw: np.ndarray, n: int, k: int) -> AffineBlocks:
    nb = k // 32
    if qtype == "Q8_0":
        b = raw.reshape(n, nb, 34)
        d = _f16(b[..., :2])
        codes = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return AffineBlocks(codes.reshape(n, k), d, -128 * d, 32, 8)
    has_min = qtype in ("Q4_1", "Q5_1")
    five = qtype in ("Q5_0", "Q5_1")
    size = 2 + 2 * has_min + 4 * five + 16
    b = raw.reshape(n, nb, size)
    d = _f16(b[..., :2])
    at = 2 + 2 * has_min
    codes = _nibbles32(b[..., at + 4 * five:])
    if five:
        codes = codes | (_fifth_bits32(b[..., at:at + 4]) << 4)
    offset = _f16(b[..., 2:4]) if has_min else -(16.0 if five else 8.0) * d
    return AffineBlocks(codes.reshape(n, k), d, offset.astype(np.float32), 32, 5 if five else 4)


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: 12 bytes -> 6-bit (scale, min) for each of the 8 sub-blocks ([..., 8] each)."""
    lo = s[..., 0:4] & 63, s[..., 4:8] & 63
    hi = ((s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4),
          (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4))
    return np.concatenate([lo[0], hi[0]], -1), np.concatenate([lo[1], hi[1]], -1)


def _q45_k(qtype: str, raw: np.ndarray, n: int, k: int) -> AffineBlocks:
    five = qtype == "Q5_K"
    ns = k // 256
    b = raw.reshape(n, ns, 176 if five else 144)
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    sc, mn = _k_scales(b[..., 4:16])
    qs = b[..., 48:176] if five else b[..., 16:144]
    chunks = qs.reshape(n, ns, 4, 32)                         # 64 elements per chunk
    codes = np.stack([chunks & 0x0F, chunks >> 4], axis=3)    # [n, ns, 4, 2, 32]
    if five:                                                  # bit 2j / 2j+1 of qh[l]
        bits = np.unpackbits(b[..., 16:48, None], axis=-1, bitorder="little")   # [n, ns, 32, 8]
        high = bits.transpose(0, 1, 3, 2).reshape(n, ns, 4, 2, 32)
        codes = codes | (high << 4)
    scale = (d[..., None] * sc).reshape(n, ns * 8)
    offset = -(dmin[..., None] * mn).reshape(n, ns * 8)
    return AffineBlocks(codes.reshape(n, k).astype(np.uint8), scale.astype(np.float32),
                        offset.astype(np.float32), 32, 5 if five else 4)


def _q6_k(raw: np.ndarray, n: int, k: int) -> AffineBlocks:
    ns = k // 256
    b = raw.reshape(n, ns, 210)
    ql = b[..., 0:128].reshape(n, ns, 2, 2, 32)          # [half, 32-byte group, l]
    qh = b[..., 128:192].reshape(n, ns, 2, 1, 32)        # [half, -, l]
    sc = b[..., 192:208].view(np.int8).astype(np.float32)
    d = _f16(b[..., 208:210])
    # within a half of 128: element l + 32 * j, j = 0..3, takes the low (j < 2) or high
    # nibble of ql[group j % 2][l] and bits 2j..2j+1 of qh[l]
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=3)              # [.., 2, 4, 32]: j order
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)
    high = (qh >> shifts) & 3                                        # [.., 2, 4, 32]
    codes = (low | (high << 4)).reshape(n, k)
    scale = (d[..., None] * sc).reshape(n, ns * 16)
    return AffineBlocks(codes.astype(np.uint8), scale.astype(np.float32),
                        (-32 * scale).astype(np.float32), 16, 6)


BLOCK_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")


def decode(qtype: str, raw: np.ndarray, k: int) -> AffineBlocks:
    """GGUF blocks of one [N, K] matrix (uint8 [N, bytes per row]) -> AffineBlocks."""
    n = raw.shape[0]
    if qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        return _legacy(qtype, raw, n, k)
    if qtype in ("Q4_K", "Q5_K"):
        return _q45_k(qtype, raw, n, k)
    if qtype == "Q6_K":
        return _q6_k(raw, n, k)
    raise ValueError(f"no block decoder for GGUF {qtype} (known: {', '.join(BLOCK_TYPES)})")
