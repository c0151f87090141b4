"""fuse_add_rms_norm: before/expected IR, and differential checks."""
from __future__ import annotations

from pass_testing import bind_llama3, bind_text, bind_tiny_mha, check, nodes_text, small_spec
from rustinfer.compiler.passes import fuse_add_rms_norm

BEFORE = small_spec(
    weights="""
        w1: {name: w1, shape: [d, d]}
        w2: {name: w2, shape: [d, d]}
        ln0: {name: ln0, shape: [d]}
        ln1: {name: ln1, shape: [d]}
        ln2: {name: ln2, shape: [d]}
    """,
    prologue="""
        - h0: embedding(tokens, emb)
        - n0: rms_norm(h0, ln0, eps=1e-5)
        - br: linear(n0, w1)
        - h1: add(br, h0)
        - n1: rms_norm(h1, ln1, eps=1e-5)
        - br2: linear(n1, w2)
        - h2: add(h1, br2)
        - n2: rms_norm(h2, ln2, eps=1e-6, offset=1.0)
    """,
    outputs="[n2]")

EXPECTED_NODES = """\
  %h0 = embedding(%tokens, @emb)  # [T, 8]
  %n0 = rms_norm(%h0, @ln0) {eps=1e-05, offset=0.0}  # [T, 8]
  %br = linear(%n0, @w1)  # [T, 8]
  %n1, %h1 = add_rms_norm(%br, %h0, @ln1) {eps=1e-05, offset=0.0}  # [T, 8], [T, 8]
  %br2 = linear(%n1, @w2)  # [T, 8]
  %n2, %h2 = add_rms_norm(%h1, %br2, @ln2) {eps=1e-06, offset=1.0}  # [T, 8], [T, 8]
  return %n2
"""


def test_before_expected():
    before = bind_text(BEFORE)
    after, n = fuse_add_rms_norm.run(before)
    assert n == 2                                    # n0 normalises the embedding: not a sum
    assert nodes_text(after) == EXPECTED_NODES
    check(before, after)


def test_sum_used_between_add_and_norm():
    """The fused node goes where the add was, so users of the sum before the norm still work."""
    text = (BEFORE.replace("  - n1: rms_norm(h1, ln1, eps=1e-5)\n",
                           "  - z: silu(h1)\n  - n1: rms_norm(h1, ln1, eps=1e-5)\n")
            .replace("outputs: [n2]", "outputs: [n2, z]"))
    before = bind_text(text)
    after, n = fuse_add_rms_norm.run(before)
    assert n == 2
    check(before, after)


def test_other_spec():
    before = bind_tiny_mha(n_layer=3)
    after, n = fuse_add_rms_norm.run(before)
    assert n == 6                                    # 2 per layer - layer 0's input norm + final
    assert "offset=1.0" in after.to_text()
    check(before, after)


def test_llama3_counts_2_per_layer():
    before = bind_llama3(num_hidden_layers=3)
    after, n = fuse_add_rms_norm.run(before)
    assert n == 2 * 3
    assert [node.op for node in after.nodes].count("rms_norm") == 1
    check(before, after)
