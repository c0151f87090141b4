"""LongRoPE (Phi-3 128k, Phi-3.5 mini, Phi-4 mini) against transformers.

transformers picks the short factors while a sequence fits the original context and
the long ones beyond; rustinfer picks once, by max_model_len (kernels/rope_tables.py).
So each case serves the model with the max_model_len that makes the two agree: the
original context for short prompts, more than it for a prompt longer than it. Both
the config.json of transformers 5 (rope_parameters) and the older one Phi-3.5 ships
(rope_scaling, original_max_position_embeddings at the top level) are read.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from family_models import hf_greedy, greedy, load_llm, make_model, prompt

ORIG = 16


def longrope_model(folder, partial: float = 1.0, seed: int = 0):
    head_dim, heads = 16, 4
    n = int(head_dim * partial) // 2
    g = torch.Generator().manual_seed(seed)
    scaling = {"type": "longrope",
               "long_factor": (1 + 3 * torch.rand(n, generator=g)).tolist(),
               "short_factor": (1 + 0.2 * torch.rand(n, generator=g)).tolist()}
    return make_model("phi3", folder, hidden_size=heads * head_dim, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=2,
                      vocab_size=211, max_position_embeddings=4 * ORIG,
                      original_max_position_embeddings=ORIG, rope_scaling=scaling,
                      partial_rotary_factor=partial, seed=seed)


def as_phi35_config(folder) -> None:
    """Rewrite config.json as Phi-3.5-mini's is written: rope_scaling with `type`, the
    original context only at the top level."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope["rope_theta"]
    cfg["partial_rotary_factor"] = rope.get("partial_rotary_factor", 1.0)
    cfg["rope_scaling"] = {"type": "longrope", "long_factor": rope["long_factor"],
                           "short_factor": rope["short_factor"]}
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("target", ["reference", "cpu-torch", "cpu"])
@pytest.mark.parametrize("partial", [1.0, 0.75], ids=["full-rotary", "partial-rotary"])
@pytest.mark.parametrize("config_style", ["transformers5", "phi3.5"])
def test_longrope_matches_transformers(tmp_path, target, partial, config_style):
    model = longrope_model(tmp_path / "m", partial)
    if config_style == "phi3.5":
        as_phi35_config(tmp_path / "m")
    # Short: served at the original context, prompt and generation within it.
    short = load_llm(tmp_path / "m", target, max_model_len=ORIG)
    ids = prompt(211, 10, seed=1)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(short.logits(ids), want, atol=1e-4, rtol=1e-4)
    assert greedy(short, ids, ORIG - len(ids)) == hf_greedy(model, ids, ORIG - len(ids))
    # Long: served beyond it, a prompt longer than it (transformers: long factors too).
    long = load_llm(tmp_path / "m", target, max_model_len=4 * ORIG)
    ids = prompt(211, 2 * ORIG + 3, seed=2)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(long.logits(ids), want, atol=1e-4, rtol=1e-4)


def test_the_factors_follow_max_model_len(tmp_path):
    """Served beyond the original context, even a short prompt uses the long factors
    (llama.cpp's choice by context size); transformers would use the short ones."""
    model = longrope_model(tmp_path / "m")
    ids = prompt(211, 8, seed=3)
    with torch.no_grad():
        hf_short = model(torch.tensor([ids])).logits[0].numpy()
    long = load_llm(tmp_path / "m", "reference", max_model_len=4 * ORIG).logits(ids)
    assert np.abs(long - hf_short).max() > 1e-2


def test_incomplete_longrope_config_names_what_is_missing(tmp_path):
    from rustinfer.compiler.errors import SpecError

    longrope_model(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["rope_parameters"].pop("original_max_position_embeddings")
    cfg.pop("original_max_position_embeddings", None)
    path.write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="lacks original_max_position_embeddings"):
        load_llm(tmp_path / "m", "reference")


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_a_longrope_gguf_matches_transformers(tmp_path, target):
    """Phi-3.5 as llama.cpp's converter writes it: the factors as rope_factors_long/short
    tensors, the original context and the attention factor as keys."""
    import math

    from test_gguf_archs import write_arch_gguf

    model = longrope_model(tmp_path / "m", partial=0.75)
    rope = model.config.rope_parameters

    def longrope(w):
        w.add_rope_scaling_orig_ctx_len(ORIG)
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(4) / math.log(ORIG)))
        w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], np.float32))

    write_arch_gguf(tmp_path / "phi35.gguf", "phi3", model, extra=longrope)
    for max_model_len, n in ((ORIG, 10), (4 * ORIG, 2 * ORIG + 3)):
        llm = load_llm(tmp_path / "phi35.gguf", target, max_model_len=max_model_len)
        ids = prompt(211, n, seed=4)
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(llm.logits(ids), want, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_longrope_on_the_cuda_target(tmp_path):
    """The Triton rope kernels take the same tables: bf16 logits against the fp32
    reference, compared by direction (bf16 weights and activations, see
    test_cuda_graphs.py), for the short and the long factors."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    longrope_model(tmp_path / "m", partial=0.75)
    for max_model_len, n in ((ORIG, 10), (4 * ORIG, 2 * ORIG + 3)):
        ids = prompt(211, n, seed=5)
        want = torch.from_numpy(load_llm(tmp_path / "m", "reference", max_model_len=max_model_len).logits(ids))
        got = torch.from_numpy(load_llm(tmp_path / "m", "cuda", max_model_len=max_model_len).logits(ids))
        cos = torch.nn.functional.cosine_similarity(got.float(), want.float(), dim=-1)
        assert cos.min().item() >= 0.995, cos
