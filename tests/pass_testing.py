"""Shared set-up of the compiler pass tests (tests/test_pass_*.py).

A small one-block spec written from its weights and prologue, binding spec
text or the two test families (tiny_mha, llama3), the node lines of a graph,
and the check every rewrite gets: the result verifies and computes what the
input graph did.
"""
from __future__ import annotations

import textwrap

from rustinfer.compiler.bind import bind
from rustinfer.compiler.spec import load_spec, parse_spec
from rustinfer.compiler.verify import differential, verify

TINY_MHA = "tests/specs/tiny_mha.yaml"

LLAMA3_CONFIG = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=50)


def _indent(block: str) -> str:
    return textwrap.indent(textwrap.dedent(block).strip("\n") + "\n", "  ")


def small_spec(weights: str, prologue: str, outputs: str, config: str = "") -> str:
    """A spec without layers: config d=8 (plus `config`) and nv=11, inputs tokens and
    positions, the embedding table `emb` followed by `weights`, then `prologue`."""
    return ("family: t\nconfig:\n  d: {default: 8}\n" + (_indent(config) if config else "")
            + "  nv: {default: 11}\n"
            "inputs:\n  tokens: {shape: [T], dtype: int64}\n  positions: {shape: [T], dtype: int64}\n"
            "weights:\n  emb: {name: emb, shape: [nv, d]}\n" + _indent(weights)
            + "prologue:\n" + _indent(prologue)
            + f"layers: {{count: 0, body: []}}\noutputs: {outputs}\n")


def bind_text(text: str, config: dict | None = None):
    # pass tests build graphs with dead values on purpose (dead_value_removal's input)
    return bind(parse_spec(textwrap.dedent(text), "test.yaml"), config or {}, allow_unused=True)


def bind_tiny_mha(n_layer: int):
    return bind(load_spec(TINY_MHA), dict(d_model=16, n_layer=n_layer, n_head=2, d_ff=24, n_vocab=40))


def bind_llama3(**config):
    """llama3 at LLAMA3_CONFIG, with `config` overriding it."""
    return bind(load_spec("llama3"), {**LLAMA3_CONFIG, **config})


def nodes_text(graph) -> str:
    lines = graph.to_text().splitlines(keepends=True)
    return "".join(line for line in lines if line.startswith("  %") or "return" in line)


def check(before, after, **kwargs) -> None:
    """`after` verifies and computes what `before` did (see verify.differential)."""
    verify(after)
    differential(before, after, **kwargs)
