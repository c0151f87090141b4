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
are long (LONG_DECODE_FROM) take a second graph, decode_long.onnx, which reads them once
per KV head (see compiler/onnx_long_decode.py); it is opened on first use and shares
the caches and the weights file.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from rustinfer.compiler.onnx_long_decode import window_mask_name, write_index_name
from rustinfer.compiler.onnx_lowering import past_name, present_name
from rustinfer.compiler.step_inputs import StepInputs

from .cpu_cores import physical_cores
from .onnx_rows import RowMap

OPTIONS = ("quant", "threads", "max_seqs", "accuracy_level", "quantize_lm_head", "kv_capacity",
           "long_decode_from")

# NOTE measured (SmolLM2, one sequence, 2 threads: bench/cpu_long_context.py, ms per decode
# step, GQA / long graph): int4 at 1,024 positions 15.7 / 17.5, 2,048 31.4 / 24.3, 4,000
# 54.5 / 29.7; fp32 28.0 / 31.0, 44.8 / 33.2, 64.2 / 49.6. Below the crossover (~1,500) GQA's
# one node per layer costs less than the long graph's 13 (and its reads of the capacity).
LONG_DECODE_FROM = 1536


class OnnxExecutor:
    """forward(step) -> logits [R, vocab] through ONNX Runtime (see the module docstring).

    The logits returned are a view of a persistent buffer: the next forward overwrites
    them (as PlanExecutor's pinned outputs), so copy what must outlive the step."""

    target = "cpu"

    def __init__(self, folder: Path, *, num_blocks: int, block_size: int, max_model_len: int,
                 max_tokens: int, max_seqs: int, threads: int | None = None,
                 kv_capacity: int = 256, long_decode_from: int | None = None):
        import onnxruntime as ort

        # NOTE measured (SmolLM2 int4, one request through the engine, 2 cores): with
        # torch's default threads its OpenMP workers spin between the engine's small torch
        # ops (logits rows, sampling) and take the cores ONNX Runtime's threads need: 20 ms
        # per step, 6 of them outside the forward; with one torch thread 9 ms, 0.5 outside.
        # ONNX Runtime does all the heavy work on this target, so torch gets one thread.
        torch.set_num_threads(1)
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.threads = threads or physical_cores()
        self.main = _Session(self._open("model.onnx"))
        self.session = self.main.session
        # The long-context decode graph (compiler/onnx_long_decode.py), opened on first use.
        self.long_meta = self.meta.get("long_decode")
        self.long_from = _long_decode_from(long_decode_from)
        self.long: _Session | None = None
        self._opening: Future | None = None
        self.long_runs = 0
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
    def _open(self, name: str):
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
            self._bind_common(run, row0, b, out, r)
            run.key = key
        run.session.run_with_iobinding(run.binding)
        self.runs += 1

    def _bind_common(self, run: "_Session", row0: int, b: int, out: np.ndarray, r: int) -> None:
        run.bind("logit_rows", self.rows_in, (r,))
        run.bind("logits", out, (r, out.shape[1]), output=True)
        for name, cache in self.caches.items():
            view = cache[row0]
            shape = (b,) + cache.shape[1:]
            run.bind(past_name(name), view, shape)
            run.bind(present_name(name), view, shape, output=True)

    # -- long-context decode ---------------------------------------------------------------
    def _use_long(self, group_lengths: list[int]) -> bool:
        """Whether a decode run of rows with these lengths (after the step) takes the long
        graph: it reads every row's whole capacity, GQA each row's own length once per
        query head, so it pays when the rows are long and fill their capacity. Its session
        opens in the background once rows reach half the threshold (seconds for a large
        model, and the engine keeps decoding meanwhile); at the threshold a run waits for
        it if it is still opening."""
        if not self.long_meta or not group_lengths or self.long_from is None:
            return False
        shortest = min(group_lengths)
        if self.long is None and self._opening is None and shortest >= self.long_from // 2:
            if not self._may_open_long():
                return False
            self._opening = Future()
            # Not a daemon: a process that ends while ONNX Runtime is still building the
            # session (a short answer to a prompt of 768+ tokens) must wait for it; a daemon
            # thread inside ORT at interpreter exit aborts the process ("terminate called
            # without an active exception", exit status 134).
            threading.Thread(target=self._open_into, args=(self._opening,), daemon=False,
                             name="rustinfer-open-decode-long").start()
        wanted = (shortest >= self.long_from
                  and len(group_lengths) * self.capacity <= 2 * sum(group_lengths))
        if wanted and self.long is None:
            try:
                self.long = _Session(self._opening.result())
            except Exception as err:            # decoding goes on, on GQA
                print(f"rustinfer: WARNING: the long-context decode graph did not open "
                      f"({err}); decoding stays on GroupQueryAttention", file=sys.stderr)
                self.long_from = None
                return False
            self._long_inputs = {}
        return wanted

    def _open_into(self, future: Future) -> None:
        try:
            future.set_result(self._open(self.long_meta["model"]))
        except Exception as err:                     # raised by .result() in the engine step
            future.set_exception(err)

    def _may_open_long(self) -> bool:
        """The second session holds its own copy of the weights (ONNX Runtime prepacks them
        per session): open it only while that leaves room, else stay on GQA, saying so."""
        need = (self.folder / "weights.bin").stat().st_size
        avail = available_memory()
        if avail is None or need <= avail / 4:
            return True
        print(f"rustinfer: long-context decode graph not opened: it would take "
              f"{need / 2**30:.1f} GiB more, over a quarter of the {avail / 2**30:.1f} GiB "
              "available; decoding stays on GroupQueryAttention (slower past ~1,500 "
              "positions). Set RUSTINFER_LONG_DECODE_FROM=off to silence this.",
              file=sys.stderr)
        self.long_from = None
        return False

    def _run_long(self, row0: int, b: int, out: np.ndarray, r: int) -> None:
        run = self.long
        cap = self.capacity
        if self._long_inputs.get("capacity") != cap:
            positions = np.arange(cap)
            self._long_inputs = {"capacity": cap, "positions": positions,
                                 "attn_mask": np.zeros((self.max_seqs, 1, 1, cap), np.float32)}
            for w in self.long_meta["windows"]:
                self._long_inputs[window_mask_name(w)] = np.zeros_like(
                    self._long_inputs["attn_mask"])
            for kvh in self.long_meta["kv_heads"]:
                index = np.zeros((self.max_seqs, 1, kvh, 3), np.int64)
                index[:, 0, :, 0] = np.arange(self.max_seqs)[:, None]
                index[:, 0, :, 1] = np.arange(kvh)[None, :]
                self._long_inputs[write_index_name(kvh)] = index
        inputs = self._long_inputs
        length = self.seqlens[:b, None].astype(np.int64)       # the new token's position
        keep = inputs["positions"][None, :] <= length
        inputs["attn_mask"][:b, 0, 0] = np.where(keep, 0.0, -np.inf)
        for w in self.long_meta["windows"]:
            inside = keep & (inputs["positions"][None, :] > length - w)
            inputs[window_mask_name(w)][:b, 0, 0] = np.where(inside, 0.0, -np.inf)
        for kvh in self.long_meta["kv_heads"]:
            inputs[write_index_name(kvh)][:b, 0, :, 2] = length
        key = (row0, b, r, out.ctypes.data, cap)
        if key != run.key:
            run.bind("input_ids", self.ids, (b, 1))
            run.bind("position_ids", self.pos, (b, 1))
            for name, array in inputs.items():
                if isinstance(array, np.ndarray) and array.ndim == 4:
                    run.bind(name, array, (b,) + array.shape[1:])
            self._bind_common(run, row0, b, out, r)
            run.key = key
        run.session.run_with_iobinding(run.binding)
        self.runs += 1
        self.long_runs += 1

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
            if s == 1 and self._use_long([seqs[b][1] + 1 for b in group]):
                self._run_long(rows[group[0]], len(group), out, len(dest))
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


