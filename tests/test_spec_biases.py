"""Config flags that add biases to a family's linears: LlamaConfig's attention_bias and
mlp_bias, Gemma2Config's attention_bias. A spec that ignored them only warned about
unread tensors and answered with wrong logits; each must match transformers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from family_models import load_llm, make_model, one_torch_thread, prompt  # noqa: F401

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=97)
CASES = {
    "llama-attention-bias": ("llama", dict(SMALL, attention_bias=True)),
    "llama-mlp-bias": ("llama", dict(SMALL, mlp_bias=True)),
    "gemma2-attention-bias": ("gemma2", dict(SMALL, head_dim=16, attention_bias=True,
                                             sliding_window=4, query_pre_attn_scalar=16)),
}


@pytest.mark.parametrize("target", ["reference", "cpu-torch", "cpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_biases_are_computed(case, target, tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    family, cfg = CASES[case]
    hf = make_model(family, tmp_path / "m", seed=3, **cfg)
    assert any(n.endswith(".bias") for n in hf.state_dict())
    ids = prompt(cfg["vocab_size"], 9, seed=4)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
    got = load_llm(tmp_path / "m", target, max_model_len=32).logits(ids)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
