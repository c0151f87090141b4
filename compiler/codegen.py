"""Codegen: a fused, memory-planned graph -> `plan.py`, a Python module a person can read.

The module is straight-line code: one kernel call per node, grouped by layer,
each on views into one preallocated arena, with the node's hierarchical name
and shapes in a comment. Kernels are reached through the op interface `K`
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

CODEGEN_VERSION = 1
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
        self.body: list[str] = []

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

    def node(self, node: Node) -> None:
        ins = ", ".join(self.ref(i) for i in node.inputs if i)
        shapes_in = " ".join(format_shape(self.graph.values[i].shape) for i in node.inputs
                             if i and self.graph.values[i].kind in ("act", "input"))
        shapes_out = " ".join(format_shape(self.graph.values[o].shape) for o in node.outputs if o)
        self.body.append(f"    # {node.name}: {node.op} {shapes_in} -> {shapes_out}")
        if OPS[node.op].view:
            self._views(node)
            return
        outs = [self.bind_output(o) for o in node.outputs if o]
        out = outs[0] if len(outs) == 1 else "(" + ", ".join(outs) + ")"
        args = [ins, f"out={out}"] if ins else [f"out={out}"]
        args += [f"{k}={self.attr(v)}" for k, v in node.attrs.items()]
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


def generate_plan(graph: Graph, plan: MemoryPlan, *, target: str, max_tokens: int,
                  header: str = "", act_bytes: int = 4) -> str:
    """The text of plan.py for a fused, planned graph."""
    em = _Emitter(graph, plan, act_bytes)
    layer = None
    for node in graph.nodes:
        m = re.match(r"layers\.(\d+)/", node.name)
        section = f"layers.{m.group(1)}" if m else ("epilogue" if layer else "prologue")
        if section != layer:
            em.body.append("")
            em.body.append(f"    # ---- {section} " + "-" * max(0, 60 - len(section)))
            layer = section
        em.node(node)
    outputs_ret = ", ".join(f'"{o}": {em.names[o]}' for o in graph.outputs)
    em.body.append("    return {" + outputs_ret + "}")

    weights = []
    for v in graph.weights():
        how = ("load", [v.source]) if v.derive is None else (v.derive[0], list(v.derive[1]))
        axis = v.derive[2] if v.derive else 0
        weights.append(f'    "{v.name}": ({how[0]!r}, {how[1]!r}, {axis}, {tuple(v.shape)!r}),')
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
    table = "\n".join("    " + line for line in plan.table().splitlines())

    return "\n".join([
        f'"""Execution plan: {graph.family}, target {target}. Generated by rustinfer-compile',
        f"(codegen v{CODEGEN_VERSION}); edit the spec or the compiler, not this file.",
        "",
        *[line for line in header.splitlines()],
        "",
        "Slot table (which values share bytes):",
        table,
        '"""',
        "",
        f"TARGET = {target!r}",
        f"MAX_TOKENS = {max_tokens}          # largest step (tokens) the arena is planned for",
        f"ARENA_BYTES = {plan.arena_bytes}",
        f"ACT_BYTES = {act_bytes}",
        "LIMITS = {" + f'"max_heads": {max(heads)}, "max_head_dim": {max(head_dims)}, '
        f'"max_kv_width": {max(kv_width)}, "scratch_width": {max(scratch)}' + "}",
        "",
        "# weight name -> (how, checkpoint tensors, axis, shape); 'concat' builds it once at load.",
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
        *em.body,
        "",
    ])
