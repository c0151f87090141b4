"""Target names: "auto" picks this machine's default; options only go where they mean something."""
import pytest
import torch

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.runtime.llm import LLM
from rustinfer.runtime.targets import describe, resolve_target


def test_auto_is_cpu_without_a_gpu_and_cuda_with_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_target("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_target("auto") == "cuda"
    assert resolve_target("cpu-torch") == "cpu-torch"


def test_unknown_target_names_the_choices():
    with pytest.raises(ValueError, match="auto, cpu, cpu-torch, cuda, reference"):
        resolve_target("tpu")


def test_default_llm_runs_on_onnx_runtime_here(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    llm = LLM(model=str(tmp_path / "m"), max_model_len=64)
    assert llm.target == "cpu" and type(llm.executor).__name__ == "OnnxExecutor"
    line = describe(llm.executor)           # what the engine logs at start
    assert line.startswith("cpu; ONNX Runtime, float32, ") and "threads; compiled now" in line
    again = LLM(model=str(tmp_path / "m"), max_model_len=64)
    assert "compiled earlier" in describe(again.executor)


def test_cpu_options_on_another_target_are_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    with pytest.raises(ValueError, match="takes no options.*quant"):
        LLM(model=str(tmp_path / "m"), target="cpu-torch", max_model_len=64, quant="int4")
