"""Rotary embedding frequency tables, including Llama 3 rope scaling.

Every implementation (reference interpreter, torch plan ops, Triton, ONNX)
takes its cos/sin from here, so they agree bit for bit on the tables. The
arithmetic follows transformers' `_compute_default_rope_parameters` and
`_compute_llama3_parameters` in float32, which the parity tests require.
"""
from __future__ import annotations

import math

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_type(scaling: dict | None) -> str:
    if not scaling:
        return "default"
    return scaling.get("rope_type") or scaling.get("type") or "default"


def check_scaling(scaling: dict | None) -> None:
    kind = rope_type(scaling)
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"config.json's rope_scaling type '{kind}' is not supported "
                         f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)}); rustinfer cannot "
                         "run this checkpoint as configured")


def inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """[head_dim // 2] float32 inverse frequencies."""
    check_scaling(scaling)
    base = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = rope_type(scaling)
    if kind == "linear":
        return base / float(scaling["factor"])
    if kind == "llama3":
        return _llama3(base, scaling)
    return base


def _llama3(freq: torch.Tensor, s: dict) -> torch.Tensor:
    # Long wavelengths (low frequencies) are slowed by `factor`, short ones kept,
    # and the band between is interpolated smoothly (Llama 3.1's long-context recipe).
    factor = float(s["factor"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / freq
    scaled = torch.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
            scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, head_dim] (the half-size table repeated twice, rotate-half layout)."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq(head_dim, theta, scaling).to(positions.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()
