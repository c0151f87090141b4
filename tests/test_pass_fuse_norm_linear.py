"""fuse_norm_linear (cuda target): residual adds, norms and SwiGLU folded into GEMMs."""
from __future__ import annotations

from pass_testing import bind_llama3, bind_text, check, nodes_text, small_spec
from rustinfer.compiler.passes import fuse_norm_linear
from rustinfer.compiler.pipeline import run_pipeline

def fused(**config):
    """llama3 through the cuda target's whole pipeline, and the unfused graph."""
    before = bind_llama3(**config)
    after, _ = run_pipeline(before, target="cuda")
    return before, after


def test_llama_layer_becomes_five_kernels():
    before, after = fused(num_hidden_layers=2)
    ops = [n.op for n in after.nodes]
    # Per layer: norm+qkv+rope+kv append, attention, o+residual, norm+gate_up+swiglu,
    # down+residual; then the LM head with the final norm.
    assert ops.count("rms_norm_linear_rope_kv") == 2
    assert ops.count("cached_attention") == 2
    assert ops.count("rms_norm_linear") == 2 + 1
    assert ops.count("linear_add") == 2 * 2
    for gone in ("add_rms_norm", "rms_norm", "swiglu", "linear", "add", "split",
                 "rope_kv_write"):
        assert gone not in ops, gone
    assert sum(n.attrs.get("act") == "swiglu" for n in after.nodes) == 2
    head = after.nodes[-1]
    assert head.op == "rms_norm_linear" and after.producers()[head.inputs[0]].op == "gather_rows"
    check(before, after)


def test_a_biased_qkv_keeps_its_rope_kernel():
    """Qwen2's qkv has a bias: the norm folds in, but RoPE + the KV append stay apart
    (gemv_rope_kv takes no bias)."""
    from rustinfer.compiler.bind import bind
    from rustinfer.compiler.spec import load_spec

    before = bind(load_spec("qwen2"), dict(hidden_size=16, intermediate_size=24,
                                           num_hidden_layers=1, num_attention_heads=4,
                                           num_key_value_heads=2, vocab_size=50))
    after, _ = run_pipeline(before, target="cuda")
    ops = [n.op for n in after.nodes]
    assert "rms_norm_linear_rope_kv" not in ops
    assert ops.count("rope_kv_write") == 1
    qkv = next(n for n in after.nodes if n.op == "rms_norm_linear")
    assert len(qkv.inputs) == 4                      # x, norm weight, weight, bias
    check(before, after)


def test_only_the_cuda_target_runs_it():
    before = bind_llama3(num_hidden_layers=1)
    for target in ("cpu-torch", "cpu", "reference"):
        after, report = run_pipeline(before, target=target)
        assert "fuse_norm_linear" not in report.rewrites
        assert not {"rms_norm_linear", "linear_add"} & {n.op for n in after.nodes}


def test_the_final_residual_gets_a_name_again():
    """dead_value_removal blanked the final sum (only its norm was read); the residual
    rewrite must name it, since the folded norm now reads it."""
    _, after = fused(num_hidden_layers=1)
    final = [n for n in after.nodes if n.op == "linear_add"][-1]
    assert final.outputs == ["final/h"]


def test_bias_and_offset_are_kept():
    """A biased qkv (Qwen2-like) keeps its bias on the fused node; Gemma's offset is kept."""
    text = small_spec(
        weights="""
            w: {name: w, shape: [d, d]}
            b: {name: b, shape: [d]}
            ln: {name: ln, shape: [d]}
        """,
        prologue="""
            - h0: embedding(tokens, emb)
            - n0: rms_norm(h0, ln, eps=1e-6, offset=1.0)
            - y: linear(n0, w, b)
        """,
        outputs="[y]")
    before = bind_text(text)
    after, count = fuse_norm_linear.run(before)
    assert count == 1
    assert nodes_text(after).splitlines()[1] == (
        "  %y = rms_norm_linear(%h0, @ln, @w, @b) {eps=1e-06, offset=1.0}  # [T, 8]")
    check(before, after)


def test_a_norm_with_other_readers_stays():
    """The normed value is also an output: folding it would lose it."""
    text = small_spec(
        weights="""
            w: {name: w, shape: [d, d]}
            ln: {name: ln, shape: [d]}
        """,
        prologue="""
            - h0: embedding(tokens, emb)
            - n0: rms_norm(h0, ln, eps=1e-6)
            - y: linear(n0, w)
        """,
        outputs="[y, n0]")
    before = bind_text(text)
    after, count = fuse_norm_linear.run(before)
    assert count == 0
    assert [n.op for n in after.nodes] == ["embedding", "rms_norm", "linear"]


def test_biased_residual_branch_is_not_folded():
    """linear_add has no bias input: a biased branch keeps add_rms_norm."""
    text = small_spec(
        weights="""
            w: {name: w, shape: [d, d]}
            b: {name: b, shape: [d]}
            ln: {name: ln, shape: [d]}
            ln2: {name: ln2, shape: [d]}
            w2: {name: w2, shape: [d, d]}
        """,
        prologue="""
            - h0: embedding(tokens, emb)
            - br: linear(h0, w, b)
            - h1: add(h0, br)
            - n1: rms_norm(h1, ln, eps=1e-6)
            - y: linear(n1, w2)
        """,
        outputs="[y, h1]")
    before = bind_text(text)
    from rustinfer.compiler.passes import fuse_add_rms_norm

    mid, _ = fuse_add_rms_norm.run(before)
    after, _ = fuse_norm_linear.run(mid)
    ops = [n.op for n in after.nodes]
    assert "linear_add" not in ops and "add_rms_norm" in ops
    assert "rms_norm_linear" not in ops      # its norm is add_rms_norm's, not a plain rms_norm
    check(before, after)


def test_an_unknown_target_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="unknown target 'cdua'"):
        run_pipeline(bind_llama3(num_hidden_layers=1), target="cdua")
