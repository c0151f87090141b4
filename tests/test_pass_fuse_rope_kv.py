"""fuse_rope_kv: before/expected IR, constraints, and differential checks (KV caches included)."""
from __future__ import annotations

from pass_testing import bind_llama3, bind_text, bind_tiny_mha, check, nodes_text, small_spec
from rustinfer.compiler.passes import fuse_qkv, fuse_rope_kv
from rustinfer.compiler.verify import differential, verify

# k is rotated before q is projected; v is projected last (after both ropes).
BEFORE = small_spec(
    weights="""
        wq: {name: wq, shape: [d, d]}
        wk: {name: wk, shape: [4, d]}
        wv: {name: wv, shape: [4, d]}
    """,
    prologue="""
        - x: embedding(tokens, emb)
        - k: linear(x, wk)
        - kr: rope(k, positions, heads=1, head_dim=4, theta=500.0)
        - q: linear(x, wq)
        - qr: rope(q, positions, heads=2, head_dim=4, theta=500.0)
        - v: linear(x, wv)
        - o: attention(qr, kr, v, heads=2, kv_heads=1, head_dim=4)
    """,
    outputs="[o]")

EXPECTED_NODES = """\
  %x = embedding(%tokens, @emb)  # [T, 8]
  %k = linear(%x, @wk)  # [T, 4]
  %q = linear(%x, @wq)  # [T, 8]
  %v = linear(%x, @wv)  # [T, 4]
  %qr = rope_kv_write(%q, %k, %v, %positions, $o/k_cache, $o/v_cache) {heads=2, kv_heads=1, head_dim=4, theta=500.0, scaling=None}  # [T, 8]
  %o = cached_attention(%qr, $o/k_cache, $o/v_cache) {heads=2, kv_heads=1, head_dim=4, scale=None}  # [T, 8]
  return %o
"""


def test_before_expected():
    before = bind_text(BEFORE)
    after, n = fuse_rope_kv.run(before)
    assert n == 1
    assert nodes_text(after) == EXPECTED_NODES
    assert "kr" not in after.values
    check(before, after)                             # outputs and both caches, 3 steps


def test_different_theta_is_not_fused():
    text = BEFORE.replace("heads=1, head_dim=4, theta=500.0", "heads=1, head_dim=4, theta=400.0")
    assert fuse_rope_kv.run(bind_text(text))[1] == 0


def test_rotated_k_used_elsewhere_is_not_fused():
    text = BEFORE.replace("outputs: [o]", "outputs: [o, kr]")
    assert fuse_rope_kv.run(bind_text(text))[1] == 0


def test_rotated_q_used_after_attention_is_fused():
    text = BEFORE.replace("outputs: [o]", "outputs: [o, qr]")
    before = bind_text(text)
    after, n = fuse_rope_kv.run(before)
    assert n == 1
    differential(before, after)


def test_rotated_q_used_before_attention_is_not_fused():
    """rope_kv_write goes where the attention was: an earlier user of q_rot would break."""
    text = (BEFORE.replace("  - v: linear(x, wv)\n", "  - v: linear(x, wv)\n  - z: silu(qr)\n")
            .replace("outputs: [o]", "outputs: [o, z]"))
    after, n = fuse_rope_kv.run(bind_text(text))
    assert n == 0
    verify(after)


def test_after_fuse_qkv_on_other_spec():
    before = bind_tiny_mha(n_layer=2)
    split, _ = fuse_qkv.run(before)
    after, n = fuse_rope_kv.run(split)
    assert n == 2
    assert not any(node.op in ("rope", "attention") for node in after.nodes)
    check(before, after)


def test_llama3_with_rope_scaling():
    before = bind_llama3(
        hidden_size=32, num_hidden_layers=2, rope_theta=500000.0, max_position_embeddings=512,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 4})
    after, n = fuse_rope_kv.run(before)
    assert n == 2
    check(before, after)
