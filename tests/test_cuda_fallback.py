"""The cuda target falls back, loudly, to a slower correct path for ops its kernels lack.

Runs on the CPU: the check happens before anything touches CUDA.
"""
from __future__ import annotations

import numpy as np

from family_models import FAMILY_CONFIGS, make_model
from rustinfer.runtime import LLM
from rustinfer.runtime.plan_executor import PlanExecutor
from rustinfer.runtime.targets import cuda_unsupported


def test_sliding_window_family_falls_back_to_cpu_torch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_model("qwen2", tmp_path / "m", **FAMILY_CONFIGS["qwen2"]["sliding"])
    llm = LLM(model=str(tmp_path / "m"), target="cuda", max_model_len=64)
    err = capsys.readouterr().err
    assert "WARNING" in err and "window" in err and "falling back to target 'cpu-torch'" in err
    assert isinstance(llm.executor, PlanExecutor)
    ref = LLM(model=str(tmp_path / "m"), target="reference", max_model_len=64)
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    want, got = ref.logits(ids), llm.logits(ids)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_llama_needs_no_fallback(tmp_path):
    from hf_models import PARITY_CONFIGS, make_llama
    from rustinfer.compiler.bind import bind
    from rustinfer.compiler.spec import load_spec
    from rustinfer.runtime.checkpoint import open_checkpoint

    make_llama(tmp_path, **PARITY_CONFIGS["gqa-tied"])
    ckpt = open_checkpoint(tmp_path)
    assert cuda_unsupported(bind(load_spec("llama3"), ckpt.config, ckpt)) == []
