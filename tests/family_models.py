"""Randomly initialised transformers checkpoints of the families in specs/ (no download).

Each family has at least three small configs with odd sizes, tied and untied
heads where the family allows, and a sliding window shorter than the test
sequences where the family has one. `make_model` saves one to a folder and
returns the transformers model (float32, eager attention: the oracle).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rustinfer.compiler.step_inputs import StepInputs

_SMALL = dict(max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)

FAMILY_CONFIGS: dict[str, dict[str, dict]] = {
    "qwen2": {
        "tied-gqa": dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                         num_attention_heads=5, num_key_value_heads=1, vocab_size=301,
                         tie_word_embeddings=True),
        "untied-mha": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=1,
                           num_attention_heads=3, num_key_value_heads=3, vocab_size=257,
                           tie_word_embeddings=False, rope_theta=1e6),
        # Layer 1 slides (layers >= max_window_layers), layer 0 does not.
        "sliding": dict(hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=199,
                        use_sliding_window=True, sliding_window=6, max_window_layers=1),
    },
    "qwen3": {
        # head_dim independent of hidden_size: 4 heads x 16 = 64 != 48.
        "tied": dict(hidden_size=48, head_dim=16, intermediate_size=88, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=311,
                     tie_word_embeddings=True),
        "untied-bias": dict(hidden_size=36, head_dim=12, intermediate_size=60,
                            num_hidden_layers=1, num_attention_heads=3, num_key_value_heads=1,
                            vocab_size=263, tie_word_embeddings=False, attention_bias=True),
        "sliding": dict(hidden_size=32, head_dim=10, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=6, num_key_value_heads=2, vocab_size=211,
                        use_sliding_window=True, sliding_window=5, max_window_layers=0),
    },
    "mistral": {
        "window": dict(hidden_size=40, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=5, num_key_value_heads=5, vocab_size=229,
                       sliding_window=6),
        "no-window-tied": dict(hidden_size=48, head_dim=8, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               vocab_size=307, sliding_window=None, tie_word_embeddings=True),
        "mqa-window": dict(hidden_size=36, intermediate_size=52, num_hidden_layers=1,
                           num_attention_heads=6, num_key_value_heads=1, vocab_size=181,
                           sliding_window=4, rope_theta=1e6),
    },
    "phi3": {
        "gqa": dict(hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=293),
        # Phi-4-mini style: partial rotary and a tied head; plus a short window.
        "partial-rotary-tied": dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2,
                                    num_attention_heads=5, num_key_value_heads=1, vocab_size=233,
                                    partial_rotary_factor=0.75, tie_word_embeddings=True,
                                    sliding_window=7),
        "mha-window": dict(hidden_size=36, intermediate_size=44, num_hidden_layers=1,
                           num_attention_heads=3, num_key_value_heads=3, vocab_size=199,
                           sliding_window=5),
        # head_dims 16: shapes ONNX Runtime's GroupQueryAttention takes (the cpu target)
        "partial-rotary-hd16": dict(hidden_size=64, intermediate_size=72, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=1,
                                    vocab_size=223, partial_rotary_factor=0.75,
                                    tie_word_embeddings=True),
        "gqa-hd16-window": dict(hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=211,
                                sliding_window=9),
    },
    "gemma2": {
        # Softcaps small enough to bite on random weights; layers 0 slides.
        "tied-softcaps": dict(hidden_size=48, head_dim=16, intermediate_size=80,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              vocab_size=277, sliding_window=5, attn_logit_softcapping=4.0,
                              final_logit_softcapping=10.0, query_pre_attn_scalar=12),
        "untied-no-softcap": dict(hidden_size=42, head_dim=10, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=3,
                                  num_key_value_heads=1, vocab_size=241, sliding_window=4,
                                  attn_logit_softcapping=None, final_logit_softcapping=None,
                                  tie_word_embeddings=False, query_pre_attn_scalar=10),
        # Exact GELU, and the other layer order (layer 1 slides) from layer_types.
        "gelu-layer-types": dict(hidden_size=36, head_dim=12, intermediate_size=52,
                                 num_hidden_layers=2, num_attention_heads=3,
                                 num_key_value_heads=3, vocab_size=203, sliding_window=6,
                                 hidden_activation="gelu", query_pre_attn_scalar=12,
                                 layer_types=["full_attention", "sliding_attention"]),
    },
}

# Gemma's norms multiply by (1 + weight): centre their random weights on 0, not 1.
_OFFSET_NORMS = {"gemma2"}


def make_model(family: str, folder: Path, seed: int = 0, **config_kwargs):
    """Save a random `family` checkpoint to `folder`; returns the transformers model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, **{**_SMALL, **config_kwargs})
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).eval()
    # Default init is tiny (std 0.02): widen it so logits differ enough to test argmax.
    low = -0.5 if family in _OFFSET_NORMS else 0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(low, low + 1.0)
            else:
                p.normal_(0, 0.15)
    model.save_pretrained(folder)
    return model


def all_cases() -> list[tuple[str, str]]:
    return [(f, c) for f, configs in FAMILY_CONFIGS.items() for c in configs]


def prompt(vocab: int, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def greedy(llm, ids: list[int], n: int) -> list[int]:
    """n greedy tokens through the executor and its KV cache (prefill, then one
    token per step): the model alone, independent of the engine and sampler."""
    blocks = list(range(math.ceil((len(ids) + n) / llm.block_size)))
    out, cached, new = [], 0, list(ids)
    for _ in range(n):
        step = StepInputs.for_sequences([(new, cached, blocks)], llm.block_size)
        token = int(llm.executor.forward(step)[-1].argmax())
        cached += len(new)
        out.append(token)
        new = [token]
    return out


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    ids_t = torch.tensor([ids])
    # An explicit mask: otherwise generate masks prompt tokens equal to pad_token_id.
    with torch.no_grad():
        out = model.generate(ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def load_llm(folder, target: str, spec=None, max_model_len: int = 128):
    """An LLM on a tiny KV cache (enough for one max_model_len sequence), so a
    test does not zero the engine's default cache size for every model."""
    import inspect

    from rustinfer.runtime import LLM

    extra = {}
    if "num_kv_blocks" in inspect.signature(LLM.__init__).parameters:
        extra["num_kv_blocks"] = 2 * math.ceil(max_model_len / 16)
    return LLM(model=str(folder), target=target, spec=spec, max_model_len=max_model_len,
               max_num_batched_tokens=16, **extra)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on shared cores: torch's thread pool costs far more than it
    gains (about 6x the CPU time when other processes compete). Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
