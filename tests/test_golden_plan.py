"""The generated plans for a tiny Llama config, checked in: a codegen change shows up as a diff.

One per target family of plans: cpu-torch (the unfused layer) and cuda (after
fuse_norm_linear: the norms, residual adds and SwiGLU inside the GEMMs).
Regenerate after an intended change with
    RUSTINFER_UPDATE_GOLDEN=1 ./test.sh tests/test_golden_plan.py
and review the diff of tests/golden/llama3_tiny_*plan.py like any code change.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from rustinfer.compiler.build import CompileOptions, compile_model
from rustinfer.compiler.spec import SPECS_DIR

GOLDEN = {"cpu-torch": Path(__file__).parent / "golden" / "llama3_tiny_plan.py",
          "cuda": Path(__file__).parent / "golden" / "llama3_tiny_cuda_plan.py"}
TINY = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64,
            intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, rms_norm_eps=1e-5,
            tie_word_embeddings=True, rope_theta=10000.0, max_position_embeddings=256)


@pytest.mark.parametrize("target", sorted(GOLDEN))
def test_generated_plan_matches_golden(tmp_path, monkeypatch, target):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))
    folder, _ = compile_model(SPECS_DIR / "llama3.yaml", TINY, None,
                              CompileOptions(target=target, max_tokens=32, max_seqs=8))
    text = (folder / "plan.py").read_text()
    if os.environ.get("RUSTINFER_UPDATE_GOLDEN"):
        GOLDEN[target].write_text(text)
    assert text == GOLDEN[target].read_text(), \
        f"{target} plan.py changed: review, then regenerate the golden"
