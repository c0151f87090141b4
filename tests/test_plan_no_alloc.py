"""A decode step through the generated plan allocates no tensor storage.

Every aten op the step dispatches is intercepted (TorchDispatchMode); each
output must live in memory that existed before the step: the arena, the KV
caches, the pinned outputs, the workspace, the weights or the step's inputs.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.runtime import LLM


class StorageWatch(TorchDispatchMode):
    def __init__(self, known: set[int]):
        super().__init__()
        self.known, self.new = known, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        outs = result if isinstance(result, (tuple, list)) else (result,)
        for out in outs:
            if isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() not in self.known:
                if out.untyped_storage().nbytes() > 0:
                    self.new.append((str(func), tuple(out.shape)))
        return result


def _storages(*groups) -> set[int]:
    ptrs = set()
    for group in groups:
        for t in group:
            ptrs.add(t.untyped_storage().data_ptr())
    return ptrs


def new_storages_in_step(ex, step) -> list:
    """Run one step of `ex`'s plan under the watch; the ops whose outputs got new storage."""
    step_tensors = [step.token_ids, step.positions, step.slot_mapping, step.logit_rows,
                    step.block_table_tensor]
    ws = [v for v in vars(ex.ws).values() if isinstance(v, torch.Tensor)]
    ws += [t for pair in ex.ws._rope_tables.values() for t in pair]
    known = _storages([ex.arena], ex.caches.values(), ex.outputs.values(), ex.weights.values(),
                      ws, step_tensors)
    watch = StorageWatch(known)
    with torch.inference_mode(), watch:
        ex.plan.run(step, ex.weights, ex.caches, ex.arena, ex.outputs, ex.kernels, ex.ws)
    return watch.new


def test_decode_step_allocates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    llm = LLM(model=str(tmp_path / "m"), target="cpu-torch", max_model_len=64,
              max_num_batched_tokens=16)
    ex = llm.executor
    prompt = StepInputs.for_sequences([([1, 2, 3, 4, 5], 0, [0]), ([7, 8], 0, [1])], llm.block_size)
    ex.forward(prompt)                                             # prefill (may allocate)
    decode = StepInputs.for_sequences([([6], 5, [0]), ([9], 2, [1])], llm.block_size)
    ex.forward(decode)                                             # warm-up decode
    decode = StepInputs.for_sequences([([10], 6, [0]), ([11], 3, [1])], llm.block_size)
    assert new_storages_in_step(ex, decode) == []


def test_the_watch_catches_an_allocation():
    """The check above can fail: an op that allocates is reported."""
    a = torch.ones(4)
    watch = StorageWatch(_storages([a]))
    with watch:
        torch.add(a, 1.0, out=a)
        b = a * 2                                                    # allocates
    assert [shape for _, shape in watch.new] == [(4,)]
    del b
