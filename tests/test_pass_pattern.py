"""The declarative pattern matcher and rewrite driver that every fusion pass uses."""
from __future__ import annotations

import pytest

from pass_testing import bind_text, small_spec
from rustinfer.compiler.pattern import Pattern, PatternError
from rustinfer.compiler.rewrite import fused_name, rewrite_all

SPEC = small_spec(
    weights="""
        w1: {name: w1, shape: [d, d]}
        w2: {name: w2, shape: [d, d]}
        ln: {name: ln, shape: [d]}
    """,
    prologue="""
        - x: embedding(tokens, emb)
        - a: linear(x, w1)
        - b: linear(x, w2)
        - s: silu(a)
        - p: mul(b, s)
        - n: rms_norm(p, ln, eps=1e-5, offset=1.0)
        - r1: rope(n, positions, heads=2, head_dim=4, theta=10.0)
        - r2: rope(p, positions, heads=2, head_dim=4, theta=20.0)
        - out: add(r1, r2)
    """,
    outputs="[out]")


@pytest.fixture
def graph():
    return bind_text(SPEC)


def bindings(pattern: Pattern, graph) -> list[dict]:
    return [m.env for m in pattern.matches(graph)]


def test_shared_variable_and_graph_order(graph):
    pat = Pattern("""
        u = linear(x, w)
        v = linear(x, w2)
    """)
    found = bindings(pat, graph)
    assert [(m["u"], m["v"]) for m in found] == [("a", "b"), ("b", "a")]


def test_commutative_mul(graph):
    pat = Pattern("""
        s = silu(g)
        m = mul(s, u)
    """)
    (m,) = bindings(pat, graph)
    assert (m["g"], m["u"], m["m"]) == ("a", "b", "p")


def test_attribute_variables_unify(graph):
    same_theta = Pattern("""
        q = rope(x, pos, theta=th)
        k = rope(y, pos, theta=th)
    """)
    assert bindings(same_theta, graph) == []
    any_theta = Pattern("""
        q = rope(x, pos, theta=t1)
        k = rope(y, pos, theta=t2)
    """)
    assert len(bindings(any_theta, graph)) == 2


def test_attribute_literals(graph):
    assert len(bindings(Pattern("y = rms_norm(x, w, offset=1.0)"), graph)) == 1
    assert bindings(Pattern("y = rms_norm(x, w, offset=0.0)"), graph) == []
    assert bindings(Pattern("y = rms_norm(x, w, nonexistent=1)"), graph) == []


def test_optional_input_and_wildcard(graph):
    found = bindings(Pattern("y = linear(_, w, [b])"), graph)
    assert [m["y"] for m in found] == ["a", "b"]
    assert all(m["b"] is None for m in found)
    assert bindings(Pattern("y = linear(x, w, b)"), graph) == []    # required bias: no match


def test_constraints_filter(graph):
    pat = Pattern("y = linear(x, w)", where=[lambda m: m["w"] == "w2"])
    assert [m["y"] for m in pat.matches(graph)] == ["b"]


@pytest.mark.parametrize("text, message", [
    ("linear(x, w)", "expected `out = op"),
    ("y = linear(x, [b], w)", "optional inputs must come last"),
    ("y = rope(x, th, theta=th)", "both as values and attributes"),
    ("y = silu(x)\ny = silu(z)", "defined twice"),
    ("y = linear(x.z, w)", "expected a variable name"),
])
def test_bad_patterns(text, message):
    with pytest.raises(PatternError, match=message):
        Pattern(text)


def test_rewrite_that_would_drop_a_used_value_is_skipped(graph):
    """p is read by r2 and n: replacing mul+rms_norm by one node without p is illegal."""
    pat = Pattern("""
        p = mul(b, s)
        n = rms_norm(p, w, eps=e, offset=o)
    """)

    def fuse(m, rw):
        return [rw.node("rms_norm", [m["b"], m["w"]], [m["n"]], {"eps": m["e"], "offset": m["o"]})]

    after, count = rewrite_all(graph, pat, fuse)
    assert count == 0 and after.to_text() == graph.to_text()


def test_rewrite_is_pure_and_reinfers_shapes(graph):
    pat = Pattern("y = silu(x)")

    def to_mul(m, rw):
        return [rw.node("mul", [m["x"], m["x"]], [m["y"]])]

    before = graph.to_text()
    after, count = rewrite_all(graph, pat, to_mul)
    assert count == 1 and graph.to_text() == before
    assert "%s = mul(%a, %a)  # [T, 8]" in after.to_text()


def test_fused_name():
    assert fused_name(["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"]
                      ) == "model.layers.0.mlp.gate+up_proj.weight"
    assert fused_name(["layers.0/attn/q", "layers.0/attn/k", "layers.0/attn/v"]
                      ) == "layers.0/attn/q+k+v"
    assert fused_name(["blk.3.attn_q.weight", "blk.3.attn_k.weight"]) == "blk.3.attn_q+k.weight"
    assert fused_name(["w1", "w3"]) == "w1+w3"
