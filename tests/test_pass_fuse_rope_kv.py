"""fuse_rope_kv: before/expected IR, constraints, and differential checks (KV caches included)."""
from __future__ import annotations

import textwrap

from rustinfer.compiler.bind import bind
from rustinfer.compiler.passes import fuse_qkv, fuse_rope_kv
from rustinfer.compiler.spec import load_spec, parse_spec
from rustinfer.compiler.verify import differential, verify

TINY_MHA = "tests/specs/tiny_mha.yaml"

# k is rotated before q is projected; v is projected last (after both ropes).
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
  wq: {name: wq, shape: [d, d]}
  wk: {name: wk, shape: [4, d]}
  wv: {name: wv, shape: [4, d]}
prologue:
  - x: embedding(tokens, emb)
  - k: linear(x, wk)
  - kr: rope(k, positions, heads=1, head_dim=4, theta=500.0)
  - q: linear(x, wq)
  - qr: rope(q, positions, heads=2, head_dim=4, theta=500.0)
  - v: linear(x, wv)
  - o: attention(qr, kr, v, heads=2, kv_heads=1, head_dim=4)
layers: {count: 0, body: []}
outputs: [o]
"""

EXPECTED_NODES = """\
  %x = embedding(%tokens, @emb)  # [T, 8]
  %k = linear(%x, @wk)  # [T, 4]
  %q = linear(%x, @wq)  # [T, 8]
  %v = linear(%x, @wv)  # [T, 4]
  %qr = rope_kv_write(%q, %k, %v, %positions, $o/k_cache, $o/v_cache) {heads=2, kv_heads=1, head_dim=4, theta=500.0, scaling=None}  # [T, 8]
  %o = cached_attention(%qr, $o/k_cache, $o/v_cache) {heads=2, kv_heads=1, head_dim=4, scale=None}  # [T, 8]
  return %o
"""


def bind_text(text: str, config: dict | None = None):
    return bind(parse_spec(textwrap.dedent(text), "test.yaml"), config or {})


def nodes_text(graph) -> str:
    lines = graph.to_text().splitlines(keepends=True)
    return "".join(line for line in lines if line.startswith("  %") or "return" in line)


def test_before_expected():
    before = bind_text(BEFORE)
    after, n = fuse_rope_kv.run(before)
    assert n == 1
    assert nodes_text(after) == EXPECTED_NODES
    assert "kr" not in after.values
    verify(after)
    differential(before, after)                      # outputs and both caches, 3 steps


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
    before = bind(load_spec(TINY_MHA), dict(d_model=16, n_layer=2, n_head=2, d_ff=24, n_vocab=40))
    split, _ = fuse_qkv.run(before)
    after, n = fuse_rope_kv.run(split)
    assert n == 2
    assert not any(node.op in ("rope", "attention") for node in after.nodes)
    verify(after)
    differential(before, after)


def test_llama3_with_rope_scaling():
    config = dict(hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
                  rope_theta=500000.0, max_position_embeddings=512,
                  rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 4})
    before = bind(load_spec("llama3"), config)
    after, n = fuse_rope_kv.run(before)
    assert n == 2
    verify(after)
    differential(before, after)
