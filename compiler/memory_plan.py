"""Static memory planning: every activation of a step gets an offset in one arena.

Live intervals (the contract, in the words of Inductor's LiveRange: start
inclusive, end exclusive). Steps are indices into `graph.nodes`, the linear op
order. A value lives over [start, end): start = index of the node that produces
it, end = 1 + index of the last node that reads it; a value nobody reads lives
[start, start + 1). Two values may share bytes only if their intervals are
disjoint (a.start < b.end and b.start < a.end means they overlap).

Same-node rule: a node's output never shares bytes with an input that node is
still reading. It follows from the contract: an input last read by node i lives
through i (its end is i + 1), and node i's output starts at i, so they overlap.
(With end = i, a kernel would overwrite its own input while reading it.)

Views: the outputs of an op with `OpDef.view` (e.g. `split`) are views into
the *root* buffer of input 0 (following views of views). A view gets no bytes
of its own; its uses extend the root's interval.
In place: an op with `OpDef.inplace = (out, in)` (linear_add: the residual stream's
update) writes its output into input `in`'s bytes when that input is an
activation of the same shape, read by nothing after this node, not a graph
output, and neither made by nor split by a view op. The output is then planned
like a view of the input's root (exactly the same bytes, never a shifted
overlap), so a layer's residual stream is one buffer. This is the one exception
to the same-node rule, and it is safe because such an op reads each element
before it writes it. Its slot repeats the root's
whole byte range with `view_of` set; a view from an op with a `sizes` attr is
marked `strided` (split along the last dim of a row-major [T, N] buffer is not
a contiguous sub-range, so we record offset 0 in the root, not a sub-offset).

Never planned (pinned): values of kind input, weight and cache, and the graph
outputs, which outlive the step and get their own persistent buffers outside
the arena (listed in `pinned`; so is the root of a view that is an output).

Algorithm: greedy by size with best-fit offsets (TFLite's ArenaPlanner). Values
in order of size, largest first; each takes the smallest aligned gap between
already placed values whose intervals overlap its own, or goes after the last
of them. `enabled=False` gives every value its own bytes: the bisecting switch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import accumulate

from .ir import Graph, Value
from .ops import OPS


@dataclass(frozen=True)
class Slot:
    offset: int                  # bytes from the start of the arena (aligned)
    size: int                    # bytes (unaligned)
    start: int                   # index of the producing node (inclusive)
    end: int                     # 1 + index of the last reader (exclusive)
    view_of: str | None = None   # a view: the root whose bytes it aliases
    strided: bool = False        # a view that is not a contiguous sub-range of its root
    in_place: bool = False       # not a view: an output written into its root's bytes


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def mib(n: int) -> str:
    """Bytes as MiB, rounded as report.txt rounds them (one decimal)."""
    return f"{n / 2**20:.1f} MiB"


def value_bytes(value: Value, dims: dict[str, int], act_bytes: int) -> int:
    n = act_bytes
    for d in value.shape:
        if isinstance(d, str) and d not in dims:
            raise ValueError(f"memory plan: '{value.name}' has symbolic dim '{d}' "
                             f"{list(value.shape)}; only {sorted(dims)} are bound")
        n *= dims.get(d, d) if isinstance(d, str) else d
    return n


def live_ranges(graph: Graph) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """[start, end) of every value a node produces, and each view's (or in-place
    output's) root."""
    last_reader = {name: i for i, node in enumerate(graph.nodes) for name in node.inputs if name}
    viewed = {node.inputs[0] for node in graph.nodes
              if OPS.get(node.op) is not None and OPS[node.op].view and node.inputs}
    made_by_view = {o for node in graph.nodes
                    if OPS.get(node.op) is not None and OPS[node.op].view for o in node.outputs}
    root: dict[str, str] = {}
    start: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for name in filter(None, node.inputs):
            last[name] = i
            last[root.get(name, name)] = i       # reading a view reads its root
        opdef = OPS.get(node.op)
        for k, out in enumerate(node.outputs):
            start[out] = i
            if opdef is not None and opdef.view and node.inputs:
                root[out] = root.get(node.inputs[0], node.inputs[0])
            elif opdef is not None and opdef.inplace is not None and opdef.inplace[0] == k:
                src = node.inputs[opdef.inplace[1]]
                if _may_take_bytes(graph, out, src, i, last_reader, viewed | made_by_view):
                    root[out] = root.get(src, src)
    return {v: (s, max(s, last.get(v, s)) + 1) for v, s in start.items()}, root


