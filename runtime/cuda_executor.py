"""The cuda target's executor: the generated plan.py on Triton kernels, decode under CUDA graphs.

Everything a step touches is allocated once, here: bf16 weights uploaded to the
GPU from the checkpoint's mmap, the planned arena, the paged KV caches (one
extra block: the dummy slot padded rows write to), the pinned logits buffer,
the kernels' workspace, and the static step inputs the graphs read.

A decode step (one new token per sequence, up to the largest bucket) is padded
to the next batch bucket (1, 2, 4, 8, ... max_batch) and replays that bucket's
CUDA graph; anything else (prefill, chunked prefill mixed with decodes, batches
above the largest bucket) runs the same plan eagerly. Graphs are captured
largest bucket first into one shared memory pool (nano-vllm's capture_cudagraph),
after a warm-up run of each bucket has compiled its kernels: nothing compiles,
allocates or syncs during capture.

The static inputs are one int64 device buffer with one section per field; a step
fills a pinned host twin and copies it in with a single H2D copy:

    tokens [M] | positions [M] | slots [M] | context_lens [M] | query_start [M + 1]
    | logit_rows [M] | block_table [M, max_blocks]          (M = the largest bucket)

Padded rows: token 0 at position 0, slot = the dummy slot, context length 0
(decode attention outputs zeros for them); their logits are never returned.

On a machine without a GPU the executor runs on CPU tensors with graphs off
(Triton's interpreter): the tests use that to check the bucket/padding path.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch

from rustinfer.compiler import step_inputs
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.kernels import triton_ops

from .plan_executor import build_weights, load_plan_module


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, ... up to max_batch (max_batch itself is always a bucket)."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return out + [max_batch]


class _Upload:
    """A checkpoint whose tensors arrive on the device (concatenations then happen there)."""

    def __init__(self, checkpoint, device, dtype):
        self.checkpoint, self.device, self.dtype = checkpoint, device, dtype

    def load(self, name):
        return self.checkpoint.load(name).to(device=self.device, dtype=self.dtype)


class CudaExecutor:
    """forward(step) -> logits rows (float32, on the host), by replaying the generated plan."""

    # forward_device takes a step whose token_ids are already on the device (see _fill)
    accepts_device_tokens = True

    def __init__(self, plan_file: Path, checkpoint, *, num_blocks: int, block_size: int,
                 max_model_len: int, max_batch: int = 32, cuda_graphs: bool = True,
                 device: str = "cuda", dtype=torch.bfloat16, target: str = "cuda"):
        self.target, self.device, self.dtype = target, torch.device(device), dtype
        if self.device.type == "cuda" and self.device.index is not None:
            # One GPU per engine process: make it the current device, so that streams,
            # events (the engine's read-back of overlapped steps, this executor's copies)
            # and graph capture all land where the tensors are.
            torch.cuda.set_device(self.device)
        self.plan_file = Path(plan_file)
        self.plan = load_plan_module(self.plan_file)
        self.kernels = triton_ops
        self.max_tokens = self.plan.MAX_TOKENS
        self.block_size, self.num_blocks = block_size, num_blocks
        self.max_model_len = max_model_len
        self.weights = build_weights(self.plan, _Upload(checkpoint, self.device, dtype), dtype)
        self.dummy_slot = num_blocks * block_size          # first slot of the extra block
        self.caches = {name: torch.zeros(num_blocks + 1, block_size, kvh, d, dtype=dtype,
                                         device=self.device)
                       for name, (kvh, d) in self.plan.CACHES.items()}
        # The plan's offsets count elements of ACT_BYTES; a bf16 arena indexes the same
        # elements (using half of the planned bytes).
        self.arena = torch.empty(self.plan.ARENA_BYTES // self.plan.ACT_BYTES, dtype=dtype,
                                 device=self.device)
        self.outputs = {name: torch.empty(self.max_tokens, cols, dtype=dtype, device=self.device)
                        for name, (_, cols) in self.plan.OUTPUTS.items()}
        self.buckets = batch_buckets(min(max_batch, self.max_tokens))
        limits = self.plan.LIMITS
        self.ws = triton_ops.Workspace(
            max_tokens=self.max_tokens, max_context=max_model_len,
            max_heads=limits["max_heads"], max_kv_width=limits["max_kv_width"],
            max_head_dim=limits["max_head_dim"], block_size=block_size, device=self.device,
            max_seqs=self.buckets[-1], scratch_width=limits.get("scratch_width", 0),
            act_dtype=dtype)
        self._make_static()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if cuda_graphs and self.device.type == "cuda":
            self.capture()

    # -- static inputs -------------------------------------------------------------
    def _make_static(self) -> None:
        m, width = self.buckets[-1], -(-self.max_model_len // self.block_size)
        self.max_blocks = width
        sizes = {"tokens": m, "positions": m, "slots": m, "ctx": m, "qs": m + 1, "rows": m,
                 "table": m * width}
        self._off, total = {}, 0
        for name, size in sizes.items():
            self._off[name] = total
            total += size
        pin = self.device.type == "cuda"
        self._static = torch.zeros(total, dtype=torch.int64, device=self.device)
        self._host = torch.zeros(total, dtype=torch.int64, pin_memory=pin)
        self._h = self._host.numpy()
        self._copied = torch.cuda.Event() if pin else None
        h = self._h
        h[self._sec("qs", m + 1)] = np.arange(m + 1)        # one row per sequence, always
        h[self._sec("rows", m)] = np.arange(m)
        h[self._sec("slots", m)] = self.dummy_slot
        self._static.copy_(self._host)
        self._steps = {b: self._bucket_step(b) for b in self.buckets}

    def _sec(self, name: str, n: int) -> slice:
        return slice(self._off[name], self._off[name] + n)

    def _view(self, name: str, n: int) -> torch.Tensor:
        return self._static[self._sec(name, n)]

    def _bucket_step(self, b: int) -> StepInputs:
        table = self._view("table", b * self.max_blocks).view(b, self.max_blocks)
        step = StepInputs(token_ids=self._view("tokens", b), positions=self._view("positions", b),
                          query_start=list(range(b + 1)), context_lens=[0] * b,
                          block_tables=[[] for _ in range(b)], slot_mapping=self._view("slots", b),
                          block_size=self.block_size, logit_rows=self._view("rows", b),
                          block_table_tensor=table)
        step.device_meta = triton_ops.DeviceMeta(query_start=self._view("qs", b + 1),
                                                 context_lens=self._view("ctx", b),
                                                 block_table=table, max_rows=1)
        return step

    def bucket_for(self, step: StepInputs) -> int | None:
        """The graph bucket of a pure decode step (rows 0..n-1, one per sequence), else None."""
        n = step.num_seqs
        if n == 0 or n > self.buckets[-1] or step.num_tokens != n:
            return None
        if step.logit_rows is None or not np.array_equal(step.logit_rows.cpu().numpy(),
                                                         np.arange(n)):
            return None
        if step.block_table_tensor is None or step.block_table_tensor.shape[1] > self.max_blocks:
            return None
        return next(b for b in self.buckets if b >= n)

    def _fill(self, step: StepInputs, b: int) -> None:
        """Write the step (padded to b rows) into the pinned host twin, then one H2D copy."""
        if self._copied is not None:
            self._copied.synchronize()          # the previous copy has read the host buffer
        n, h = step.num_seqs, self._h
        # Token ids already on the device (the engine's overlapped decode: the last step's
        # sampled tokens) are copied device to device after the host copy, never read here.
        on_device = step.token_ids.device.type != "cpu"
        for name, src, pad in (("tokens", step.token_ids, 0), ("positions", step.positions, 0),
                               ("slots", step.slot_mapping, self.dummy_slot)):
            sec = self._sec(name, b)
            if not (on_device and name == "tokens"):
                h[sec.start:sec.start + n] = src.cpu().numpy()
            h[sec.start + n:sec.stop] = pad
        ctx = self._sec("ctx", b)
        h[ctx.start:ctx.start + n] = step.context_lens
        h[ctx.start + n:ctx.stop] = 0
        table = h[self._sec("table", b * self.max_blocks)].reshape(b, self.max_blocks)
        src = step.block_table_tensor.cpu().numpy()
        table[:n, :src.shape[1]] = src           # entries past a sequence's length are never read
        end = self._off["table"] + b * self.max_blocks
        self._static[:end].copy_(self._host[:end], non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        if on_device:
            self._view("tokens", n).copy_(step.token_ids)

    # -- running -------------------------------------------------------------------
    def _run(self, step: StepInputs):
        return self.plan.run(step, self.weights, self.caches, self.arena, self.outputs,
                             self.kernels, self.ws)

    @torch.inference_mode()
    def capture(self) -> None:
        """One graph per bucket, largest first, sharing one memory pool."""
        pool = None
        for b in reversed(self.buckets):
            step = self._steps[b]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):            # warm-up: compiles this bucket's kernels
                self._run(step)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._run(step)
            pool = graph.pool() if pool is None else pool
            self.graphs[b] = graph
        torch.cuda.synchronize()

    @torch.inference_mode()
    def forward_device(self, step: StepInputs) -> torch.Tensor:
        """Logits [R, vocab] in the device dtype. A decode step's result is a view of a
        static buffer: consume it before the next forward."""
        if step.num_tokens > self.max_tokens:
            raise ValueError(f"a step of {step.num_tokens} tokens exceeds the plan's "
                             f"max_tokens {self.max_tokens}; chunk the prefill")
        b = self.bucket_for(step)
        if b is None:
            return self._eager(step)
        self._fill(step, b)
        if b in self.graphs:
            self.graphs[b].replay()
        else:
            self._run(self._steps[b])
        return self.outputs["logits"][:step.num_seqs]

    def forward(self, step: StepInputs) -> torch.Tensor:
        return self.forward_device(step).float().cpu()

    def _eager(self, step: StepInputs) -> torch.Tensor:
        dev = self.device
        rows = step.logit_rows if step.logit_rows is not None else torch.arange(step.num_tokens)

        # pinned, non-blocking copies: an overlapped decode step above the largest bucket
        # comes here, and must not wait for the steps queued before it
        to_device = functools.partial(step_inputs.to_device, device=dev)
        on_dev = dataclasses.replace(
            step, token_ids=to_device(step.token_ids), positions=to_device(step.positions),
            slot_mapping=to_device(step.slot_mapping), logit_rows=to_device(rows),
            block_table_tensor=None if step.block_table_tensor is None
            else to_device(step.block_table_tensor))
        (logits,) = self._run(on_dev).values()
        return logits
