"""The IR verifier that the pipeline runs after every pass."""
from __future__ import annotations

import pytest

from pass_testing import bind_llama3
from rustinfer.compiler.ir import Node, Value
from rustinfer.compiler.verify import VerifyError, verify


@pytest.fixture
def graph():
    return bind_llama3(num_hidden_layers=1)


def find(graph, name):
    return next(n for n in graph.nodes if name in n.outputs)


def problems(graph) -> str:
    with pytest.raises(VerifyError) as err:
        verify(graph, after="test")
    assert "after pass 'test'" in str(err.value)
    return "\n".join(err.value.problems)


def test_bound_graph_verifies(graph):
    verify(graph)


def test_use_before_definition(graph):
    q = find(graph, "layers.0/attn/q")
    graph.nodes.remove(q)
    graph.nodes.append(q)
    assert "input 'layers.0/attn/q' is used before it is defined" in problems(graph)


def test_redefinition(graph):
    graph.nodes.append(Node("silu", ["logits"], ["h"], name="again"))
    assert "redefines 'h' (not SSA)" in problems(graph)


def test_stale_shape(graph):
    graph.values["layers.0/attn/k"].shape = ("T", 99)
    assert "'layers.0/attn/k' is stored as [T, 99] but infers to [T, 8]" in problems(graph)


def test_missing_value_and_output(graph):
    find(graph, "layers.0/mlp/up").inputs[1] = "no.such.weight"
    graph.outputs.append("nowhere")
    text = problems(graph)
    assert "input 'no.such.weight' does not exist" in text
    assert "graph output 'nowhere' is not defined by any node" in text


def test_op_signature(graph):
    find(graph, "layers.0/attn/x").attrs.pop("eps")
    find(graph, "layers.0/attn/q").attrs["bogus"] = 1
    graph.nodes.append(Node("frobnicate", [], [], name="x"))
    text = problems(graph)
    assert "missing attribute 'eps'" in text
    assert "unknown attribute 'bogus'" in text
    assert "(frobnicate): unknown op" in text


def test_orphans_and_kinds(graph):
    graph.values["left/over"] = Value("left/over", ("T", 4))
    graph.values["extra"] = Value("extra", ("T",), "int64", "input")
    att = find(graph, "layers.0/attn/out")
    att.inputs[-1] = "model.norm.weight"
    text = problems(graph)
    assert "activation 'left/over' is defined by no node" in text
    assert "input value 'extra' is not a graph input" in text
    assert "input 'model.norm.weight' should be a cache" in text
