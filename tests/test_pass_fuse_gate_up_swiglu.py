"""fuse_gate_up_swiglu: before/expected IR, constraints, and differential checks."""
from __future__ import annotations

from pass_testing import bind_llama3, bind_text, bind_tiny_mha, check, small_spec
from rustinfer.compiler.passes import fuse_gate_up_swiglu
from rustinfer.compiler.verify import differential

# Up projected first, `mul(up, act)`: the pattern is commutative and order-free.
BEFORE = small_spec(
    config="f: {default: 12}",
    weights="""
        w_up: {name: mlp.up, shape: [f, d]}
        w_gate: {name: mlp.gate, shape: [f, d]}
        w_down: {name: mlp.down, shape: [d, f]}
    """,
    prologue="""
        - x: embedding(tokens, emb)
        - up: linear(x, w_up)
        - gate: linear(x, w_gate)
        - act: silu(gate)
        - prod: mul(up, act)
        - y: linear(prod, w_down)
    """,
    outputs="[y]")

EXPECTED = """\
graph t
  input  %tokens: int64[T]
  input  %positions: int64[T]
  weight @emb: float32[11, 8]
  weight @mlp.up: float32[12, 8]
  weight @mlp.gate: float32[12, 8]
  weight @mlp.down: float32[8, 12]
  weight @mlp.gate+up: float32[24, 8] <- concat(mlp.gate, mlp.up)
  %x = embedding(%tokens, @emb)  # [T, 8]
  %gate+up = linear(%x, @mlp.gate+up)  # [T, 24]
  %prod = swiglu(%gate+up)  # [T, 12]
  %y = linear(%prod, @mlp.down)  # [T, 8]
  return %y
"""


def test_before_expected():
    before = bind_text(BEFORE)
    after, n = fuse_gate_up_swiglu.run(before)
    assert n == 1
    assert after.to_text() == EXPECTED
    check(before, after)


def test_biases_are_concatenated_gate_first():
    text = (BEFORE.replace("w_down:", "b_up: {name: mlp.up.b, shape: [f]}\n"
                           "  b_gate: {name: mlp.gate.b, shape: [f]}\n  w_down:")
            .replace("linear(x, w_up)", "linear(x, w_up, b_up)")
            .replace("linear(x, w_gate)", "linear(x, w_gate, b_gate)"))
    before = bind_text(text)
    after, n = fuse_gate_up_swiglu.run(before)
    assert n == 1
    assert "weight @mlp.gate+up.b: float32[24] <- concat(mlp.gate.b, mlp.up.b)" in after.to_text()
    differential(before, after)


def test_gate_used_elsewhere_is_not_fused():
    text = BEFORE.replace("outputs: [y]", "outputs: [y, gate]")
    after, n = fuse_gate_up_swiglu.run(bind_text(text))
    assert n == 0


def test_activation_used_elsewhere_is_not_fused():
    text = BEFORE.replace("outputs: [y]", "outputs: [y, act]")
    assert fuse_gate_up_swiglu.run(bind_text(text))[1] == 0


def test_gate_of_another_input_is_not_fused():
    text = (BEFORE.replace("  - gate: linear(x, w_gate)\n",
                           "  - x2: silu(x)\n  - gate: linear(x2, w_gate)\n"))
    assert fuse_gate_up_swiglu.run(bind_text(text))[1] == 0


def test_other_spec_plain_mlp_left_alone():
    before = bind_tiny_mha(n_layer=3)
    after, n = fuse_gate_up_swiglu.run(before)
    assert n == 2                                    # layer 0's MLP is not gated
    text = after.to_text()
    assert "%layers.0/ff_act = silu(%layers.0/ff)" in text
    assert "%layers.2/prod = swiglu(%layers.2/gate+up)  # [T, 24]" in text
    check(before, after)


def test_llama3():
    before = bind_llama3(num_hidden_layers=3)
    after, n = fuse_gate_up_swiglu.run(before)
    assert n == 3
    assert not any(node.op in ("silu", "mul") for node in after.nodes)
    check(before, after)
