"""Codegen: a fused, memory-planned graph -> `plan.py`, a Python module a person can read.

The module is straight-line code: one kernel call per node, grouped by layer
(prologue, layers.N, epilogue), each on views into one preallocated arena. A
comment above each call gives its step number `# [n]` (the memory plan's live
ranges count in these steps), the node's hierarchical name(s), op and shapes,
and the spec line(s) it came from; the first call of each fused op also says
what the op absorbed (`_describe`). Kernels are reached through the op interface `K`
handed in at run time (rustinfer.kernels.torch_ops on CPU; Triton later), so
one plan serves every implementation of the ops.

The module also carries what the runtime needs to run it without the compiler:
how to build each weight from checkpoint tensors (WEIGHTS), the KV caches
(CACHES), the pinned outputs (OUTPUTS) and the workspace bounds (LIMITS).
"""
from __future__ import annotations

import inspect
import keyword
import re

from rustinfer.kernels import torch_ops

from .ir import Graph, Node, format_shape
from .memory_plan import MemoryPlan
from .ops import OPS

CODEGEN_VERSION = 2
# The attention kernels' scale=None: 1/sqrt(head_dim), computed by the kernel. Plans
# name it so a reader need not know that convention.
DEFAULT_SCALE_NAME = "INV_SQRT_HEAD_DIM"
_SCALED_OPS = ("attention", "cached_attention")
_HEADER_WIDTH = 72          # step comments pad to this width before their spec lines
_STEP_DIMS = {"T": "T", "R": "R"}


def py_name(value_name: str) -> str:
    """`layers.3/attn/q` -> `l3_attn_q`: a readable identifier for a value."""
    name = re.sub(r"^layers\.(\d+)/", r"l\1_", value_name)
    name = re.sub(r"[^0-9a-zA-Z_]", "_", name)
    if name[0].isdigit() or keyword.iskeyword(name):
        name = "v_" + name
    return name


def _dims(shape) -> list[str]:
    return [_STEP_DIMS.get(d, str(d)) if isinstance(d, str) else str(d) for d in shape]


def format_locs(locs) -> str:
    """Spec locations as `llama3.yaml:62-64,66` (file base names; runs of 3+ lines as a-b)."""
    by_file: dict[str, list[int]] = {}
    for loc in locs:
        if loc is not None and loc.line is not None:
            name = (loc.file or "<spec>").replace("\\", "/").rsplit("/", 1)[-1]
            by_file.setdefault(name, [])
            if loc.line not in by_file[name]:
                by_file[name].append(loc.line)
    parts = []
    for name, lines in by_file.items():
        lines.sort()
        runs: list[list[int]] = []
        for line in lines:
            if runs and line == runs[-1][-1] + 1:
                runs[-1].append(line)
            else:
                runs.append([line])
        text = ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)
        parts.append(f"{name}:{text}")
    return " ".join(parts)


def _parts(names: list[str]) -> list[str]:
    """What differs between dotted names: [a.q_proj.weight, a.k_proj.weight] -> [q_proj, k_proj]."""
    if len(names) < 2:
        return list(names)
    split = [n.split(".") for n in names]
    head = 0
    while all(len(p) > head + 1 for p in split) and len({p[head] for p in split}) == 1:
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 for p in split) and len({p[-1 - tail] for p in split}) == 1:
        tail += 1
    return [".".join(p[head:len(p) - tail]) for p in split]


