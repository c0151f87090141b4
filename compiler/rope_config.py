"""What a LongRoPE config.json leaves implicit, made explicit for the rope tables.

Phi-3 128k, Phi-3.5 mini and Phi-4 mini checkpoints say `rope_scaling: {type: longrope,
long_factor, short_factor}` and keep `original_max_position_embeddings` and
`max_position_embeddings` at the top level of config.json (transformers 5 copies the
first into `rope_parameters`). The rope tables (kernels/rope_tables.py) see only the
rope dict a spec hands them, so both are copied into it here, with the context the
model is served with, which picks the long or the short factors.
"""
from __future__ import annotations

from rustinfer.kernels.rope_tables import rope_type

ROPE_KEYS = ("rope_scaling", "rope_parameters")


def uses_longrope(config: dict) -> bool:
    return any(isinstance(config.get(k), dict) and rope_type(config[k]) == "longrope"
               for k in ROPE_KEYS)


def complete_longrope(config: dict, context: int | None = None) -> dict:
    """A copy of config whose LongRoPE dict(s) also hold original_max_position_embeddings,
    max_position_embeddings and, when given, `context` (the served max_model_len). Other
    configs come back unchanged."""
    if not uses_longrope(config):
        return config
    out = dict(config)
    for key in ROPE_KEYS:
        rope = config.get(key)
        if not isinstance(rope, dict) or rope_type(rope) != "longrope":
            continue
        rope = dict(rope)
        for name in ("original_max_position_embeddings", "max_position_embeddings"):
            if rope.get(name) is None and config.get(name) is not None:
                rope[name] = config[name]
        if context is not None:
            rope["context"] = int(context)
        out[key] = rope
    return out
