"""The whole pass pipeline: verified after every pass, counted, dumped, and equal to the unfused graph."""
from __future__ import annotations

import pytest

from rustinfer.compiler import pipeline
from rustinfer.compiler.bind import bind
from rustinfer.compiler.ir import Graph, Value
from rustinfer.compiler.pipeline import PASSES, run_pipeline
from rustinfer.compiler.spec import load_spec
from rustinfer.compiler.verify import VerifyError, differential

TINY_MHA = "tests/specs/tiny_mha.yaml"
LLAMA = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=61, tie_word_embeddings=False)

# Golden: one Llama layer after the whole pipeline (tied head). Review every diff.
GOLDEN_ONE_LAYER = """\
graph llama3
  input  %tokens: int64[T]
  input  %positions: int64[T]
  input  %logit_rows: int64[R]
  weight @model.embed_tokens.weight: float32[50, 16]
  weight @model.norm.weight: float32[16]
  weight @model.layers.0.input_layernorm.weight: float32[16]
  weight @model.layers.0.self_attn.o_proj.weight: float32[16, 16]
  weight @model.layers.0.post_attention_layernorm.weight: float32[16]
  weight @model.layers.0.mlp.down_proj.weight: float32[16, 24]
  weight @model.layers.0.self_attn.q+k+v_proj.weight: float32[32, 16] <- concat(model.layers.0.self_attn.q_proj.weight, model.layers.0.self_attn.k_proj.weight, model.layers.0.self_attn.v_proj.weight)
  weight @model.layers.0.mlp.gate+up_proj.weight: float32[48, 16] <- concat(model.layers.0.mlp.gate_proj.weight, model.layers.0.mlp.up_proj.weight)
  cache  $layers.0/attn/k_cache: float32[blocks, block_size, 2, 4]
  cache  $layers.0/attn/v_cache: float32[blocks, block_size, 2, 4]
  %h = embedding(%tokens, @model.embed_tokens.weight)  # [T, 16]
  %layers.0/attn/x = rms_norm(%h, @model.layers.0.input_layernorm.weight) {eps=1e-06, offset=0.0}  # [T, 16]
  %layers.0/attn/q+k+v = linear(%layers.0/attn/x, @model.layers.0.self_attn.q+k+v_proj.weight)  # [T, 32]
  %layers.0/attn/q, %layers.0/attn/k, %layers.0/attn/v = split(%layers.0/attn/q+k+v) {sizes=[16, 8, 8]}  # [T, 16], [T, 8], [T, 8]
  %layers.0/attn/q_rot = rope_kv_write(%layers.0/attn/q, %layers.0/attn/k, %layers.0/attn/v, %positions, $layers.0/attn/k_cache, $layers.0/attn/v_cache) {heads=4, kv_heads=2, head_dim=4, theta=10000.0, scaling=None}  # [T, 16]
  %layers.0/attn/out = cached_attention(%layers.0/attn/q_rot, $layers.0/attn/k_cache, $layers.0/attn/v_cache) {heads=4, kv_heads=2, head_dim=4, scale=None}  # [T, 16]
  %layers.0/attn/o = linear(%layers.0/attn/out, @model.layers.0.self_attn.o_proj.weight)  # [T, 16]
  %layers.0/mlp/x, %layers.0/h = add_rms_norm(%h, %layers.0/attn/o, @model.layers.0.post_attention_layernorm.weight) {eps=1e-06, offset=0.0}  # [T, 16], [T, 16]
  %layers.0/mlp/gate+up = linear(%layers.0/mlp/x, @model.layers.0.mlp.gate+up_proj.weight)  # [T, 48]
  %layers.0/mlp/prod = swiglu(%layers.0/mlp/gate+up)  # [T, 24]
  %layers.0/mlp/down = linear(%layers.0/mlp/prod, @model.layers.0.mlp.down_proj.weight)  # [T, 16]
  %final/x, _ = add_rms_norm(%layers.0/h, %layers.0/mlp/down, @model.norm.weight) {eps=1e-06, offset=0.0}  # [T, 16]
  %logits/rows = gather_rows(%final/x, %logit_rows)  # [R, 16]
  %logits = linear(%logits/rows, @model.embed_tokens.weight)  # [R, 50]
  return %logits
"""


def llama(**overrides) -> Graph:
    return bind(load_spec("llama3"), {**LLAMA, **overrides})