def _describe(node: Node, graph: Graph) -> tuple | None:
    """(key, text): what a fused op (or a GEMM over a fused weight) computes, in the
    spec's terms and the plan's variable names, for the first call of its kind in a
    plan; None for an op as a spec writes it."""
    i = [py_name(x) if x else "" for x in node.inputs]
    o = [py_name(x) if x else "" for x in node.outputs]
    op = node.op
    if op == "rope_kv_write":
        return op, "rope(q); also rope(k), then writes k and v into this layer's KV cache"
    if op == "cached_attention":
        return op, "causal attention over this layer's KV cache (this step's k, v included)"
    if op in ("swiglu", "geglu"):
        act = "silu" if op == "swiglu" else "gelu"
        return op, f"{act}(gate) * up, where gate, up = the two halves of {i[0]}"
    if op == "add_rms_norm":
        if len(o) > 1 and o[1]:
            return (op, 2), (f"{o[1]} = {i[0]} + {i[1]} (the residual sum); "
                             f"{o[0]} = rms_norm({o[1]})")
        return (op, 1), f"{o[0]} = rms_norm({i[0]} + {i[1]}); the sum itself is not kept"
    if op == "gather_rows":
        return op, f"the rows of {i[0]} listed in step.logit_rows: only those get logits"
    if op == "linear_add":
        return op, f"{o[0]} = {i[2]} + {i[0]} @ weight.T: the residual add, done by the GEMM"
    if op == "rms_norm_linear":
        if node.attrs.get("act") == "swiglu":
            return (op, "swiglu"), (f"silu(gate) * up, where gate, up = rms_norm({i[0]}) "
                                    "@ [gate; up].T: norm, GEMM and SwiGLU in one")
        return (op, None), f"rms_norm({i[0]}) @ weight.T: the norm folded into the GEMM"
    if op == "rms_norm_linear_rope_kv":
        return op, (f"q, k, v = rms_norm({i[0]}) @ [q; k; v].T; rope(q); also rope(k), then "
                    "writes k and v into the KV cache")
    if op == "linear" and len(node.inputs) > 1 and node.inputs[1] in graph.values:
        derive = graph.values[node.inputs[1]].derive
        if derive is not None and derive[0] == "concat":
            parts = _parts(list(derive[1]))
            return ("linear", tuple(parts)), (f"one GEMM for {', '.join(parts)}: the weight is "
                                              "their concatenation (see WEIGHTS)")
    return None


def _kernel_extras(op: str) -> list[str]:
    """Which of `step` / `ws` a kernel takes (the op interface's signatures say)."""
    fn = getattr(torch_ops, op, None)
    if fn is None:
        raise NotImplementedError(f"no kernel implements op '{op}' (rustinfer.kernels.torch_ops)")
    params = inspect.signature(fn).parameters
    return [p for p in ("step", "ws") if p in params]


class _Emitter:
    def __init__(self, graph: Graph, plan: MemoryPlan, act_bytes: int):
        self.graph, self.plan, self.act_bytes = graph, plan, act_bytes
        self.names: dict[str, str] = {}
        self.constants: dict[str, str] = {}      # repr -> constant name (hoisted dict attrs)
        self.body: list = []                     # lines, and (comment, locs) step headers
        self.described: set = set()              # _describe keys already explained
        self.default_scale = False               # some attention call uses scale=None

    def ref(self, value_name: str) -> str:
        value = self.graph.values[value_name]
        if value.kind == "weight":
            return f'W["{value_name}"]'
        if value.kind == "cache":
            return f'C["{value_name}"]'
        if value.kind == "input":
            return {"tokens": "step.token_ids", "positions": "step.positions",
                    "logit_rows": "step.logit_rows"}.get(value_name, f'step.{value_name}')
        return self.names[value_name]

    def attr(self, value) -> str:
        if isinstance(value, dict):
            text = repr(value)
            if text not in self.constants:
                self.constants[text] = f"ROPE_SCALING_{len(self.constants)}" \
                    if "rope_type" in value or "factor" in value else f"CONST_{len(self.constants)}"
            return self.constants[text]
        return repr(value)

    def bind_output(self, name: str) -> str:
        """Emit the buffer a node writes: an arena view, or a pinned output buffer."""
        value = self.graph.values[name]
        var = py_name(name)
        self.names[name] = var
        dims = _dims(value.shape)
        if name in self.graph.outputs:
            self.body.append(f"    {var} = outputs[\"{name}\"][:{dims[0]}]")
            return var
        slot = self.plan.slots[name]
        offset = slot.offset // self.act_bytes
        numel = " * ".join(dims)
        self.body.append(f"    {var} = arena[{offset}:{offset} + {numel}].view({', '.join(dims)})")
        return var

    def node(self, node: Node, step: int) -> None:
        ins = ", ".join(self.ref(i) for i in node.inputs if i)
        shapes_in = " ".join(format_shape(self.graph.values[i].shape) for i in node.inputs
                             if i and self.graph.values[i].kind in ("act", "input"))
        shapes_out = " ".join(format_shape(self.graph.values[o].shape) for o in node.outputs if o)
        # A node is named for its first output; name the others too (add_rms_norm's sum).
        names = [node.name] + ([o for o in node.outputs[1:] if o]
                               if node.outputs and node.name == node.outputs[0] else [])
        self.body.append((f"    # [{step}] {', '.join(names)}: {node.op} {shapes_in} -> "
                          f"{shapes_out}", node.spec_locs()))
        described = _describe(node, self.graph)
        if described is not None and described[0] not in self.described:
            self.described.add(described[0])
            self.body.append(f"    #     {described[1]}")
        if OPS[node.op].view:
            self._views(node)
            return
        outs = [self.bind_output(o) for o in node.outputs if o]
        out = outs[0] if len(outs) == 1 else "(" + ", ".join(outs) + ")"
        args = [ins, f"out={out}"] if ins else [f"out={out}"]
        for k, v in node.attrs.items():
            if k == "scale" and v is None and node.op in _SCALED_OPS:
                self.default_scale = True
                args.append(f"{k}={DEFAULT_SCALE_NAME}")
            else:
                args.append(f"{k}={self.attr(v)}")
        args += [f"{p}={p}" for p in _kernel_extras(node.op)]
        self.body.append(f"    K.{node.op}({', '.join(args)})")

    def _views(self, node: Node) -> None:
        if node.op != "split":
            raise NotImplementedError(f"codegen has no view rule for op '{node.op}'")
        src = self.ref(node.inputs[0])
        start, parts = 0, []
        for name, size in zip(node.outputs, node.attrs["sizes"]):
            var = py_name(name)
            self.names[name] = var
            parts.append((var, f"{src}[:, {start}:{start + size}]"))
            start += size
        self.body.append("    " + ", ".join(v for v, _ in parts) + " = "
                         + ", ".join(e for _, e in parts))


