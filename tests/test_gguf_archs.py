"""GGUF files of the qwen2, qwen3 and phi3 architectures (Qwen2.5, Qwen3, Phi-3 GGUFs),
against transformers.

A random transformers checkpoint of each family is written as llama.cpp's converter
writes one (convert_hf_to_gguf.py: `{arch}.*` metadata, blk.N.* tensor names, q/k rows
*not* permuted: only the llama architecture's are), then served from the .gguf alone.
The oracle is the transformers model the weights came from: logits on every position of
a prompt, and greedy tokens through the KV cache.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from family_models import FAMILY_CONFIGS, greedy, hf_greedy, load_llm, make_model, prompt
from test_checkpoint_gguf import HF_TO_GGUF, add_shape_keys, gguf_name

GGUF_NAMES = HF_TO_GGUF | {"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
                           "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}
# Qwen: the configs without a sliding window (a qwen GGUF states none; llama.cpp applies
# none). Phi-3: a sliding window and a partial rotary, both stated in the file.
CASES = [("qwen2", "tied-gqa"), ("qwen2", "untied-mha"), ("qwen3", "tied"), ("qwen3", "untied-bias"),
         ("phi3", "gqa"), ("phi3", "partial-rotary-hd16"), ("phi3", "gqa-hd16-window")]


def write_arch_gguf(path, arch: str, model, extra=None) -> None:
    """model's weights and config as a float32 GGUF of architecture `arch`; extra(writer)
    adds keys and tensors."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    add_shape_keys(w, cfg)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if arch == "qwen3":                 # convert_hf_to_gguf writes key/value_length for Qwen3
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    if arch == "phi3":                  # as Phi3MiniModel in convert_hf_to_gguf writes them
        partial = cfg.rope_parameters.get("partial_rotary_factor") or 1.0
        w.add_rope_dimension_count(int(partial * cfg.hidden_size) // cfg.num_attention_heads)
        if cfg.sliding_window:
            w.add_sliding_window(cfg.sliding_window)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    if extra:
        extra(w)
    for name, value in model.state_dict().items():
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        w.add_tensor(gguf_name(name, GGUF_NAMES), value.detach().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("family,case", CASES, ids=[f"{f}-{c}" for f, c in CASES])
@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_gguf_arch_matches_transformers(tmp_path, family, case, target):
    model = make_model(family, tmp_path / "hf", **FAMILY_CONFIGS[family][case])
    path = tmp_path / f"{family}.gguf"
    write_arch_gguf(path, family, model)
    llm = load_llm(path, target)
    assert llm.checkpoint.config["model_type"] == family
    ids = prompt(model.config.vocab_size, 12, seed=3)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    got = llm.logits(ids)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert greedy(llm, ids, 6) == hf_greedy(model, ids, 6)


def test_an_unsupported_architecture_names_the_supported_ones(tmp_path):
    from rustinfer.runtime.checkpoint import CheckpointError, open_checkpoint

    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match=r"'gemma2' is not supported.*llama, qwen2, qwen3, phi3.*specs/gemma2.yaml"):
        open_checkpoint(tmp_path / "g.gguf")


def test_unsupported_rope_scaling_names_the_gguf_keys(tmp_path):
    """Qwen2.5 with YaRN added (qwen2.rope.scaling.*) is refused when the file is opened, in
    the GGUF's terms, saying what to do (LongRoPE runs: tests/test_longrope.py)."""
    from rustinfer.runtime.checkpoint import CheckpointError, open_checkpoint

    def yarn(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(4.0)
        w.add_rope_scaling_orig_ctx_len(32768)

    model = make_model("qwen2", tmp_path / "qwen", **FAMILY_CONFIGS["qwen2"]["tied-gqa"])
    write_arch_gguf(tmp_path / "yarn.gguf", "qwen2", model, extra=yarn)
    with pytest.raises(CheckpointError, match=r"qwen2.rope.scaling.type='yarn' \(factor 4.0\) is not "
                       r"supported.*\(32768 tokens\).*--remove-metadata qwen2.rope.scaling.type"):
        open_checkpoint(tmp_path / "yarn.gguf")
