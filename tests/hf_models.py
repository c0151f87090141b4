"""Randomly initialised transformers Llama checkpoints for parity tests (no download)."""
from __future__ import annotations

from pathlib import Path

import torch

# Varied on purpose: MHA/GQA/MQA, head_dim override, tied and untied heads,
# rope_scaling llama3 and none, vocab sizes that are not multiples of 64, 1-4 layers.
PARITY_CONFIGS = {
    "gqa-tied": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=1001,
                     tie_word_embeddings=True),
    "mha-untied": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                       num_attention_heads=3, num_key_value_heads=3, vocab_size=517,
                       tie_word_embeddings=False, rope_theta=500000.0),
    "mqa": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=8, num_key_value_heads=1, vocab_size=300,
                tie_word_embeddings=False, rms_norm_eps=1e-5),
    "head-dim-override": dict(hidden_size=96, intermediate_size=200, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                              vocab_size=777, tie_word_embeddings=True),
    "llama3-rope-scaling": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                                tie_word_embeddings=True, rope_theta=500000.0,
                                rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 16},
                                max_position_embeddings=512),
    "smollm2-like": dict(hidden_size=72, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=490,
                         tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5),
}


def make_llama(folder: Path, seed: int = 0, dtype=torch.float32, **config_kwargs):
    """Save a random LlamaForCausalLM to `folder`; returns the transformers model (eval, fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**config_kwargs)
    model = LlamaForCausalLM(config).eval()
    # Default init is tiny (std 0.02): widen it so logits differ enough to test argmax.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.15)
    model.to(dtype).save_pretrained(folder)
    return model.float()
