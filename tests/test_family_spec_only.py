"""A new family is a spec file, not Python: OLMo 2, written here and nowhere else.

OLMo 2 is in transformers but not in specs/. Its differences from Llama are
all expressible in the spec language: no norm *before* attention or the MLP
but one *after* each (on the branch, before the residual add), and an RMSNorm
over the whole q and k projections (not per head) before RoPE. The test
writes the spec into a temporary folder and loads it with LLM(spec=...):
nothing in the repository changes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from family_models import (greedy, hf_greedy, load_llm, make_model,  # noqa: F401
                           one_torch_thread, prompt)
from rustinfer.compiler.errors import SpecError

OLMO2_SPEC = """\
family: olmo2
matches:
  architectures: [Olmo2ForCausalLM]
  model_types: [olmo2]

config:
  hidden:       {field: hidden_size}
  n_layers:     {field: num_hidden_layers}
  n_heads:      {field: num_attention_heads}
  n_kv_heads:   {field: num_key_value_heads, default: n_heads}
  head_dim:     {field: head_dim, default: hidden // n_heads}
  ffn:          {field: intermediate_size}
  vocab:        {field: vocab_size}
  eps:          {field: rms_norm_eps, default: 1.0e-5}
  rope_theta:   {field: [rope_theta, rope_parameters.rope_theta], default: 10000.0}
  rope_scaling: {field: [rope_scaling, rope_parameters], default: null}
  max_pos:      {field: max_position_embeddings, default: 4096}
  tied:         {field: tie_word_embeddings, default: false}
  bias:         {field: attention_bias, default: false}

inputs:
  tokens:    {shape: [T], dtype: int64}
  positions: {shape: [T], dtype: int64}

weights:
  embed:      {name: model.embed_tokens.weight, shape: [vocab, hidden]}
  final_norm: {name: model.norm.weight, shape: [hidden]}
  lm_head:    {name: lm_head.weight, shape: [vocab, hidden], tied_to: embed, when_tied: tied}

prologue:
  - h: embedding(tokens, embed)

layers:
  count: n_layers
  index: i
  weights:
    q_proj:    {name: "model.layers.{i}.self_attn.q_proj.weight", shape: [n_heads * head_dim, hidden]}
    k_proj:    {name: "model.layers.{i}.self_attn.k_proj.weight", shape: [n_kv_heads * head_dim, hidden]}
    v_proj:    {name: "model.layers.{i}.self_attn.v_proj.weight", shape: [n_kv_heads * head_dim, hidden]}
    q_bias:    {name: "model.layers.{i}.self_attn.q_proj.bias", shape: [n_heads * head_dim], when: bias}
    k_bias:    {name: "model.layers.{i}.self_attn.k_proj.bias", shape: [n_kv_heads * head_dim], when: bias}
    v_bias:    {name: "model.layers.{i}.self_attn.v_proj.bias", shape: [n_kv_heads * head_dim], when: bias}
    q_norm:    {name: "model.layers.{i}.self_attn.q_norm.weight", shape: [n_heads * head_dim]}
    k_norm:    {name: "model.layers.{i}.self_attn.k_norm.weight", shape: [n_kv_heads * head_dim]}
    o_proj:    {name: "model.layers.{i}.self_attn.o_proj.weight", shape: [hidden, n_heads * head_dim]}
    o_bias:    {name: "model.layers.{i}.self_attn.o_proj.bias", shape: [hidden], when: bias}
    attn_norm: {name: "model.layers.{i}.post_attention_layernorm.weight", shape: [hidden]}
    gate_proj: {name: "model.layers.{i}.mlp.gate_proj.weight", shape: [ffn, hidden]}
    up_proj:   {name: "model.layers.{i}.mlp.up_proj.weight", shape: [ffn, hidden]}
    down_proj: {name: "model.layers.{i}.mlp.down_proj.weight", shape: [hidden, ffn]}
    mlp_norm:  {name: "model.layers.{i}.post_feedforward_layernorm.weight", shape: [hidden]}
  body:
    - attn.q:   linear(h, q_proj, q_bias)
    - attn.k:   linear(h, k_proj, k_bias)
    - attn.v:   linear(h, v_proj, v_bias)
    - attn.q_n: rms_norm(attn.q, q_norm, eps=eps)
    - attn.k_n: rms_norm(attn.k, k_norm, eps=eps)
    - attn.q_rot: rope(attn.q_n, positions, heads=n_heads, head_dim=head_dim, theta=rope_theta, scaling=rope_scaling)
    - attn.k_rot: rope(attn.k_n, positions, heads=n_kv_heads, head_dim=head_dim, theta=rope_theta, scaling=rope_scaling)
    - attn.out: attention(attn.q_rot, attn.k_rot, attn.v, heads=n_heads, kv_heads=n_kv_heads, head_dim=head_dim)
    - attn.o:   linear(attn.out, o_proj, o_bias)
    - attn.y:   rms_norm(attn.o, attn_norm, eps=eps)
    - h:        add(h, attn.y)
    - mlp.gate: linear(h, gate_proj)
    - mlp.up:   linear(h, up_proj)
    - mlp.act:  silu(mlp.gate)
    - mlp.prod: mul(mlp.act, mlp.up)
    - mlp.down: linear(mlp.prod, down_proj)
    - mlp.y:    rms_norm(mlp.down, mlp_norm, eps=eps)
    - h:        add(h, mlp.y)

epilogue:
  - final.x: rms_norm(h, final_norm, eps=eps)
  - logits:  linear(final.x, lm_head)

outputs: [logits]
"""

CONFIGS = {
    "gqa-untied": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=271),
    "mha-tied-bias": dict(hidden_size=36, intermediate_size=60, num_hidden_layers=1,
                          num_attention_heads=3, num_key_value_heads=3, vocab_size=199,
                          tie_word_embeddings=True, attention_bias=True),
}


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("newspec") / "olmo2.yaml"
    path.write_text(OLMO2_SPEC)
    return path


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("target", ["reference", "cpu-torch"])
def test_a_family_written_only_as_a_spec(name, target, spec_file, tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    cfg = dict(CONFIGS[name], max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
               eos_token_id=2)
    hf = make_model("olmo2", tmp_path / "m", seed=5, **cfg)
    llm = load_llm(tmp_path / "m", target, spec=spec_file)
    ids = prompt(cfg["vocab_size"], 19, seed=1)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
    got = llm.logits(ids)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert greedy(llm, ids[:6], 32) == hf_greedy(hf, ids[:6], 32)
    if target == "cpu-torch":       # the fusions fire on it like on any family
        report = (llm.plan_dir / "report.txt").read_text()
        layers = cfg["num_hidden_layers"]
        for fusion in ("fuse_qkv", "fuse_gate_up_swiglu", "fuse_rope_kv"):
            assert f"{fusion} x{layers}" in report


def test_a_mistake_in_the_new_spec_points_at_its_line(spec_file, tmp_path):
    bad = tmp_path / "olmo2_typo.yaml"
    bad.write_text(OLMO2_SPEC.replace("mlp.act:  silu(mlp.gate)", "mlp.act:  sillu(mlp.gate)"))
    line = OLMO2_SPEC.splitlines().index("    - mlp.act:  silu(mlp.gate)") + 1
    make_model("olmo2", tmp_path / "m", **CONFIGS["gqa-untied"], pad_token_id=0)
    with pytest.raises(SpecError) as err:
        load_llm(tmp_path / "m", "reference", spec=bad)
    assert f"olmo2_typo.yaml:{line}:" in str(err.value)
    assert "did you mean 'silu'" in str(err.value)
