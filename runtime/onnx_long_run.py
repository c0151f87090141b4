"""decode_long.onnx for the cpu target: which decode runs take it, opening it, its inputs.

ONNX Runtime's GroupQueryAttention (model.onnx) reads a layer's K and V once per query
head; decode_long.onnx (compiler/onnx_long_decode.py) reads them once per KV head, at
the price of more nodes per layer and a second session, which holds a second copy of
the weights (ONNX Runtime prepacks per session). So decode runs take it from
LONG_DECODE_FROM positions on, when memory allows; it opens in a background thread from
half that length. Its inputs (the new tokens' write index, the masks) are built here
from the executor's step buffers; it binds the same caches, in place.
"""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import Future

import numpy as np

from rustinfer.compiler.onnx_long_decode import window_mask_name, write_index_name

from .host_memory import available_memory
from .ort_session import BoundSession

# NOTE measured (SmolLM2, one sequence, 2 threads: bench/cpu_long_context.py, ms per decode
# step, GQA / long graph): int4 at 1,024 positions 15.7 / 17.5, 2,048 31.4 / 24.3, 4,000
# 54.5 / 29.7; fp32 28.0 / 31.0, 44.8 / 33.2, 64.2 / 49.6. Below the crossover (~1,500) GQA's
# one node per layer costs less than the long graph's 13 (and its reads of the capacity).
LONG_DECODE_FROM = 1536


class LongDecode:
    """The long graph of one OnnxExecutor `ex` (meta: meta.json's "long_decode"; start:
    positions from which decode runs take it, None: never)."""

    def __init__(self, ex, meta: dict | None, start: int | None):
        self.ex, self.meta, self.start = ex, meta, start
        self.session: BoundSession | None = None
        self.opening: Future | None = None
        self.runs = 0
        self._capacity = 0                       # the rows' capacity _inputs are sized for
        self._positions = np.arange(0)
        self._inputs: dict[str, np.ndarray] = {}

    def wanted(self, group_lengths: list[int]) -> bool:
        """Whether a decode run of rows with these lengths (after the step) takes the long
        graph: it reads every row's whole capacity, GQA each row's own length once per
        query head, so it pays when the rows are long and fill their capacity. Its session
        opens in the background once rows reach half the threshold (seconds for a large
        model, and the engine keeps decoding meanwhile); at the threshold a run waits for
        it if it is still opening."""
        if not self.meta or not group_lengths or self.start is None:
            return False
        shortest = min(group_lengths)
        if self.session is None and self.opening is None and shortest >= self.start // 2:
            if not self._may_open():
                return False
            self.opening = Future()
            # Not a daemon: a process that ends while ONNX Runtime is still building the
            # session (a short answer to a prompt of 768+ tokens) must wait for it; a daemon
            # thread inside ORT at interpreter exit aborts the process ("terminate called
            # without an active exception", exit status 134).
            threading.Thread(target=self._open_into, args=(self.opening,), daemon=False,
                             name="rustinfer-open-decode-long").start()
        wanted = (shortest >= self.start
                  and len(group_lengths) * self.ex.capacity <= 2 * sum(group_lengths))
        if wanted and self.session is None:
            try:
                self.session = BoundSession(self.opening.result())
            except Exception as err:            # decoding goes on, on GQA
                print(f"rustinfer: WARNING: the long-context decode graph did not open "
                      f"({err}); decoding stays on GroupQueryAttention", file=sys.stderr)
                self.start = None
                return False
        return wanted

    def _open_into(self, future: Future) -> None:
        try:
            future.set_result(self.ex.open_graph(self.meta["model"]))
        except Exception as err:                     # raised by .result() in the engine step
            future.set_exception(err)

    def _may_open(self) -> bool:
        """The second session holds its own copy of the weights (ONNX Runtime prepacks them
        per session): open it only while that leaves room, else stay on GQA, saying so."""
        need = (self.ex.folder / "weights.bin").stat().st_size
        avail = available_memory()
        if avail is None or need <= avail / 4:
            return True
        print(f"rustinfer: long-context decode graph not opened: it would take "
              f"{need / 2**30:.1f} GiB more, over a quarter of the {avail / 2**30:.1f} GiB "
              "available; decoding stays on GroupQueryAttention (slower past ~1,500 "
              "positions). Set RUSTINFER_LONG_DECODE_FROM=off to silence this.",
              file=sys.stderr)
        self.start = None
        return False

    def run(self, row0: int, b: int, out: np.ndarray, r: int) -> None:
        run, ex = self.session, self.ex
        cap = ex.capacity
        if self._capacity != cap:                # the graph's extra inputs, one row each
            self._capacity, self._positions = cap, np.arange(cap)
            mask = np.zeros((ex.max_seqs, 1, 1, cap), np.float32)
            self._inputs = {"attn_mask": mask}
            for w in self.meta["windows"]:
                self._inputs[window_mask_name(w)] = np.zeros_like(mask)
            for kvh in self.meta["kv_heads"]:
                index = np.zeros((ex.max_seqs, 1, kvh, 3), np.int64)
                index[:, 0, :, 0] = np.arange(ex.max_seqs)[:, None]
                index[:, 0, :, 1] = np.arange(kvh)[None, :]
                self._inputs[write_index_name(kvh)] = index
        inputs, positions = self._inputs, self._positions[None, :]
        length = ex.seqlens[:b, None].astype(np.int64)       # the new token's position
        keep = positions <= length
        inputs["attn_mask"][:b, 0, 0] = np.where(keep, 0.0, -np.inf)
        for w in self.meta["windows"]:
            inside = keep & (positions > length - w)
            inputs[window_mask_name(w)][:b, 0, 0] = np.where(inside, 0.0, -np.inf)
        for kvh in self.meta["kv_heads"]:
            inputs[write_index_name(kvh)][:b, 0, :, 2] = length
        key = (row0, b, r, out.ctypes.data, cap)
        if key != run.key:
            run.bind("input_ids", ex.ids, (b, 1))
            run.bind("position_ids", ex.pos, (b, 1))
            for name, array in inputs.items():
                run.bind(name, array, (b,) + array.shape[1:])
            ex.bind_rows(run, row0, b, out, r)
            run.key = key
        run.session.run_with_iobinding(run.binding)
        ex.runs += 1
        self.runs += 1


def long_decode_start(option: int | None) -> int | None:
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
