"""Materialise a graph's weights from a checkpoint, in the executor's dtype."""
from __future__ import annotations

import torch

from rustinfer.compiler.ir import Graph


def load_graph_weights(graph: Graph, checkpoint, dtype: torch.dtype = torch.float32
                       ) -> dict[str, torch.Tensor]:
    """Every weight value of `graph` as a tensor; derived weights (e.g. a fused
    QKV matrix) are built once here, at load time."""
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
            kind, sources, axis = value.derive
            if kind != "concat":
                raise ValueError(f"weight '{value.name}': unknown derivation '{kind}'")
            t = torch.cat([tensor(s) for s in sources], dim=axis)
        if tuple(t.shape) != tuple(value.shape):
            raise ValueError(f"weight '{value.name}' loaded with shape {list(t.shape)}, "
                             f"expected {list(value.shape)}")
        out[value.name] = t.contiguous()
    return out
