"""fuse_qkv: before/expected IR, and the fused graph computes what the unfused one did."""
from __future__ import annotations

import pytest

from pass_testing import bind_llama3, bind_text, bind_tiny_mha, check, small_spec
from rustinfer.compiler.passes import fuse_qkv
from rustinfer.compiler.verify import differential, verify

# GQA: q has 2 heads, k/v one; no rope, so only the projections matter.
BEFORE = small_spec(
    weights="""
        wq: {name: attn.q.w, shape: [d, d]}
        wk: {name: attn.k.w, shape: [4, d]}
        wv: {name: attn.v.w, shape: [4, d]}
        bq: {name: attn.q.b, shape: [d]}
        bk: {name: attn.k.b, shape: [4]}
        bv: {name: attn.v.b, shape: [4]}
    """,
    prologue="""
        - x: embedding(tokens, emb)
        - q: linear(x, wq, bq)
        - k: linear(x, wk, bk)
        - v: linear(x, wv, bv)
        - o: attention(q, k, v, heads=2, kv_heads=1, head_dim=4)
    """,
    outputs="[o]")

EXPECTED = """\
graph t
  input  %tokens: int64[T]
  input  %positions: int64[T]
  weight @emb: float32[11, 8]
  weight @attn.q.w: float32[8, 8]
  weight @attn.k.w: float32[4, 8]
  weight @attn.v.w: float32[4, 8]
  weight @attn.q.b: float32[8]
  weight @attn.k.b: float32[4]
  weight @attn.v.b: float32[4]
  weight @attn.q+k+v.w: float32[16, 8] <- concat(attn.q.w, attn.k.w, attn.v.w)
  weight @attn.q+k+v.b: float32[16] <- concat(attn.q.b, attn.k.b, attn.v.b)
  cache  $o/k_cache: float32[blocks, block_size, 1, 4]
  cache  $o/v_cache: float32[blocks, block_size, 1, 4]
  %x = embedding(%tokens, @emb)  # [T, 8]
  %q+k+v = linear(%x, @attn.q+k+v.w, @attn.q+k+v.b)  # [T, 16]
  %q, %k, %v = split(%q+k+v) {sizes=[8, 4, 4]}  # [T, 8], [T, 4], [T, 4]
  %o = attention(%q, %k, %v, $o/k_cache, $o/v_cache) {heads=2, kv_heads=1, head_dim=4, scale=None}  # [T, 8]
  return %o
"""


def test_before_expected():
    before = bind_text(BEFORE)
    after, n = fuse_qkv.run(before)
    assert n == 1
    assert after.to_text() == EXPECTED
    verify(after)
    assert "split" not in before.to_text()          # pure: the input graph is untouched


def test_without_bias_and_differential():
    text = BEFORE.replace(", bq)", ")").replace(", bk)", ")").replace(", bv)", ")")
    before = bind_text(text)
    after, n = fuse_qkv.run(before)
    assert n == 1
    assert "%q+k+v = linear(%x, @attn.q+k+v.w)  # [T, 16]" in after.to_text()
    differential(before, after)


def test_with_bias_differential():
    before = bind_text(BEFORE)
    differential(before, fuse_qkv.run(before)[0])


def test_mixed_bias_is_not_fused():
    before = bind_text(BEFORE.replace(", bk)", ")"))
    after, n = fuse_qkv.run(before)
    assert n == 0 and after.to_text() == before.to_text()


def test_two_projections_are_not_fused():
    text = BEFORE.replace("  - v: linear(x, wv, bv)\n", "").replace("(q, k, v,", "(q, k, k,")
    after, n = fuse_qkv.run(bind_text(text))
    assert n == 0


def test_idempotent():
    once, _ = fuse_qkv.run(bind_text(BEFORE))
    twice, n = fuse_qkv.run(once)
    assert n == 0 and twice.to_text() == once.to_text()


def test_other_spec_other_order():
    """v, k, q written in that order with biases: fused in graph order, names kept."""
    before = bind_tiny_mha(n_layer=3)
    after, n = fuse_qkv.run(before)
    assert n == 3
    text = after.to_text()
    assert ("%layers.1/val, %layers.1/key, %layers.1/qry = split(%layers.1/val+key+qry) "
            "{sizes=[16, 16, 16]}") in text
    assert ("<- concat(blocks.1.attn.value.b, blocks.1.attn.key.b, blocks.1.attn.query.b)"
            in text)
    check(before, after)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_llama3(kv_heads):
    before = bind_llama3(num_hidden_layers=2, num_key_value_heads=kv_heads)
    after, n = fuse_qkv.run(before)
    assert n == 2
    check(before, after)