def _may_take_bytes(graph: Graph, out: str, src: str, i: int, last_reader: dict,
                    view_related: set) -> bool:
    """Whether node i's output `out` may be written into `src`'s bytes (module docstring)."""
    if not out or not src or src in view_related:
        return False
    values, outputs = graph.values, set(graph.outputs)
    return (values[src].kind == "act" and last_reader.get(src) == i
            and src not in outputs and out not in outputs
            and tuple(values[src].shape) == tuple(values[out].shape))


def _best_fit(names: list[str], size: dict, ranges: dict, alignment: int) -> dict[str, int]:
    offsets: dict[str, int] = {}
    # Largest first: big buffers fix the layout and small ones fill the gaps between
    # them (TFLite); ties by start, then name, so plans are deterministic.
    for n in sorted(names, key=lambda n: (-size[n], ranges[n][0], n)):
        s, e = ranges[n]
        busy = sorted((offsets[m], offsets[m] + size[m]) for m in offsets
                      if ranges[m][0] < e and s < ranges[m][1])
        best, best_gap, cursor = None, None, 0
        for lo, hi in busy:                        # gaps between overlapping values
            if size[n] <= lo - cursor and (best_gap is None or lo - cursor < best_gap):
                best, best_gap = cursor, lo - cursor
            cursor = max(cursor, _align(hi, alignment))   # placed bytes may overlap each other
        offsets[n] = cursor if best is None else best
    return offsets


@dataclass
class MemoryPlan:
    slots: dict[str, Slot]      # planned activations and their views
    pinned: dict[str, int]      # graph outputs' own persistent buffers: name -> bytes
    arena_bytes: int
    naive_bytes: int            # one aligned buffer per planned value, no reuse
    peak_live_bytes: int        # lower bound: most bytes live at any one step
    alignment: int
    enabled: bool
    max_tokens: int = 0         # the step size (T) every size is computed for
    act_bytes: int = 4          # bytes per arena element (plan.py's ACT_BYTES)

    def summary(self) -> str:
        """The totals, each defined, in bytes and in MiB rounded as report.txt does."""
        width = len(str(self.naive_bytes))
        off = "" if self.enabled else " [planning OFF: every value has its own bytes]"
        return "\n".join([
            f"memory plan for MAX_TOKENS = {self.max_tokens} tokens per step (all sizes are "
            f"for a step that large){off}",
            f"  planned      {self.arena_bytes:>{width}} bytes ({mib(self.arena_bytes)}): "
            "the arena (plan.py's ARENA_BYTES)",
            f"  naive        {self.naive_bytes:>{width}} bytes ({mib(self.naive_bytes)}): "
            "one buffer per value, no sharing",
            f"  lower bound  {self.peak_live_bytes:>{width}} bytes "
            f"({mib(self.peak_live_bytes)}): the peak of simultaneously live bytes",
        ])

    def to_json(self) -> dict:
        return {"naive_bytes": self.naive_bytes, "planned_bytes": self.arena_bytes,
                "arena_bytes": self.arena_bytes, "peak_live_bytes": self.peak_live_bytes,
                "alignment": self.alignment, "enabled": self.enabled,
                "max_tokens": self.max_tokens, "act_bytes": self.act_bytes,
                "values": {n: {k: v for k, v in asdict(s).items() if v or k in
                               ("offset", "size", "start", "end")}
                           for n, s in self.slots.items()},
                "pinned": {n: {"size": b} for n, b in self.pinned.items()}}

    def table(self) -> str:
        """Slots grouped by arena range: the values of a group share bytes over time.
        Offsets are in arena elements, as plan.py slices its arena; sizes in bytes."""
        e = self.act_bytes
        lines = [
            f"Slot table: each group's values take turns in its bytes (sizes at MAX_TOKENS = "
            f"{self.max_tokens} tokens).",
            f"  offset  in arena elements of ACT_BYTES = {e} bytes, as plan.py slices its arena: "
            "arena[offset:...]",
            "  bytes   the value's size",
            "  live    [a, b): written by step a, last read by step b - 1 (plan.py's `# [n]` "
            "comments);",
            "          values whose live ranges overlap never share bytes",
            f"{'offset':>10} {'bytes':>12}  {'live':<10} value",
        ]
        views: dict[str, list[str]] = {}
        for n, s in self.slots.items():
            if s.view_of:
                views.setdefault(s.view_of, []).append(n)
        # Groups: runs of slots whose byte ranges overlap (transitively) share bytes.
        groups: list[list] = []                    # [lo, hi, names]
        for offset, _, n in sorted((s.offset, s.start, n) for n, s in self.slots.items()
                                   if not s.view_of):
            if not groups or offset >= groups[-1][1]:
                groups.append([offset, offset, []])
            groups[-1][1] = max(groups[-1][1], offset + self.slots[n].size)
            groups[-1][2].append(n)
        for lo, hi, names in groups:
            count = f"{len(names)} value{'s' if len(names) != 1 else ''}"
            lines.append(f"-- arena[{lo // e}:{-(-hi // e)}] = bytes [{lo}, {hi}): {count}")
            for n in names:
                s = self.slots[n]
                lines.append(f"{s.offset // e:>10} {s.size:>12}  {f'[{s.start}, {s.end})':<10} {n}")
                for v in views.get(n, []):
                    vs = self.slots[v]
                    kind = ("written in place" if vs.in_place else
                            "strided view" if vs.strided else "view")
                    lines.append(f"{'':>25}{f'[{vs.start}, {vs.end})':<10} {v} ({kind} of {n})")
        if self.pinned:
            lines.append("-- pinned: graph outputs, each in its own buffer outside the arena")
        for n, b in self.pinned.items():
            lines.append(f"{'pinned':>10} {b:>12}  {'':<10} {n}")
        return "\n".join(lines)


