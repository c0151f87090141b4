"""dead_value_removal: before/expected IR, side effects kept, and differential checks."""
from __future__ import annotations

from pass_testing import bind_text, bind_tiny_mha, check, small_spec
from rustinfer.compiler.passes import dead_value_removal, fuse_add_rms_norm, fuse_qkv
from rustinfer.compiler.verify import verify

BEFORE = small_spec(
    weights="""
        w_dead: {name: w_dead, shape: [d, d]}
        w_unused: {name: w_unused, shape: [d]}
        wq: {name: wq, shape: [d, d]}
        ln: {name: ln, shape: [d]}
    """,
    prologue="""
        - h: embedding(tokens, emb)
        - dead: linear(h, w_dead)
        - deader: silu(dead)
        - q: linear(h, wq)
        - o: attention(q, q, q, heads=2, kv_heads=2, head_dim=4)
        - s: add(h, h)
        - y: rms_norm(s, ln, eps=1e-5)
    """,
    outputs="[y]")

# The attention's output is unused but it writes the KV cache: kept. The sum
# of add_rms_norm is unused: blanked to '_'.
EXPECTED = """\
graph t
  input  %tokens: int64[T]
  input  %positions: int64[T]
  weight @emb: float32[11, 8]
  weight @wq: float32[8, 8]
  weight @ln: float32[8]
  cache  $o/k_cache: float32[blocks, block_size, 2, 4]
  cache  $o/v_cache: float32[blocks, block_size, 2, 4]
  %h = embedding(%tokens, @emb)  # [T, 8]
  %q = linear(%h, @wq)  # [T, 8]
  %o = attention(%q, %q, %q, $o/k_cache, $o/v_cache) {heads=2, kv_heads=2, head_dim=4, scale=None}  # [T, 8]
  %y, _ = add_rms_norm(%h, %h, @ln) {eps=1e-05, offset=0.0}  # [T, 8]
  return %y
"""


def test_before_expected():
    before, _ = fuse_add_rms_norm.run(bind_text(BEFORE))
    after, n = dead_value_removal.run(before)
    assert after.to_text() == EXPECTED
    assert n == 2 + 1 + 2          # dead, deader; the blanked sum; w_dead, w_unused
    assert "dead" not in after.values and "s" not in after.values
    check(before, after)
    assert dead_value_removal.run(after)[1] == 0                 # idempotent


def test_removes_weights_fusions_replaced():
    before = bind_tiny_mha(n_layer=2)
    fused, _ = fuse_qkv.run(before)
    after, n = dead_value_removal.run(fused)
    assert n == 2 * 6                                # per layer: q, k, v weights and biases
    names = {v.name for v in after.weights()}
    assert "blocks.1.attn.query.w" not in names and "blocks.1.attn.value+key+query.w" in names
    assert "wte" in names                            # tied: read by embedding and head
    check(before, after)


def test_graph_inputs_are_kept():
    text = BEFORE.replace("  - o: attention(q, q, q, heads=2, kv_heads=2, head_dim=4)\n", "")
    after, _ = dead_value_removal.run(bind_text(text))
    assert after.inputs == ["tokens", "positions"]   # positions is unused now, still fed
    assert not after.caches()
    verify(after)