# runtime/cli.py's `inspect --plan --memory` finds memory.txt's copy in plan.py by this line.
MEMORY_HEADING = "Memory plan (as in memory.txt):"


def memory_text(plan: MemoryPlan) -> str:
    """memory.txt: the totals, then the slot table (plan.py's docstring repeats it)."""
    return plan.summary() + "\n\n" + plan.table()


def section_of(node_name: str, current: str | None) -> str:
    """`layers.N` for a layer's node; before the first layer `prologue`, after it `epilogue`."""
    m = re.match(r"layers\.(\d+)/", node_name)
    if m:
        return f"layers.{m.group(1)}"
    return "prologue" if current in (None, "prologue") else "epilogue"


def _render(body: list) -> list[str]:
    """Step headers `(comment, locs)` -> lines, spec locations aligned in one column."""
    heads = [len(item[0]) for item in body if isinstance(item, tuple)]
    width = min(max(heads, default=0), _HEADER_WIDTH)
    lines = []
    for item in body:
        if isinstance(item, tuple):
            text, locs = item
            where = format_locs(locs)
            item = f"{text:<{width}}  ({where})" if where else text
        lines.append(item)
    return lines


def _derived_comment(graph: Graph) -> list[str]:
    """The WEIGHTS comment above the weights built at load: their names are not in the
    checkpoint (a fused name joins the parts that differ with '+')."""
    derived = [v for v in graph.weights() if v.derive is not None]
    hows = []
    concat = next((v for v in derived if v.derive[0] == "concat"), None)
    if concat is not None:
        sources = list(concat.derive[1])
        fused = _parts([concat.name] + sources)[0]
        hows.append(f"'concat' stacks the tensors listed along axis ({fused}: "
                    f"{', '.join(_parts(sources))})")
    if any(v.derive[0] == "slice" for v in derived):
        hows.append("'slice' takes rows (axis, start, stop) of one")
    return ["    # Built at load, so not checkpoint names:",
            *[f"    #   {how}" for how in hows]]


