"""The memory planner, tested by invariants (as tinygrad's test_memory_planner) on
random graphs and on the bound llama3 graph, plus golden numbers for the Llama layer."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rustinfer.compiler.bind import bind
from rustinfer.compiler.ir import Graph, Node, Value
from rustinfer.compiler.codegen import memory_text
from rustinfer.compiler.memory_plan import mib, plan_memory
from rustinfer.compiler.ops import OPS, REQUIRED, OpDef
from rustinfer.compiler.spec import load_spec

SPEC = load_spec(Path(__file__).resolve().parent.parent / "specs" / "llama3.yaml")
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=100, rms_norm_eps=1e-5)
SMOLLM2 = dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
               intermediate_size=1536, num_hidden_layers=30, vocab_size=49152,
               tie_word_embeddings=True, rms_norm_eps=1e-5)


@pytest.fixture
def split_op(monkeypatch):
    """A throwaway view op (the unfused graph has none yet); removed after the test."""
    monkeypatch.setitem(OPS, "test_split", OpDef("test_split", ("x",), attrs={"sizes": REQUIRED},
                                                 outputs=2, view=True, primitive=False))


# --- an oracle written independently of the planner ---------------------------------

def _roots(graph: Graph) -> dict[str, str]:
    root = {}
    for node in graph.nodes:
        if OPS.get(node.op) is not None and OPS[node.op].view:
            for out in node.outputs:
                root[out] = root.get(node.inputs[0], node.inputs[0])
    return root


def _live_at_each_step(graph: Graph) -> list[set[str]]:
    """Buffers a step needs at once: its outputs, and everything made at or before it
    that it or a later step reads (through views, their roots)."""
    root, made = _roots(graph), {}
    for i, node in enumerate(graph.nodes):
        for out in node.outputs:
            made[out] = i
    steps = []
    for i, node in enumerate(graph.nodes):
        live = {root.get(o, o) for o in node.outputs}
        for later in graph.nodes[i:]:
            live |= {root.get(x, x) for x in later.inputs
                     if root.get(x, x) in made and made[root.get(x, x)] <= i}
        steps.append(live)
    return steps


def check_invariants(graph: Graph, plan, alignment: int) -> None:
    slots = plan.slots
    roots = {n: s for n, s in slots.items() if s.view_of is None}
    # Pinned values are never planned; every other activation is.
    pinned = set(graph.outputs) | {_roots(graph).get(o, o) for o in graph.outputs}
    for name, value in graph.values.items():
        if value.kind != "act" or name in pinned or _roots(graph).get(name) in pinned:
            assert name not in slots, name
        elif any(name in node.outputs for node in graph.nodes):
            assert name in slots, name
    buffers = {_roots(graph).get(o, o) for o in graph.outputs}
    assert set(plan.pinned) == {n for n in buffers if graph.values[n].kind == "act"}
    # Alignment, and the arena between the lower bound and the naive size.
    assert all(s.offset % alignment == 0 for s in slots.values())
    assert plan.arena_bytes % alignment == 0
    assert all(s.offset + s.size <= plan.arena_bytes for s in slots.values())
    assert plan.peak_live_bytes <= plan.arena_bytes <= plan.naive_bytes
    # No two buffers needed at the same step overlap in bytes.
    for step, live in enumerate(_live_at_each_step(graph)):
        placed = sorted((roots[n].offset, roots[n].offset + roots[n].size, n)
                        for n in live if n in roots)
        for (_, end_a, a), (lo_b, _, b) in zip(placed, placed[1:]):
            assert end_a <= lo_b, f"step {step}: {a} and {b} overlap"
        for n in live & set(roots):
            assert roots[n].start <= step < roots[n].end, (n, step)
    # A view repeats its root's bytes, and the root outlives the view.
    for name, s in slots.items():
        if s.view_of is not None:
            r = slots[s.view_of]
            assert (s.offset, s.size) == (r.offset, r.size)
            assert r.start <= s.start and s.end <= r.end


def random_graph(rng: random.Random, n_nodes: int, views: bool) -> Graph:
    values = {"x": Value("x", ("T", 8), kind="input"),
              "w": Value("w", (8, 8), kind="weight"),
              "cache": Value("cache", ("blocks", "block_size", 2, 4), kind="cache")}
    acts, nodes = ["x"], []
    for i in range(n_nodes):
        # Mostly recent values (realistic lifetimes), sometimes an old one (a residual).
        pool = acts[-4:] + [rng.choice(acts)]
        inputs = rng.sample(pool, k=min(len(pool), rng.randint(1, 3)))
        extra = [n for n in ("w", "cache") if rng.random() < 0.3]
        if views and rng.random() < 0.2 and values[inputs[0]].kind == "act":
            op, attrs, n_out = "test_split", {"sizes": [4, 4]}, 2
        else:
            op, attrs, n_out = rng.choice(["add", "mul", "silu"]), {}, rng.choice([1, 1, 2])
        outs = []
        for k in range(n_out):
            name = f"v{i}.{k}"
            shape = rng.choice([("T", rng.randint(1, 64)), ("B", 3), (rng.randint(1, 300),),
                                ("T", "R"), ("T",)])
            values[name] = Value(name, shape)
            outs.append(name)
        nodes.append(Node(op, inputs + extra, outs, attrs, name=outs[0]))
        acts += outs
    outputs = rng.sample(acts[1:], k=min(len(acts) - 1, rng.randint(1, 2)))
    return Graph("random", nodes, values, ["x"], outputs)


@pytest.mark.parametrize("views", [False, True])
def test_random_graphs_keep_the_invariants(views, request):
    if views:
        request.getfixturevalue("split_op")
    rng = random.Random(1234)
    for _ in range(150):
        graph = random_graph(rng, rng.randint(1, 40), views)
        tokens, alignment = rng.choice([1, 7, 64]), rng.choice([1, 16, 64, 256])
        for enabled in (True, False):
            plan = plan_memory(graph, max_tokens=tokens, max_seqs=5, alignment=alignment,
                               enabled=enabled)
            check_invariants(graph, plan, alignment)
            if not enabled:
                assert plan.arena_bytes == plan.naive_bytes
                spans = sorted((s.offset, s.offset + s.size) for s in plan.slots.values()
                               if s.view_of is None)
                assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def _llama(config: dict, tokens: int, **kw):
    graph = bind(SPEC, config)
    plan = plan_memory(graph, max_tokens=tokens, **kw)
    check_invariants(graph, plan, kw.get("alignment", 64))
    return graph, plan


def test_llama_small_graph():
    graph, plan = _llama(SMALL, 16)
    assert set(plan.pinned) == {"logits"} and plan.pinned["logits"] == 16 * 100 * 4
    # Golden: greedy reaches the lower bound on the unfused Llama graph.
    assert plan.arena_bytes == plan.peak_live_bytes
    _, off = _llama(SMALL, 16, enabled=False)
    assert off.arena_bytes == off.naive_bytes == plan.naive_bytes


@pytest.mark.parametrize("name", ["llama-3.2-1b", "smollm2"])
def test_llama_layer_golden(name, llama32_1b_dir):
    config = (json.loads((llama32_1b_dir / "config.json").read_text())
              if name == "llama-3.2-1b" else SMOLLM2)
    graph, plan = _llama(config, 2048)
    ratio = plan.arena_bytes / plan.naive_bytes
    print(f"{name} @2048 tokens: {plan.summary()}; planned/naive = {ratio:.4f}; "
          f"pinned logits {plan.pinned['logits'] / 2**20:.0f} MiB")
    assert ratio <= 0.5
    # The peak is the residual stream plus three [T, ffn] buffers of the SwiGLU MLP
    # (gate and up read by silu / mul while act or prod is written).
    h, ffn = config["hidden_size"], config["intermediate_size"]
    assert plan.peak_live_bytes == 2048 * 4 * (h + 3 * ffn)
    assert plan.arena_bytes == plan.peak_live_bytes


def test_an_output_never_shares_bytes_with_an_input_of_its_node():
    # x -> a -> b -> c: a's last reader is node 1, which writes b. With end-exclusive
    # intervals end = 1 + last reader, a = [0, 2) and b = [1, 3) overlap, so b gets
    # other bytes; c = [2, 3) may reuse a's.
    values = {"x": Value("x", ("T", 16), kind="input")}
    values.update({n: Value(n, ("T", 16)) for n in "abcd"})
    nodes = [Node("silu", ["x"], ["a"]), Node("silu", ["a"], ["b"]),
             Node("silu", ["b"], ["c"]), Node("silu", ["c"], ["d"])]
    plan = plan_memory(Graph("chain", nodes, values, ["x"], ["d"]), max_tokens=4)
    s = plan.slots
    assert (s["a"].start, s["a"].end, s["b"].start, s["b"].end) == (0, 2, 1, 3)
    assert s["a"].offset != s["b"].offset and s["b"].offset != s["c"].offset
    assert s["a"].offset == s["c"].offset
    assert plan.arena_bytes == plan.peak_live_bytes == 2 * 4 * 16 * 4


def _split_graph() -> Graph:
    #   x -> a -> test_split -> (q, k);  b = silu(q); e = silu(x); c = add(b, k, e);
    #   f = silu(c); out = silu(f)
    values = {"x": Value("x", ("T", 8), kind="input")}
    values.update({n: Value(n, ("T", 8)) for n in ("a", "b", "e", "c", "f", "out")})
    values.update({n: Value(n, ("T", 4)) for n in ("q", "k")})
    nodes = [Node("silu", ["x"], ["a"]),
             Node("test_split", ["a"], ["q", "k"], {"sizes": [4, 4]}),
             Node("silu", ["q"], ["b"]),
             Node("silu", ["x"], ["e"]),
             Node("add", ["b", "k", "e"], ["c"]),
             Node("silu", ["c"], ["f"]),
             Node("silu", ["f"], ["out"])]
    return Graph("split", nodes, values, ["x"], ["out"])


def test_views_alias_their_root_and_extend_its_life(split_op):
    graph = _split_graph()
    plan = plan_memory(graph, max_tokens=2, alignment=16)
    check_invariants(graph, plan, 16)
    s = plan.slots
    # a is last read (through k) by node 4, so it lives [0, 5), not [0, 2).
    assert (s["a"].start, s["a"].end) == (0, 5)
    assert s["q"].view_of == s["k"].view_of == "a" and s["q"].strided
    assert (s["q"].offset, s["q"].size) == (s["a"].offset, s["a"].size)
    assert (s["k"].start, s["k"].end) == (1, 5)
    # b and e are written while a is still live through k: other bytes.
    for n in ("b", "e"):
        assert s[n].offset + s[n].size <= s["a"].offset or s["a"].offset + 64 <= s[n].offset
    assert plan.naive_bytes == 5 * 64   # a, b, e, c, f: [2, 8] x 4 B each; views cost nothing
    assert s["f"].offset == s["a"].offset   # f starts (5) when a's life through k ends
    text = plan.table()
    assert "q (strided view of a)" in text and "pinned" in text and "out" in text
    out = plan.to_json()
    assert out["planned_bytes"] == plan.arena_bytes and out["pinned"] == {"out": {"size": 64}}
    assert out["values"]["q"] == {"offset": s["a"].offset, "size": 64, "start": 1, "end": 3,
                                  "view_of": "a", "strided": True}


def test_a_view_that_is_an_output_pins_its_root(split_op):
    graph = _split_graph()
    graph.outputs = ["k"]
    plan = plan_memory(graph, max_tokens=2)
    assert "a" not in plan.slots and "k" not in plan.slots and "q" not in plan.slots
    assert plan.pinned == {"a": 64}


def test_golden_table(split_op):
    # Review every diff of this text: it is the planner's output, made readable (memory.txt).
    plan = plan_memory(_split_graph(), max_tokens=2**16)
    text = memory_text(plan)
    print(text)
    assert text == GOLDEN_TABLE.strip("\n")


GOLDEN_TABLE = """
memory plan for MAX_TOKENS = 65536 tokens per step (all sizes are for a step that large)
  planned       8388608 bytes (8.0 MiB): the arena (plan.py's ARENA_BYTES)
  naive        10485760 bytes (10.0 MiB): one buffer per value, no sharing
  lower bound   8388608 bytes (8.0 MiB): the peak of simultaneously live bytes

Slot table: each group's values take turns in its bytes (sizes at MAX_TOKENS = 65536 tokens).
  offset  in arena elements of ACT_BYTES = 4 bytes, as plan.py slices its arena: arena[offset:...]
  bytes   the value's size
  live    [a, b): written by step a, last read by step b - 1 (plan.py's `# [n]` comments);
          values whose live ranges overlap never share bytes
    offset        bytes  live       value
-- arena[0:524288] = bytes [0, 2097152): 2 values
         0      2097152  [0, 5)     a
                         [1, 3)     q (strided view of a)
                         [1, 5)     k (strided view of a)
         0      2097152  [5, 7)     f
-- arena[524288:1048576] = bytes [2097152, 4194304): 1 value
    524288      2097152  [2, 5)     b
-- arena[1048576:1572864] = bytes [4194304, 6291456): 1 value
   1048576      2097152  [3, 5)     e
-- arena[1572864:2097152] = bytes [6291456, 8388608): 1 value
   1572864      2097152  [4, 6)     c
-- pinned: graph outputs, each in its own buffer outside the arena
    pinned      2097152             out
"""


def test_table_offsets_are_arena_elements_and_totals_are_defined(split_op):
    """The slot table gives offsets in the unit plan.py slices its arena with (elements of
    act_bytes), names MAX_TOKENS, defines its columns and the lower bound, and rounds MiB as
    report.txt does; the totals come once (memory.txt used to print them twice)."""
    plan = plan_memory(_split_graph(), max_tokens=2**16, act_bytes=2)
    text = memory_text(plan)
    rows = {line.split()[-1]: line.split() for line in text.splitlines()
            if line[:10].strip().isdigit()}
    for name in ("a", "b", "e", "c", "f"):
        assert int(rows[name][0]) == plan.slots[name].offset // 2
        assert int(rows[name][1]) == plan.slots[name].size
    assert "ACT_BYTES = 2 bytes" in text and "MAX_TOKENS = 65536" in text
    assert "live    [a, b): written by step a, last read by step b - 1" in text
    assert "lower bound" in text and "the peak of simultaneously live bytes" in text
    assert f"({plan.arena_bytes / 2**20:.1f} MiB)" in text
    assert text.count("memory plan for") == 1 and plan.table() in text
    assert mib(2.25 * 2**20) == f"{2.25:.1f} MiB"      # report.txt's rounding


def test_unbound_symbol_is_an_error():
    graph = Graph("g", [Node("silu", ["x"], ["a"]), Node("silu", ["a"], ["b"])],
                  {"x": Value("x", ("T",), kind="input"), "a": Value("a", ("S", 2)),
                   "b": Value("b", ("T",))}, ["x"], ["b"])
    with pytest.raises(ValueError, match="'a' has symbolic dim 'S'"):
        plan_memory(graph, max_tokens=4)


# --- in place: linear_add writes the residual stream into its own bytes ------------------

def _cuda_fused(**config):
    from rustinfer.compiler.pipeline import run_pipeline

    graph, _ = run_pipeline(bind(SPEC, {**SMALL, **config}), target="cuda")
    return graph


def test_the_residual_stream_is_one_buffer_updated_in_place():
    """Every linear_add's output takes its residual's bytes (exactly: the same offset and
    size), so the cuda plan's residual stream is one buffer; the in-place outputs are
    marked as such in the slot table, and the rest of the plan still never overlaps."""
    graph = _cuda_fused()
    plan = plan_memory(graph, max_tokens=16)
    adds = [n for n in graph.nodes if n.op == "linear_add"]
    assert len(adds) == 2 * SMALL["num_hidden_layers"]
    for node in adds:
        out, res = plan.slots[node.outputs[0]], node.inputs[2]
        assert out.in_place and out.view_of == "h"
        assert out.offset == plan.slots[res].offset == plan.slots["h"].offset
    assert "written in place of h" in plan.table()
    roots = {n for n, s in plan.slots.items() if s.view_of is None}
    for name, s in plan.slots.items():         # nothing else lives in the stream's bytes
        if name in roots and name != "h":       # while the stream is live
            h = plan.slots["h"]
            assert (s.offset + s.size <= h.offset or h.offset + h.size <= s.offset
                    or s.end <= h.start or h.end <= s.start), name


def test_a_residual_read_later_keeps_its_own_bytes():
    """If anything reads the residual after the linear_add, writing over it would lose it:
    that output gets bytes of its own."""
    graph = _cuda_fused(num_hidden_layers=1)
    first = next(n for n in graph.nodes if n.op == "linear_add")
    res = first.inputs[2]
    graph.values["late"] = Value("late", graph.values[res].shape)
    graph.nodes.append(Node("silu", [res], ["late"], {}, "late"))
    graph.outputs.append("late")
    plan = plan_memory(graph, max_tokens=16)
    out = plan.slots[first.outputs[0]]
    assert not out.in_place and out.view_of is None
    later = [n for n in graph.nodes if n.op == "linear_add"][1]
    assert plan.slots[later.outputs[0]].in_place                 # the next one still is