def plan_memory(graph: Graph, *, max_tokens: int, max_seqs: int = 256, act_bytes: int = 4,
                alignment: int = 64, enabled: bool = True) -> MemoryPlan:
    """Offsets in one arena for the step's activations; see the module docstring."""
    dims = {"T": max_tokens, "R": max_seqs, "B": max_seqs}
    ranges, root = live_ranges(graph)
    outputs = set(graph.outputs) | {root[o] for o in graph.outputs if o in root}
    # Only activations some node produces: values of other kinds are pinned by their owners.
    acts = {n for n, v in graph.values.items() if v.kind == "act" and n in ranges}
    names = sorted((n for n in acts - outputs if n not in root), key=lambda n: (ranges[n], n))
    size = {n: value_bytes(graph.values[n], dims, act_bytes) for n in names}
    naive = sum(_align(b, alignment) for b in size.values())
    if enabled:
        offsets = _best_fit(names, size, ranges, alignment)
    else:
        ends = list(accumulate((_align(size[n], alignment) for n in names), initial=0))
        offsets = dict(zip(names, ends))
    slots = {n: Slot(offsets[n], size[n], *ranges[n]) for n in names}
    producers = graph.producers()
    for v, r in root.items():
        if r in slots:
            strided = "sizes" in producers[v].attrs
            slots[v] = Slot(slots[r].offset, slots[r].size, *ranges[v], view_of=r, strided=strided,
                            in_place=not OPS[producers[v].op].view)
    delta = [0] * (len(graph.nodes) + 1)
    for n in names:
        delta[ranges[n][0]] += size[n]
        delta[ranges[n][1]] -= size[n]
    arena = _align(max((offsets[n] + size[n] for n in names), default=0), alignment)
    # An output that is a view lives in its root's pinned buffer: list buffers, not views.
    pinned = {n: value_bytes(graph.values[n], dims, act_bytes)
              for n in sorted(outputs & acts) if n not in root}
    return MemoryPlan(slots, pinned, arena, naive, max(accumulate(delta), default=0),
                      alignment, enabled, max_tokens, act_bytes)
