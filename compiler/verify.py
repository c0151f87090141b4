"""The IR verifier (run after every pass) and a differential check of two graphs.

`verify(graph)` checks the invariants every pass must keep:
  - every op is registered, with its input count (+2 caches for `uses_cache`
    ops) and its required attributes, each of its declared type (OpDef.types),
    and no unknown attributes;
  - SSA: each activation is defined by exactly one node, and nothing defines a
    graph input, weight or cache;
  - every value a node or the graph references exists; activations are
    defined before use; graph inputs have kind `input`;
  - shapes re-inferred from the inputs equal the stored ones;
  - every graph output is defined by a node; no activation is left that no
    node defines (a rewrite forgot to drop it).
Unused weights and caches are allowed (dead_value_removal removes them).

`differential(before, after)` runs both graphs through the reference
interpreter on the same random weights and a multi-sequence schedule (a
prefill of two sequences of different lengths, a decode step, a mixed step)
and compares outputs and final KV caches.
"""
from __future__ import annotations

from . import fused_ops  # noqa: F401  (fused ops must be registered to check them)
from .errors import SpecError
from .ir import Graph, format_shape
from .ops import OPS, REQUIRED
from .shape_inference import infer_node

MAX_LISTED = 20


class VerifyError(ValueError):
    """The IR breaks an invariant; `problems` lists every one found."""

    def __init__(self, problems: list[str], after: str | None = None):
        self.problems = problems
        head = f"IR verification failed{f' after pass {after!r}' if after else ''}: "
        listed = "\n  - ".join(problems[:MAX_LISTED])
        extra = len(problems) - MAX_LISTED
        more = f"\n  ... and {extra} more" if extra > 0 else ""
        super().__init__(f"{head}{len(problems)} problem(s)\n  - {listed}{more}")


def verify(graph: Graph, *, after: str | None = None) -> None:
    """Raise VerifyError listing every broken invariant (see the module docstring)."""
    problems: list[str] = []
    values = graph.values
    for key, value in values.items():
        if value.name != key:
            problems.append(f"value '{key}' is stored under another name '{value.name}'")
    for name in graph.inputs:
        if name not in values:
            problems.append(f"graph input '{name}' has no value")
        elif values[name].kind != "input":
            problems.append(f"graph input '{name}' has kind '{values[name].kind}'")
    for value in values.values():
        if value.kind == "input" and value.name not in graph.inputs:
            problems.append(f"input value '{value.name}' is not a graph input")

    defined: set[str] = set()
    for node in graph.nodes:
        where = f"node '{node.name}' ({node.op})"
        opdef = OPS.get(node.op)
        if opdef is None:
            problems.append(f"{where}: unknown op")
            continue
        n_min = len(opdef.inputs) + (2 if opdef.uses_cache else 0)
        n_max = n_min + len(opdef.optional_inputs)
        if not n_min <= len(node.inputs) <= n_max:
            problems.append(f"{where}: {len(node.inputs)} inputs, expected {n_min}..{n_max}")
        for attr, default in opdef.attrs.items():
            if default is REQUIRED and attr not in node.attrs:
                problems.append(f"{where}: missing attribute '{attr}'")
        for attr, value in node.attrs.items():
            if attr not in opdef.attrs:
                problems.append(f"{where}: unknown attribute '{attr}'")
            elif attr in opdef.types and opdef.types[attr].problem(value):
                problems.append(f"{where}: attribute '{attr}' {opdef.types[attr].problem(value)}")
        ok_inputs = True
        for name in node.inputs:
            if not name:
                continue
            value = values.get(name)
            if value is None:
                problems.append(f"{where}: input '{name}' does not exist")
                ok_inputs = False
            elif value.kind == "act" and name not in defined:
                problems.append(f"{where}: input '{name}' is used before it is defined")
                ok_inputs = False
        if opdef.uses_cache and len(node.inputs) >= 2:
            for name in node.inputs[-2:]:
                if name in values and values[name].kind != "cache":
                    problems.append(f"{where}: input '{name}' should be a cache")
        for name in node.outputs:
            if not name:
                continue
            value = values.get(name)
            if value is None:
                problems.append(f"{where}: output '{name}' does not exist")
            elif value.kind != "act":
                problems.append(f"{where}: defines {value.kind} '{name}'")
            elif name in defined:
                problems.append(f"{where}: redefines '{name}' (not SSA)")
            defined.add(name)
        if ok_inputs and all(o in values for o in node.outputs if o):
            problems += _check_shapes(graph, node, where)

    for name in graph.outputs:
        if name not in defined:
            problems.append(f"graph output '{name}' is not defined by any node")
    for value in values.values():
        if value.kind == "act" and value.name not in defined:
            problems.append(f"activation '{value.name}' is defined by no node")
    if problems:
        raise VerifyError(problems, after)


def _check_shapes(graph: Graph, node, where: str) -> list[str]:
    try:
        shapes = infer_node(graph, node)
    except SpecError as err:
        return [f"{where}: {err.message}"]
    if len(shapes) != len(node.outputs):
        return [f"{where}: {len(node.outputs)} outputs, its shape rule gives {len(shapes)}"]
    out = []
    for name, shape in zip(node.outputs, shapes):
        if name and tuple(graph.values[name].shape or ()) != tuple(shape):
            out.append(f"{where}: '{name}' is stored as {format_shape(graph.values[name].shape)} "
                       f"but infers to {format_shape(tuple(shape))}")
    return out


