"""Compiler passes: one file each, each a pure function `run(graph) -> (graph, rewrites)`.

A pass never mutates its argument (it works on `graph.clone()`), returns the
new graph and how many rewrites it made, and keeps every invariant that
`verify.verify` checks. Its docstring says what it matches, what it produces,
its pre- and post-conditions, and which passes must run before it. The order
they run in is `pipeline.PASSES`.
"""

from .. import fused_ops  # noqa: F401  (passes introduce the fused ops: register them first)