def generate_plan(graph: Graph, plan: MemoryPlan, *, target: str, max_tokens: int,
                  header: str = "", act_bytes: int = 4) -> str:
    """The text of plan.py for a fused, planned graph."""
    em = _Emitter(graph, plan, act_bytes)
    section = None
    for step, node in enumerate(graph.nodes):    # steps: memory_plan's indices into graph.nodes
        new = section_of(node.name, section)
        if new != section:
            em.body.append("")
            em.body.append(f"    # ---- {new} " + "-" * max(0, 60 - len(new)))
            section = new
        em.node(node, step)
    outputs_ret = ", ".join(f'"{o}": {em.names[o]}' for o in graph.outputs)
    em.body.append("    return {" + outputs_ret + "}")
    body = _render(em.body)

    weights, derived = [], []
    for v in graph.weights():
        how = ("load", [v.source]) if v.derive is None else (v.derive[0], list(v.derive[1]))
        axis = v.derive[2] if v.derive else 0
        (weights if v.derive is None else derived).append(
            f'    "{v.name}": ({how[0]!r}, {how[1]!r}, {axis}, {tuple(v.shape)!r}),')
    if derived:
        weights += [*_derived_comment(graph), *derived]
    caches = [f'    "{v.name}": {tuple(v.shape[2:])!r},' for v in graph.caches()]
    outputs = [f'    "{o}": {tuple(graph.values[o].shape)!r},' for o in graph.outputs]
    heads = [n.attrs["heads"] for n in graph.nodes if "heads" in n.attrs] or [1]
    head_dims = [n.attrs["head_dim"] for n in graph.nodes if "head_dim" in n.attrs] or [2]
    kv_width = [v.shape[2] * v.shape[3] for v in graph.caches()] or [1]
    # Columns of kernel scratch per token: rms_norm_linear off its GEMV path (more rows
    # than a decode GEMV serves) stores the normed x, and before SwiGLU the product
    # (rms_norm_linear_rope_kv: the normed x and the qkv product.)
    scratch = [graph.values[n.inputs[0]].shape[-1]
               + (graph.values[n.inputs[2]].shape[0]
                  if n.attrs.get("act") or n.op == "rms_norm_linear_rope_kv" else 0)
               for n in graph.nodes if n.op in ("rms_norm_linear", "rms_norm_linear_rope_kv")]
    scratch = scratch or [0]
    constants = [f"{name} = {text}" for text, name in em.constants.items()]
    if em.default_scale:
        constants.append(f"{DEFAULT_SCALE_NAME} = None   # attention scale=None: the kernel "
                         "uses 1 / sqrt(head_dim)")
    memory = "\n".join(("    " + line).rstrip() for line in memory_text(plan).splitlines())

    return "\n".join([
        f'"""Execution plan: {graph.family}, target {target}. Generated by rustinfer-compile',
        f"(codegen v{CODEGEN_VERSION}); edit the spec or the compiler, not this file.",
        "",
        *[line for line in header.splitlines()],
        "",
        MEMORY_HEADING,
        memory,
        '"""',
        "",
        f"TARGET = {target!r}",
        f"MAX_TOKENS = {max_tokens}          # largest step (tokens) the arena is planned for",
        f"ARENA_BYTES = {plan.arena_bytes}",
        f"ACT_BYTES = {act_bytes}",
        "LIMITS = {" + f'"max_heads": {max(heads)}, "max_head_dim": {max(head_dims)}, '
        f'"max_kv_width": {max(kv_width)}, "scratch_width": {max(scratch)}' + "}",
        "",
        "# weight name -> (how, checkpoint tensors, axis, shape); 'load': one checkpoint tensor.",
        "WEIGHTS = {", *weights, "}",
        "# KV cache name -> (kv_heads, head_dim); each is [blocks, block_size, kv_heads, head_dim].",
        "CACHES = {", *caches, "}",
        "# graph outputs: pinned buffers outside the arena, [rows, cols].",
        "OUTPUTS = {", *outputs, "}",
        *constants,
        "",
        "",
        "def run(step, W, C, arena, outputs, K, ws):",
        '    """One forward step: `step` (StepInputs) in, outputs written into pinned buffers.',
        "",
        "    W: weights, C: KV caches (updated in place), arena: flat activation workspace,",
        '    K: the op interface (kernels), ws: kernel scratch space."""',
        "    T = step.num_tokens",
        "    R = step.logit_rows.shape[0] if step.logit_rows is not None else T",
        *body,
        "",
    ])