# --- differential check ------------------------------------------------------------

def source_shapes(*graphs: Graph) -> dict[str, tuple]:
    """Checkpoint name -> shape, from the plain weights of the graphs."""
    return {v.source: tuple(v.shape) for g in graphs for v in g.weights() if v.derive is None}


def random_weights(graph: Graph, seed: int = 0, shapes: dict[str, tuple] | None = None) -> dict:
    """Random float32 weights for a graph, derived ones built from their sources
    by the runtime's loader (so fused and unfused graphs of one model get the
    same numbers for the same checkpoint names). `shapes` gives the checkpoint
    tensors' shapes (default: the graph's plain weights)."""
    import torch

    from rustinfer.runtime.weights import load_graph_weights

    shapes = source_shapes(graph) if shapes is None else shapes

    class _RandomCheckpoint:
        def load(self, name: str) -> torch.Tensor:
            if name not in shapes:
                raise KeyError(f"random checkpoint: unknown source '{name}' (derived sources "
                               "must also appear as plain weights of the graph)")
            g = torch.Generator().manual_seed(seed * 1_000_003 + _stable_hash(name))
            shape = shapes[name]
            if len(shape) == 1:                      # norms and biases
                return 1.0 + 0.1 * torch.randn(shape, generator=g)
            return torch.randn(shape, generator=g) / shape[-1] ** 0.5

    return load_graph_weights(graph, _RandomCheckpoint())


def _stable_hash(text: str) -> int:
    h = 0
    for ch in text.encode():
        h = (h * 131 + ch) % 1_000_000_007
    return h


def default_schedule(vocab: int, block_size: int = 4, seed: int = 0) -> list:
    """Three steps over two sequences: prefill (5 and 3 tokens), decode, mixed
    (a decode and a 2-token chunk)."""
    import torch

    from .step_inputs import StepInputs

    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, vocab, (7,), generator=g).tolist()
    b = torch.randint(0, vocab, (6,), generator=g).tolist()
    ta, tb = [0, 1], [2, 3]
    return [
        StepInputs.for_sequences([(a[:5], 0, ta), (b[:3], 0, tb)], block_size),
        StepInputs.for_sequences([(a[5:6], 5, ta), (b[3:4], 3, tb)], block_size),
        StepInputs.for_sequences([(a[6:7], 6, ta), (b[4:6], 4, tb)], block_size),
    ]


def differential(before: Graph, after: Graph, *, seed: int = 0, atol: float = 1e-5,
                 steps: list | None = None, block_size: int = 4, num_blocks: int = 8) -> float:
    """Run both graphs on the same random weights and steps from zeroed caches;
    raise AssertionError when an output or a KV cache differs by more than
    `atol`. Returns the largest difference seen."""
    import torch

    from .interpreter import run_graph

    vocab = _vocab(before)
    steps = steps if steps is not None else default_schedule(vocab, block_size, seed)
    runs = []
    for graph in (before, after):
        weights = random_weights(graph, seed, source_shapes(before, after))
        sizes = {"blocks": num_blocks, "block_size": block_size}
        caches = {v.name: torch.zeros(tuple(sizes.get(d, d) for d in v.shape))
                  for v in graph.caches()}
        outs = [run_graph(graph, weights, caches, step) for step in steps]
        runs.append((outs, caches))
    (outs_a, caches_a), (outs_b, caches_b) = runs
    worst = 0.0
    for i, (oa, ob, step) in enumerate(zip(outs_a, outs_b, steps)):
        if list(oa) != list(ob):
            raise AssertionError(f"step {i}: outputs {list(oa)} vs {list(ob)}")
        for name in oa:
            a, b = oa[name], ob[name]
            if a.shape[0] != b.shape[0]:
                a, b = _select_rows(before, a, step), _select_rows(after, b, step)
            worst = max(worst, _diff(f"step {i} output '{name}'", a, b, atol))
    for name in caches_a.keys() & caches_b.keys():
        worst = max(worst, _diff(f"cache '{name}'", caches_a[name], caches_b[name], atol))
    return worst


def _select_rows(graph: Graph, out, step):
    """A graph without the `logit_rows` input computes every row of its head:
    keep the rows the step asks for, to compare with a graph that has it."""
    rows = getattr(step, "logit_rows", None)
    if rows is None or "logit_rows" in graph.inputs or out.shape[0] != step.num_tokens:
        return out
    return out.index_select(0, rows)


def _diff(what: str, a, b, atol: float) -> float:
    if tuple(a.shape) != tuple(b.shape):
        raise AssertionError(f"{what}: shape {list(a.shape)} vs {list(b.shape)}")
    d = float((a - b).abs().max()) if a.numel() else 0.0
    if not d <= atol:
        raise AssertionError(f"{what}: differs by {d:.3g} (> {atol:g})")
    return d


def _vocab(graph: Graph) -> int:
    """Token ids must index the embedding table: its row count."""
    for node in graph.nodes:
        if node.op == "embedding":
            return int(graph.values[node.inputs[1]].shape[0])
    raise ValueError("graph has no embedding op: pass steps= explicitly")
