"""The "cpu" target: the lowered ONNX model run by ONNX Runtime with IO binding.

KV cache layout: see onnx_rows.py (RowMap maps the engine's paged blocks onto
the contiguous per-sequence rows ORT's GroupQueryAttention wants).

Runs. ORT's GQA takes either one sequence of S > 1 new tokens (prefill or a
prefill chunk, batch 1) or B sequences of one new token each (decode, each row
with its own length via seqlens_k). A step becomes one run per prefilling
sequence plus one run for all its decoding sequences; the decoders' rows are
made consecutive first (rows are swapped only when the batch changes).

Memory. Caches, inputs and the logits buffer are allocated once; each run binds
raw pointers into them (IO binding), and a binding is redone only when its
pointer or shape changes, so a steady decode run binds nothing. past and present
of a layer are the same buffer: GQA writes the new k/v in place.

Row capacity. GQA sizes its scratch by the rows' capacity (scores for B x heads x S
x capacity positions per call: 75 MB for a 256-token chunk at 8,192), so rows are
not bound at max_model_len. Each cache is one flat buffer (virtual memory for
max_seqs x max_model_len positions, resident only where written: see _lazy_zeros)
viewed as [max_seqs, kv_heads, capacity, head_dim]; the capacity starts at
`kv_capacity` positions (256) and grows when a step needs more (doubling, then by a
quarter past 1,024), moving each row's valid prefix to its new place (rare).

Long contexts. GQA streams a layer's K and V once per query head. Decode runs whose rows
are long take a second graph, decode_long.onnx, which reads them once per KV head; it
binds the same caches (see onnx_long_run.py for when and how).
"""
from __future__ import annotations

import json
import math
import mmap
import sys
from pathlib import Path

import numpy as np
import torch

from rustinfer.compiler.onnx_lowering import past_name, present_name
from rustinfer.compiler.step_inputs import StepInputs

from .cpu_cores import physical_cores
from .host_memory import available_memory
from .onnx_long_run import LongDecode, long_decode_start
from .onnx_rows import RowMap
from .ort_session import BoundSession

OPTIONS = ("quant", "threads", "max_seqs", "accuracy_level", "quantize_lm_head", "kv_capacity",
           "long_decode_from")