def test_llama3_counts_dumps_and_equivalence(tmp_path):
    before = llama()
    layers = LLAMA["num_hidden_layers"]
    after, report = run_pipeline(before, dump_dir=tmp_path)
    assert report.rewrites == {
        "fuse_qkv": layers,
        "fuse_gate_up_swiglu": layers,
        "fuse_rope_kv": layers,
        # every layer's two norms, minus layer 0's input norm (of the embedding), plus the final norm
        "fuse_add_rms_norm": 2 * layers,
        "lm_head_last_token": 1,
        # per layer the q, k, v, gate, up weights; and the last residual sum, blanked
        "dead_value_removal": 5 * layers + 1,
    }
    assert all(p.seconds >= 0 for p in report.passes) and report.seconds < 5
    assert "fuse_qkv" in report.to_text()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00-parsed.txt", "01-fuse_qkv.txt", "02-fuse_gate_up_swiglu.txt",
                     "03-fuse_rope_kv.txt", "04-fuse_add_rms_norm.txt",
                     "05-lm_head_last_token.txt", "06-dead_value_removal.txt"]
    assert (tmp_path / "00-parsed.txt").read_text() == before.to_text()
    assert (tmp_path / "06-dead_value_removal.txt").read_text() == after.to_text()
    ops = [n.op for n in after.nodes]
    for gone in ("rope", "attention", "silu", "mul", "add"):
        assert gone not in ops
    assert ops.count("rms_norm") == 1
    differential(before, after)


def test_golden_one_layer():
    after, _ = run_pipeline(llama(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                  vocab_size=50, tie_word_embeddings=True))
    assert after.to_text() == GOLDEN_ONE_LAYER


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_llama3_mha_and_mqa_equivalence(kv_heads):
    before = llama(num_key_value_heads=kv_heads, num_hidden_layers=2)
    after, report = run_pipeline(before)
    assert report.rewrites["fuse_rope_kv"] == 2
    differential(before, after)


def test_other_spec():
    before = bind(load_spec(TINY_MHA), dict(d_model=16, n_layer=3, n_head=2, d_ff=24, n_vocab=40))
    after, report = run_pipeline(before)
    assert report.rewrites == {"fuse_qkv": 3, "fuse_gate_up_swiglu": 2, "fuse_rope_kv": 3,
                               "fuse_add_rms_norm": 6, "lm_head_last_token": 1,
                               # q/k/v weights+biases x3 layers, gate/up x2 layers, one sum
                               "dead_value_removal": 18 + 4 + 1}
    differential(before, after)


def test_disable(tmp_path):
    before = llama(num_hidden_layers=1)
    after, report = run_pipeline(before, dump_dir=tmp_path, disable=["fuse_qkv", "fuse_rope_kv"])
    assert "fuse_qkv" not in report.rewrites and "fuse_rope_kv" not in report.rewrites
    assert {n.op for n in after.nodes} >= {"rope", "attention"}
    assert "split" not in {n.op for n in after.nodes}
    assert not (tmp_path / "01-fuse_qkv.txt").exists()
    assert (tmp_path / "02-fuse_gate_up_swiglu.txt").exists()
    differential(before, after)
    with pytest.raises(ValueError, match="did you mean 'fuse_qkv'"):
        run_pipeline(before, disable=["fuse_qvk"])


def test_a_broken_pass_is_caught_by_name(monkeypatch):
    def broken(graph):
        graph = graph.clone()
        graph.values["layers.0/attn/q"] = Value("layers.0/attn/q", ("T", 3))
        return graph, 1

    monkeypatch.setattr(pipeline, "PASSES", [PASSES[0], ("broken", broken)])
    with pytest.raises(VerifyError, match="after pass 'broken'"):
        run_pipeline(llama(num_hidden_layers=1))
    run_pipeline(llama(num_hidden_layers=1), verify=False)   # unchecked when asked


def test_fused_ops_are_registered_and_not_spec_ops():
    import textwrap

    from rustinfer.compiler.errors import SpecError
    from rustinfer.compiler.fused_ops import FUSED_OPS
    from rustinfer.compiler.interpreter import REFERENCE_OPS
    from rustinfer.compiler.ops import OPS
    from rustinfer.compiler.spec import parse_spec

    for op in FUSED_OPS:
        assert not OPS[op].primitive and OPS[op].infer is not None and op in REFERENCE_OPS
    text = """
    family: t
    config: {d: {default: 4}}
    inputs: {tokens: {shape: [T], dtype: int64}}
    weights: {emb: {name: emb, shape: [9, d]}}
    prologue:
      - x: embedding(tokens, emb)
      - y: swiglu(x)
    layers: {count: 0, body: []}
    outputs: [y]
    """
    with pytest.raises(SpecError, match="unknown op 'swiglu'"):
        parse_spec(textwrap.dedent(text), "t.yaml")
