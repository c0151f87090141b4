"""lm_head_last_token: before/expected IR, and the logits of the wanted rows are unchanged."""
from __future__ import annotations

import torch

from pass_testing import bind_llama3, bind_text, bind_tiny_mha, check, small_spec
from rustinfer.compiler.interpreter import run_graph
from rustinfer.compiler.passes import lm_head_last_token
from rustinfer.compiler.verify import default_schedule, differential, random_weights, verify

BEFORE = small_spec(
    weights="""
        ln: {name: ln, shape: [d]}
        head: {name: head, shape: [nv, d]}
    """,
    prologue="""
        - h: embedding(tokens, emb)
        - x: rms_norm(h, ln, eps=1e-5)
        - logits: linear(x, head)
    """,
    outputs="[logits]")

EXPECTED = """\
graph t
  input  %tokens: int64[T]
  input  %positions: int64[T]
  input  %logit_rows: int64[R]
  weight @emb: float32[11, 8]
  weight @ln: float32[8]
  weight @head: float32[11, 8]
  %h = embedding(%tokens, @emb)  # [T, 8]
  %x = rms_norm(%h, @ln) {eps=1e-05, offset=0.0}  # [T, 8]
  %logits/rows = gather_rows(%x, %logit_rows)  # [R, 8]
  %logits = linear(%logits/rows, @head)  # [R, 11]
  return %logits
"""


def test_before_expected():
    before = bind_text(BEFORE)
    after, n = lm_head_last_token.run(before)
    assert n == 1
    assert after.to_text() == EXPECTED
    verify(after)
    again, n = lm_head_last_token.run(after)
    assert n == 0 and again.to_text() == EXPECTED


def test_all_rows_when_step_names_none():
    before = bind_text(BEFORE)
    after, _ = lm_head_last_token.run(before)
    steps = default_schedule(vocab=11)
    for step in steps:
        step.logit_rows = None                       # scoring: every row
    differential(before, after, steps=steps)


def test_selected_rows():
    before = bind_text(BEFORE)
    after, _ = lm_head_last_token.run(before)
    weights = random_weights(before)
    step = default_schedule(vocab=11)[0]             # two sequences: 5 and 3 tokens
    step.logit_rows = torch.tensor([4, 7])           # each sequence's last row
    full = run_graph(before, weights, {}, step)["logits"]
    last = run_graph(after, weights, {}, step)["logits"]
    assert last.shape == (2, 11)
    torch.testing.assert_close(last, full[[4, 7]], rtol=0, atol=1e-6)


def test_only_output_linears_and_every_one():
    text = (BEFORE.replace("  - logits: linear(x, head)\n",
                           "  - mid: linear(x, head)\n  - logits: linear(x, head)\n"
                           "  - other: linear(h, head)\n")
            .replace("outputs: [logits]", "outputs: [logits, other]"))
    after, n = lm_head_last_token.run(bind_text(text))
    assert n == 2
    assert after.inputs.count("logit_rows") == 1
    assert "%mid = linear(%x, @head)  # [T, 11]" in after.to_text()
    verify(after)


def test_tied_head_on_other_spec():
    before = bind_tiny_mha(n_layer=1)
    after, n = lm_head_last_token.run(before)
    assert n == 1
    assert "%scores = linear(%scores/rows, @wte)  # [R, 40]" in after.to_text()
    check(before, after)


def test_llama3():
    before = bind_llama3(num_hidden_layers=1)
    after, n = lm_head_last_token.run(before)
    assert n == 1 and after.values["logits"].shape == ("R", 50)
    steps = default_schedule(vocab=50)
    for step in steps:                               # generation: each sequence's last row
        step.logit_rows = torch.tensor([end - 1 for end in step.query_start[1:]])
    differential(before, after, steps=steps)
