"""fuse_add_rms_norm: before/expected IR, and differential checks."""
from __future__ import annotations

import textwrap

from rustinfer.compiler.bind import bind
from rustinfer.compiler.passes import fuse_add_rms_norm
from rustinfer.compiler.spec import load_spec, parse_spec
from rustinfer.compiler.verify import differential, verify

TINY_MHA = "tests/specs/tiny_mha.yaml"

BEFORE = """
family: t
config:
  d: {default: 8}
  nv: {default: 11}
inputs:
  tokens: {shape: [T], dtype: int64}
  positions: {shape: [T], dtype: int64}
weights:
  emb: {name: emb, shape: [nv, d]}
  w1: {name: w1, shape: [d, d]}
  w2: {name: w2, shape: [d, d]}
  ln0: {name: ln0, shape: [d]}
  ln1: {name: ln1, shape: [d]}
  ln2: {name: ln2, shape: [d]}
prologue:
  - h0: embedding(tokens, emb)
  - n0: rms_norm(h0, ln0, eps=1e-5)
  - br: linear(n0, w1)
  - h1: add(br, h0)
  - n1: rms_norm(h1, ln1, eps=1e-5)
  - br2: linear(n1, w2)
  - h2: add(h1, br2)
  - n2: rms_norm(h2, ln2, eps=1e-6, offset=1.0)
layers: {count: 0, body: []}
outputs: [n2]
"""

EXPECTED_NODES = """\
  %h0 = embedding(%tokens, @emb)  # [T, 8]
  %n0 = rms_norm(%h0, @ln0) {eps=1e-05, offset=0.0}  # [T, 8]
  %br = linear(%n0, @w1)  # [T, 8]
  %n1, %h1 = add_rms_norm(%br, %h0, @ln1) {eps=1e-05, offset=0.0}  # [T, 8], [T, 8]
  %br2 = linear(%n1, @w2)  # [T, 8]
  %n2, %h2 = add_rms_norm(%h1, %br2, @ln2) {eps=1e-06, offset=1.0}  # [T, 8], [T, 8]
  return %n2
"""


def bind_text(text: str, config: dict | None = None):
    return bind(parse_spec(textwrap.dedent(text), "test.yaml"), config or {})


def nodes_text(graph) -> str:
    lines = graph.to_text().splitlines(keepends=True)
    return "".join(line for line in lines if line.startswith("  %") or "return" in line)


def test_before_expected():
    before = bind_text(BEFORE)
    after, n = fuse_add_rms_norm.run(before)
    assert n == 2                                    # n0 normalises the embedding: not a sum
    assert nodes_text(after) == EXPECTED_NODES
    verify(after)
    differential(before, after)


def test_sum_used_between_add_and_norm():
    """The fused node goes where the add was, so users of the sum before the norm still work."""
    text = (BEFORE.replace("  - n1: rms_norm(h1, ln1, eps=1e-5)\n",
                           "  - z: silu(h1)\n  - n1: rms_norm(h1, ln1, eps=1e-5)\n")
            .replace("outputs: [n2]", "outputs: [n2, z]"))
    before = bind_text(text)
    after, n = fuse_add_rms_norm.run(before)
    assert n == 2
    verify(after)
    differential(before, after)


def test_other_spec():
    before = bind(load_spec(TINY_MHA), dict(d_model=16, n_layer=3, n_head=2, d_ff=24, n_vocab=40))
    after, n = fuse_add_rms_norm.run(before)
    assert n == 6                                    # 2 per layer - layer 0's input norm + final
    assert "offset=1.0" in after.to_text()
    verify(after)
    differential(before, after)


def test_llama3_counts_2_per_layer():
    config = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
    before = bind(load_spec("llama3"), config)
    after, n = fuse_add_rms_norm.run(before)
    assert n == 2 * 3
    assert [node.op for node in after.nodes].count("rms_norm") == 1
    verify(after)
    differential(before, after)
