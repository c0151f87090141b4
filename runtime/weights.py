"""Materialise a graph's weights from a checkpoint, in the executor's dtype."""
from __future__ import annotations

import torch

from rustinfer.compiler.ir import Graph


def load_graph_weights(graph: Graph, checkpoint, dtype: torch.dtype = torch.float32
                       ) -> dict[str, torch.Tensor]:
    """Every weight value of `graph` as a tensor; derived weights (e.g. a fused
    QKV matrix, or a row slice of a packed one) are built once here, at load time."""
    cache: dict[str, torch.Tensor] = {}

    def tensor(name: str) -> torch.Tensor:
        if name not in cache:
            cache[name] = checkpoint.load(name).to(dtype)
        return cache[name]

    out: dict[str, torch.Tensor] = {}
    for value in graph.weights():
        if value.derive is None:
            t = tensor(value.source)
        else:
            t = derive_weight(value.name, value.derive, tensor)
        if tuple(t.shape) != tuple(value.shape):
            raise ValueError(f"weight '{value.name}' loaded with shape {list(t.shape)}, "
                             f"expected {list(value.shape)}")
        out[value.name] = t.contiguous()
    return out


def derive_weight(name: str, derive: tuple, tensor) -> torch.Tensor:
    """Build a derived weight from its sources (`tensor(source_name)` loads one):
    ("concat", sources, axis) or ("slice", [source], (axis, start, stop))."""
    kind, sources, how = derive
    if kind == "concat":
        return torch.cat([tensor(s) for s in sources], dim=how)
    if kind == "slice":
        axis, start, stop = how
        return tensor(sources[0]).narrow(axis, start, stop - start)
    raise ValueError(f"weight '{name}': unknown derivation '{kind}'")