class OnnxExecutor:
    """forward(step) -> logits [R, vocab] through ONNX Runtime (see the module docstring).

    The logits returned are a view of a persistent buffer: the next forward overwrites
    them (as PlanExecutor's pinned outputs), so copy what must outlive the step."""

    target = "cpu"

    def __init__(self, folder: Path, *, num_blocks: int, block_size: int, max_model_len: int,
                 max_tokens: int, max_seqs: int, threads: int | None = None,
                 kv_capacity: int = 256, long_decode_from: int | None = None):
        # NOTE measured (SmolLM2 int4, one request through the engine, 2 cores): with
        # torch's default threads its OpenMP workers spin between the engine's small torch
        # ops (logits rows, sampling) and take the cores ONNX Runtime's threads need: 20 ms
        # per step, 6 of them outside the forward; with one torch thread 9 ms, 0.5 outside.
        # ONNX Runtime does all the heavy work on this target, so torch gets one thread.
        torch.set_num_threads(1)
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.threads = threads or physical_cores()
        self.main = BoundSession(self.open_graph("model.onnx"))
        self.session = self.main.session
        # decode_long.onnx (compiler/onnx_long_decode.py), opened when rows get long
        self.long_decode = LongDecode(self, self.meta.get("long_decode"),
                                      long_decode_start(long_decode_from))
        self.num_blocks, self.block_size = num_blocks, block_size
        self.max_tokens, self.max_seqs = max_tokens, max_seqs
        self.max_seq = min(max_model_len, self.meta["max_pos"])
        self.rows = RowMap(max_seqs, block_size)
        # Pages map lazily: only positions GQA touches become resident (see _lazy_zeros).
        self._dims = {name: (kvh, d) for name, (kvh, d) in self.meta["caches"].items()}
        self._flat = {name: _lazy_zeros(max_seqs * kvh * self.max_seq * d)
                      for name, (kvh, d) in self._dims.items()}
        self.capacity = 0
        self.caches: dict[str, np.ndarray] = {}
        self._set_capacity(min(self.max_seq, max(1, kv_capacity)))
        n = max(max_tokens, max_seqs)
        self.ids = np.zeros(n, np.int64)
        self.pos = np.zeros(n, np.int64)
        self.seqlens = np.zeros(max_seqs, np.int32)
        self.total = np.zeros((), np.int32)
        self.rows_in = np.zeros(n, np.int64)
        self.logits = np.zeros((n, self.meta["vocab"]), np.float32)
        self.scratch = np.zeros_like(self.logits)       # for rows not contiguous in the result
        self.logits_t = torch.from_numpy(self.logits)
        self.runs = 0
        # block -> the token id written at each of its positions (-1: never written here),
        # to recompute a prefix whose row was recycled (see RowMap)
        self.block_tokens: dict[int, np.ndarray] = {}
        self.recomputed = 0                              # tokens recomputed that way

    # -- row capacity ------------------------------------------------------------------
    def _set_capacity(self, capacity: int) -> None:
        """View the caches as [max_seqs, kv_heads, capacity, head_dim], moving each row's
        valid positions from the old layout to the new one."""
        old = self.capacity
        lengths = [row.length for row in self.rows.rows]
        for name, flat in self._flat.items():
            kvh, d = self._dims[name]
            if old:
                # Every (row, head) run of positions moves to a higher offset: walk from the
                # last one down so that nothing is overwritten before it has moved.
                for r in reversed(range(self.max_seqs)):
                    n = min(lengths[r], old) * d
                    for h in reversed(range(kvh) if n else ()):
                        src, dst = (r * kvh + h) * old * d, (r * kvh + h) * capacity * d
                        flat[dst:dst + n] = flat[src:src + n]
            self.caches[name] = flat[:self.max_seqs * kvh * capacity * d].reshape(
                self.max_seqs, kvh, capacity, d)
        self.capacity = capacity

    def _reserve(self, context: int) -> None:
        """Grow the rows so that `context` positions fit: doubling up to 1,024 positions,
        then by a quarter (in steps of 256). The long-context decode graph reads every row's
        whole capacity, so a row at 1,025 positions should not sit in 2,048; each growth moves
        the rows' contents once, which a quarter more positions repays many times over."""
        if context > self.capacity:
            capacity = self.capacity
            while capacity < min(context, 1024):
                capacity *= 2
            if capacity < context:
                capacity = -(-max(context, capacity * 5 // 4) // 256) * 256
            self._set_capacity(min(capacity, self.max_seq))

    # -- sessions and binding ------------------------------------------------------------
    def open_graph(self, name: str):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(self.folder / name), so,
                                    providers=["CPUExecutionProvider"])

    def _run(self, row0: int, b: int, s: int, out: np.ndarray, r: int) -> None:
        run = self.main
        key = (row0, b, s, r, out.ctypes.data, self.capacity)
        if key != run.key:              # a steady decode run rebinds (and checks) nothing
            run.bind("input_ids", self.ids, (b, s))
            if self.meta["uses_position_ids"]:
                run.bind("position_ids", self.pos, (b, s))
            run.bind("seqlens_k", self.seqlens, (b,))
            run.bind("total_seq_len", self.total, ())
            self.bind_rows(run, row0, b, out, r)
            run.key = key
        run.session.run_with_iobinding(run.binding)
        self.runs += 1

    def bind_rows(self, run: BoundSession, row0: int, b: int, out: np.ndarray, r: int) -> None:
        """What every graph binds alike: logit rows, logits, and rows row0.. of the caches."""
        run.bind("logit_rows", self.rows_in, (r,))
        run.bind("logits", out, (r, out.shape[1]), output=True)
        for name, cache in self.caches.items():
            view = cache[row0]
            shape = (b,) + cache.shape[1:]
            run.bind(past_name(name), view, shape)
            run.bind(present_name(name), view, shape, output=True)

    # -- the step ----------------------------------------------------------------------
    def forward(self, step: StepInputs) -> torch.Tensor:
        T = step.num_tokens
        if T > self.max_tokens:
            raise ValueError(f"a step of {T} tokens exceeds max_tokens {self.max_tokens}; "
                             "chunk the prefill")
        qs = step.query_start
        seqs = []
        for b in range(step.num_seqs):
            n = qs[b + 1] - qs[b]
            ctx = step.context_lens[b]
            if ctx > self.max_seq:
                raise ValueError(f"sequence {b} reaches {ctx} tokens; the cpu target's KV rows "
                                 f"hold {self.max_seq} (max_model_len)")
            if int(step.positions[qs[b]]) != ctx - n:     # GQA derives positions from lengths
                raise ValueError(f"sequence {b}: first position {int(step.positions[qs[b]])} is "
                                 f"not its cached length {ctx - n}")
            seqs.append((n, ctx - n, step.block_tables[b]))
        self._reserve(max(n + cached for n, cached, _ in seqs))
        rows, copies = self.rows.assign(seqs)
        for src, dst, length in copies:
            if src is None:
                self._recompute(dst, seqs[rows.index(dst)][2], length)
                continue
            for cache in self.caches.values():
                cache[dst, :, :length] = cache[src, :, :length]
        tokens = step.token_ids.numpy()
        for b, (n, cached, table) in enumerate(seqs):
            self._record(table, cached, tokens[qs[b]:qs[b + 1]])
        decoders = [b for b, (n, _, _) in enumerate(seqs) if n == 1]
        self._make_consecutive(decoders, rows)

        positions = step.positions.numpy()
        wanted = list(range(T)) if step.logit_rows is None else step.logit_rows.tolist()
        seq_of = np.searchsorted(np.asarray(qs), np.asarray(wanted, dtype=np.int64), side="right") - 1
        runs = [sorted(decoders, key=lambda b: rows[b])] if decoders else []
        runs += [[b] for b, (n, _, _) in enumerate(seqs) if n > 1]
        for group in runs:
            s = seqs[group[0]][0]
            for i, b in enumerate(group):
                n, cached, _ = seqs[b]
                self.ids[i * s:(i + 1) * s] = tokens[qs[b]:qs[b + 1]]
                self.pos[i * s:(i + 1) * s] = positions[qs[b]:qs[b + 1]]
                self.seqlens[i] = cached + n - 1
            self.total[...] = max(seqs[b][1] + seqs[b][0] for b in group)
            local = {b: i for i, b in enumerate(group)}
            dest = [j for j, b in enumerate(seq_of) if b in local]
            for k, j in enumerate(dest):
                b = int(seq_of[j])
                self.rows_in[k] = local[b] * s + wanted[j] - qs[b]
            contiguous = not dest or dest == list(range(dest[0], dest[0] + len(dest)))
            out = self.logits[dest[0]:] if dest and contiguous else self.scratch
            if s == 1 and self.long_decode.wanted([seqs[b][1] + 1 for b in group]):
                self.long_decode.run(rows[group[0]], len(group), out, len(dest))
            else:
                self._run(rows[group[0]], len(group), s, out, len(dest))
            if not contiguous:
                self.logits[dest] = self.scratch[:len(dest)]
        self.rows.commit(seqs, rows)
        return self.logits_t[:len(wanted)]

    def _record(self, table: list[int], start: int, tokens: np.ndarray) -> None:
        """Remember the token ids written at positions [start, start + len(tokens))."""
        bs = self.block_size
        for i in range(start // bs, math.ceil((start + len(tokens)) / bs)):
            lo, hi = max(start, i * bs), min(start + len(tokens), (i + 1) * bs)
            slot = self.block_tokens.setdefault(table[i], np.full(bs, -1, np.int64))
            slot[lo - i * bs:hi - i * bs] = tokens[lo - start:hi - start]

    def _recompute(self, row: int, table: list[int], length: int) -> None:
        """Prefill positions [0, length) of `row` from the recorded token ids, in chunks."""
        bs = self.block_size
        blocks = [self.block_tokens.get(b) for b in table[:math.ceil(length / bs)]]
        known = None if any(x is None for x in blocks) else np.concatenate(blocks)[:length]
        if known is None or (known < 0).any():
            raise RuntimeError(
                f"cpu target: no KV row holds the {length} cached tokens of the sequence "
                f"starting at block {table[0]}, and some of its blocks were written outside "
                "this executor (swapped or copied), so it cannot recompute them")
        for start in range(0, length, self.max_tokens):
            chunk = known[start:start + self.max_tokens]
            s = len(chunk)
            self.ids[:s] = chunk
            self.pos[:s] = np.arange(start, start + s)
            self.seqlens[0] = start + s - 1
            self.total[...] = start + s
            self.rows_in[0] = s - 1            # one logits row (into scratch), unused
            self._run(row, 1, s, self.scratch, 1)
        self.recomputed += length

    def _make_consecutive(self, decoders: list[int], rows: list[int]) -> None:
        """Swap rows so the decoding sequences sit in rows [0, k) when they are not consecutive."""
        mine = sorted(rows[b] for b in decoders)
        if not mine or mine[-1] - mine[0] + 1 == len(mine):
            return
        k = len(mine)
        holes = [r for r in range(k) if r not in mine]
        for b in decoders:
            if rows[b] >= k:
                a, z = rows[b], holes.pop()
                self._swap_rows(a, z)
                for other, r in enumerate(rows):     # a step's other sequence may sit in z
                    if r == z:
                        rows[other] = a
                rows[b] = z

    def _swap_rows(self, a: int, b: int) -> None:
        n = max(self.rows.rows[a].length, self.rows.rows[b].length)
        for cache in self.caches.values():
            tmp = cache[a, :, :n].copy()
            cache[a, :, :n] = cache[b, :, :n]
            cache[b, :, :n] = tmp
        self.rows.swap(a, b)


def _lazy_zeros(n: int) -> np.ndarray:
    """float32 [n] of zeros whose pages become resident only when touched, 4 KiB at a time.

    np.zeros maps large arrays lazily too, but NumPy asks the kernel for transparent huge
    pages on them (madvise MADV_HUGEPAGE), and then touching one position faults in the
    whole 2 MiB page around it. A KV row holds each (layer, head) as one run of capacity x
    head_dim floats, 2 MiB at 8,192 positions x 64, so GQA writing the first token of
    every head made the whole row resident.
    NOTE measured (SmolLM2 fp32, rows at 8,192 positions, 2 threads, a 20-token prefill
    into each of 3 new rows): with np.zeros 283-390 ms each and RSS +360 MiB per row;
    with these pages 47-49 ms and +1-2 MiB, as at 256 positions (52-64 ms). Decode at
    2,000 tokens of context is the same with either (44 ms)."""
    buf = mmap.mmap(-1, max(1, n) * 4)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, np.float32, count=n)     # the array keeps the mapping alive


def default_quant(graph) -> str:
    """The cpu target's weights when the user chose none: float32 (the checkpoint's own
    values, dequantized), unless float32 would take more than half of the memory
    available: then int4 (a GGUF's blocks kept as they are), saying so. An 8B model is
    32 GB in float32; a Q4_K_M user expects it to load, not to swap or be killed."""
    need = 4 * sum(math.prod(v.shape) for v in graph.weights())
    avail = available_memory()
    if avail is None or need <= avail / 2:
        return "none"
    print(f"rustinfer: float32 weights would take {need / 2**30:.1f} GiB, more than half of "
          f"the {avail / 2**30:.1f} GiB available; using --quant int4 (int8 activations; a "
          "GGUF's blocks are kept exactly). Pass --quant none to force float32.",
          file=sys.stderr)
    return "int4"


def load(ctx) -> object:
    """The "cpu" target factory: compile (or reuse) the ONNX model and wrap it.

    An op the lowering does not support falls back to "cpu-torch", loudly."""
    from rustinfer.compiler.onnx_build import OnnxOptions, compile_onnx
    from rustinfer.compiler.onnx_lowering import UnsupportedOp

    unknown = sorted(set(ctx.options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown cpu target option(s) {unknown}; known: {', '.join(OPTIONS)}")
    opts = ctx.options
    onnx_options = OnnxOptions(quant=opts.get("quant") or default_quant(ctx.graph),
                               accuracy_level=int(opts.get("accuracy_level", 4)),
                               quantize_lm_head=bool(opts.get("quantize_lm_head", True)))
    try:
        folder, cached = compile_onnx(ctx.graph, ctx.spec_path, ctx.config, ctx.checkpoint,
                                      onnx_options)
    except UnsupportedOp as err:
        print(f"rustinfer: WARNING: the cpu target cannot lower this model ({err}); "
              "falling back to target 'cpu-torch' (float32, slower)", file=sys.stderr)
        from .targets import TARGETS

        return TARGETS["cpu-torch"](ctx)
    # Default: one row per sequence the engine may run at once (the caches' pages are only
    # touched when rows are used, so unused rows cost address space, not memory).
    rows = opts.get("max_seqs") or max(1, ctx.max_num_seqs)
    ex = OnnxExecutor(folder, num_blocks=ctx.num_blocks, block_size=ctx.block_size,
                      max_model_len=ctx.max_model_len, max_tokens=ctx.max_step_tokens,
                      max_seqs=int(rows), threads=opts.get("threads"),
                      kv_capacity=int(opts.get("kv_capacity", 256)),
                      long_decode_from=(None if opts.get("long_decode_from") is None
                                        else int(opts["long_decode_from"])))
    ex.plan_dir, ex.plan_cached = folder, cached
    return ex