class _Session:
    """An ONNX Runtime session and its IO binding; a name is rebound only when its pointer
    or shape changed, and `key` lets a run skip binding altogether when nothing did."""

    def __init__(self, session):
        self.session, self.binding = session, session.io_binding()
        self.bound: dict[str, tuple] = {}
        self.key: tuple | None = None

    def bind(self, name: str, array: np.ndarray, shape, output: bool = False) -> None:
        key = (array.ctypes.data, tuple(shape))
        if self.bound.get(name) == key:
            return
        bind = self.binding.bind_output if output else self.binding.bind_input
        bind(name, "cpu", 0, array.dtype, list(shape), array.ctypes.data)
        self.bound[name] = key


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


def _long_decode_from(option: int | None) -> int | None:
    """Positions from which decode runs take decode_long.onnx: the option, else
    $RUSTINFER_LONG_DECODE_FROM (a number, or "off"), else LONG_DECODE_FROM. None: never."""
    if option is not None:
        return option
    env = os.environ.get("RUSTINFER_LONG_DECODE_FROM", "").strip().lower()
    if env in ("off", "never", "none"):
        return None
    if env:
        try:
            value = int(env)
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"RUSTINFER_LONG_DECODE_FROM={env!r}: give a number of positions "
                             "(0 or more) or 'off'")
        return value
    return LONG_DECODE_FROM


def available_memory() -> int | None:
    """Bytes of memory the kernel says a new allocation can get (MemAvailable), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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
