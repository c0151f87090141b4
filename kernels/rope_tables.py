"""Rotary embedding frequency tables, including Llama 3 and LongRoPE scaling.

Every implementation (reference interpreter, torch plan ops, Triton, ONNX)
takes its cos/sin from here, so they agree bit for bit on the tables. The
arithmetic follows transformers' `_compute_default_rope_parameters`,
`_compute_llama3_parameters` and `_compute_longrope_parameters` in float32,
which the parity tests require.

LongRoPE (Phi-3 128k, Phi-3.5 mini, Phi-4 mini) has two sets of per-frequency
divisors: `short_factor` for contexts up to `original_max_position_embeddings`
and `long_factor` beyond, and scales cos and sin by an attention factor. The
tables are built once, so the set is chosen once, by the context the model is
served with (`context`, added by the runtime from max_model_len; absent: the
model's max_position_embeddings), as llama.cpp chooses by its context size.
transformers instead switches per forward call on the sequence's length, which
agrees with this whenever max_model_len <= original_max_position_embeddings, or
the sequence is longer than it.
"""
from __future__ import annotations

import math

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
LONGROPE_KEYS = ("long_factor", "short_factor", "original_max_position_embeddings")


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
    if kind == "longrope":
        missing = [k for k in LONGROPE_KEYS if scaling.get(k) is None]
        if missing:
            raise ValueError(f"rope_scaling 'longrope' lacks {', '.join(missing)} (config.json "
                             "states original_max_position_embeddings at its top level or in "
                             "rope_scaling); the checkpoint's config is incomplete")


def attention_factor(scaling: dict | None) -> float:
    """What cos and sin are multiplied by: 1, except for LongRoPE (transformers' rule)."""
    if rope_type(scaling) != "longrope":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    orig = scaling["original_max_position_embeddings"]
    factor = scaling.get("factor") or (scaling.get("max_position_embeddings") or orig) / orig
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


def longrope_factors(scaling: dict) -> list[float]:
    """The divisors the tables use: long_factor when served beyond the original context."""
    orig = scaling["original_max_position_embeddings"]
    context = scaling.get("context") or scaling.get("max_position_embeddings") or orig
    return scaling["long_factor"] if context > orig else scaling["short_factor"]


def inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """[head_dim // 2] float32 inverse frequencies."""
    check_scaling(scaling)
    base = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = rope_type(scaling)
    if kind == "linear":
        return base / float(scaling["factor"])
    if kind == "llama3":
        return _llama3(base, scaling)
    if kind == "longrope":
        factors = torch.tensor(longrope_factors(scaling), dtype=torch.float32)
        if factors.numel() != head_dim // 2:
            raise ValueError(f"rope_scaling 'longrope' has {factors.numel()} factors for a rotary "
                             f"width of {head_dim} ({head_dim // 2} frequencies)")
        shape = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        return 1.0 / (factors * theta ** shape)
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


def half_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, head_dim // 2]: one entry per rotary frequency."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq(head_dim, theta, scaling).to(positions.device)[None, :]
    cos, sin = freqs.cos(), freqs.sin()
    scale = attention_factor(scaling)
    return (cos, sin) if scale == 1.0 else (cos * scale, sin * scale)


def cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
            scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, head_dim] (the half-size table repeated twice, rotate-half layout)."""
    cos, sin = half_cos_sin(positions, head_dim, theta, scaling)
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
