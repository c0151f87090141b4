"""Runs a generated plan.py: the compiled targets' executor.

Everything the step touches is allocated here, once: the activation arena,
the KV caches, the pinned output buffers and the kernels' scratch space. A
step is then `plan.run(...)` on views of those buffers.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from rustinfer.compiler.step_inputs import StepInputs

from .weights import derive_weight


def load_plan_module(plan_file: Path):
    spec = importlib.util.spec_from_file_location(f"rustinfer_plan_{abs(hash(str(plan_file)))}",
                                                  plan_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_weights(plan, checkpoint, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Each weight as the plan wants it; concatenations happen here, once."""
    loaded: dict[str, torch.Tensor] = {}
    uses: dict[str, int] = {}
    for how, sources, axis, shape in plan.WEIGHTS.values():
        for s in sources:
            uses[s] = uses.get(s, 0) + 1
    out = {}
    for name, (how, sources, axis, shape) in plan.WEIGHTS.items():
        parts = []
        for s in sources:
            if s not in loaded:
                loaded[s] = checkpoint.load(s).to(dtype)
            parts.append(loaded[s])
            uses[s] -= 1
            if uses[s] == 0:          # drop the source once its last user has it
                del loaded[s]
        if how == "load":
            tensor = parts[0]
        else:       # "concat" (axis) or "slice" ((axis, start, stop)): see runtime/weights.py
            by_name = dict(zip(sources, parts))
            tensor = derive_weight(name, (how, sources, axis), by_name.__getitem__)
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"weight '{name}': built {list(tensor.shape)}, plan expects {list(shape)}")
        out[name] = tensor.contiguous()
    return out


class PlanExecutor:
    """forward(step) -> logits rows, by replaying the generated plan with torch kernels."""

    def __init__(self, plan_file: Path, checkpoint, *, num_blocks: int, block_size: int,
                 max_model_len: int, target: str = "cpu-torch"):
        from rustinfer.kernels import torch_ops

        self.target = target
        self.plan_file = Path(plan_file)
        self.plan = load_plan_module(self.plan_file)
        self.kernels = torch_ops
        self.max_tokens = self.plan.MAX_TOKENS
        self.block_size = block_size
        self.weights = build_weights(self.plan, checkpoint)
        self.arena = torch.empty(self.plan.ARENA_BYTES // self.plan.ACT_BYTES, dtype=torch.float32)
        self.caches = {name: torch.zeros(num_blocks, block_size, kvh, d, dtype=torch.float32)
                       for name, (kvh, d) in self.plan.CACHES.items()}
        # Output rows: up to one per token of the largest step (scoring asks for all rows).
        self.outputs = {name: torch.empty(self.max_tokens, cols, dtype=torch.float32)
                        for name, (_, cols) in self.plan.OUTPUTS.items()}
        limits = self.plan.LIMITS
        self.ws = torch_ops.Workspace(
            max_tokens=self.max_tokens, max_context=max_model_len,
            max_heads=limits["max_heads"], max_kv_width=limits["max_kv_width"],
            max_head_dim=limits["max_head_dim"], block_size=block_size)
        self.num_blocks = num_blocks

    @torch.inference_mode()
    def forward(self, step: StepInputs) -> torch.Tensor:
        if step.num_tokens > self.max_tokens:
            raise ValueError(f"a step of {step.num_tokens} tokens exceeds the plan's "
                             f"max_tokens {self.max_tokens}; chunk the prefill")
        result = self.plan.run(step, self.weights, self.caches, self.arena, self.outputs,
                               self.kernels, self.ws)
        (logits,) = result.values()
        return logits
