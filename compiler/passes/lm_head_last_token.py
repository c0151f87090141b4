"""lm_head_last_token: compute logits only for the rows the step needs.

Matches the `linear` whose output is a graph output (the LM head; found by
structure, not by name) and whose input is not already gathered:

    y = linear(x, w, [b])          y is a graph output, [T, vocab]

or a head followed by one row-wise unary op (`OpDef.elementwise`, e.g. Gemma
2's final `softcap`) whose output is the graph output:

    y = linear(x, w, [b]);  z = op(y)        z is a graph output, y used by nothing else

Produces:

    input logit_rows: int64[R]     new graph input (added once)
    xs = gather_rows(x, logit_rows)        [T, D] -> [R, D]
    y  = linear(xs, w, [b])                [R, vocab]
    (z = op(y)                             [R, vocab], same attributes)

Convention: the executor feeds `step.logit_rows` (the reference interpreter
reads it with getattr; absent means every row, which equals the unfused
graph). The runtime sets it to each sequence's last row when generating and to
all rows when scoring a prompt. R is a new shape symbol, R <= T.

Pre: none. Post: the graph has input `logit_rows`; its logits output is
[R, vocab]. Must run before: nothing required; run it after the norm fusions so
that they see the unchanged head (it does not matter for correctness).
"""
from __future__ import annotations

from ..ir import Graph, Node
from ..ops import OPS
from ..pattern import Match, Pattern, is_output, not_produced_by, private
from ..rewrite import Rewriter, rewrite_all

LOGIT_ROWS = "logit_rows"

PATTERN = Pattern("""
    y = linear(x, w, [b])
""", where=[is_output("y"), not_produced_by("x", "gather_rows")], anchor="last",
    name="lm_head_last_token")




def _tail_pattern(op: str) -> Pattern:
    return Pattern(f"""
        y = linear(x, w, [b])
        z = {op}(y)
    """, where=[is_output("z"), private("y"), not_produced_by("x", "gather_rows")],
        anchor="last", name=f"lm_head_last_token+{op}")


# Row-wise ops of one input may follow the head: rows can be selected before them.
TAIL_PATTERNS = [_tail_pattern(name) for name, op in OPS.items()
                 if op.elementwise and op.primitive and len(op.inputs) == 1
                 and not op.optional_inputs]


def _rewrite(m: Match, rw: Rewriter) -> list[Node]:
    rows = rw.graph_input(LOGIT_ROWS, ("R",), "int64")
    selected = rw.value(f"{m['y']}/rows")
    head = [selected, m["w"]] + ([m["b"]] if m["b"] is not None else [])
    nodes = [rw.node("gather_rows", [m["x"], rows], [selected]),
             rw.node("linear", head, [m["y"]])]
    if "z" in m.env:
        tail = m.nodes[1]
        nodes.append(rw.node(tail.op, [m["y"]], [m["z"]], tail.attrs))
    return nodes


def run(graph: Graph) -> tuple[Graph, int]:
    graph, count = rewrite_all(graph, PATTERN, _rewrite)
    for pattern in TAIL_PATTERNS:
        graph, more = rewrite_all(graph, pattern, _rewrite)
        count += more
    return graph, count
