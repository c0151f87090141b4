"""prefetch_after_attention (cuda target): the GEMM reading attention's output gets a hint."""
from __future__ import annotations

from pass_testing import bind_llama3, check
from rustinfer.compiler.passes import prefetch_after_attention
from rustinfer.compiler.pipeline import run_pipeline


def test_the_o_projection_and_nothing_else_is_marked():
    before = bind_llama3(num_hidden_layers=2)
    after, report = run_pipeline(before, target="cuda")
    assert report.rewrites["prefetch_after_attention"] == 2
    producers = after.producers()
    marked = [n for n in after.nodes if n.attrs.get("prefetch")]
    assert [n.op for n in marked] == ["linear_add", "linear_add"]
    assert all(producers[n.inputs[0]].op == "cached_attention" for n in marked)
    assert all("o_proj" in n.inputs[1] for n in marked)
    # the down projection and every other GEMM keep no hint
    others = [n for n in after.nodes if n.op in ("linear_add", "rms_norm_linear")
              and n not in marked]
    assert len(others) == 2 * 2 + 1 and not any("prefetch" in n.attrs for n in others)
    check(before, after)


def test_running_it_twice_marks_nothing_new():
    after, _ = run_pipeline(bind_llama3(num_hidden_layers=1), target="cuda")
    again, count = prefetch_after_attention.run(after)
    assert count == 0
    assert [n.attrs for n in again.nodes] == [n.attrs for n in after.nodes]


def test_a_gemm_that_does_not_read_attention_directly_gets_no_hint():
    """Gemma 2 normalizes attention's output (post-attention norm) before the residual
    add, so its o projection is a plain linear: nothing to mark, nothing marked."""
    from rustinfer.compiler.bind import bind
    from rustinfer.compiler.spec import load_spec

    before = bind(load_spec("gemma2"), dict(hidden_size=16, intermediate_size=24,
                                            num_hidden_layers=1, num_attention_heads=4,
                                            num_key_value_heads=2, head_dim=4, vocab_size=50))
    after, report = run_pipeline(before, target="cuda")
    readers = [n for n in after.nodes if n.inputs and n.inputs[0] in
               {m.outputs[0] for m in after.nodes if m.op == "cached_attention"}]
    assert readers and all(not n.attrs.get("prefetch") for n in readers)
    assert report.rewrites.get("prefetch_after_attention", 0) == 0
    check(before, after)


def test_only_the_cuda_target_runs_it():
    before = bind_llama3(num_hidden_layers=1)
    for target in ("cpu-torch", "cpu", "reference"):
        after, report = run_pipeline(before, target=target)
        assert "prefetch_after_attention" not in report.rewrites
        assert not any("prefetch" in n.attrs for n in after.nodes)
