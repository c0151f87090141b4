"""Executors: run one forward step of a bound graph on a target.

All targets share one interface, `forward(step) -> logits [T, vocab]`, and own
their KV cache tensors. The reference target walks the IR with the interpreter;
compiled targets (added by the compiler) replay a generated plan.
"""
from __future__ import annotations

import torch

from rustinfer.compiler.interpreter import run_graph
from rustinfer.compiler.ir import Graph
from rustinfer.compiler.step_inputs import StepInputs


def allocate_caches(graph: Graph, num_blocks: int, block_size: int,
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    sizes = {"blocks": num_blocks, "block_size": block_size}
    return {v.name: torch.zeros(tuple(sizes.get(d, d) for d in v.shape), dtype=dtype)
            for v in graph.caches()}


class ReferenceExecutor:
    """The IR interpreter in float32: slow, obviously correct, the oracle."""

    target = "reference"

    def __init__(self, graph: Graph, weights: dict[str, torch.Tensor], num_blocks: int,
                 block_size: int):
        self.graph, self.weights = graph, weights
        self.num_blocks, self.block_size = num_blocks, block_size
        self.caches = allocate_caches(graph, num_blocks, block_size)

    @torch.inference_mode()
    def forward(self, step: StepInputs) -> torch.Tensor:
        (logits,) = run_graph(self.graph, self.weights, self.caches, step).values()
        if "logit_rows" not in self.graph.inputs and step.logit_rows is not None:
            logits = logits[step.logit_rows]       # the unfused graph computes every row
        return logits
