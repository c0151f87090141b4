"""int4 on the cpu target: MatMulNBits computes exactly what its (de)quantized weights say.

Random tiny models amplify 4-bit weight noise (int4 vs fp32 logits differ by
30-70% on PARITY_CONFIGS), so the oracle here is the reference interpreter run
on the int4-dequantized weights; the closeness of int4 to fp32 on a real model
is measured on SmolLM2 (slow test) and by bench/cpu.py's accuracy report.
"""
from __future__ import annotations

import math

import pytest
import torch

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.compiler.onnx_quant import quantize
from rustinfer.runtime import targets
from test_onnx_cpu import BS, close, greedy, ids, load, score


class Int4Weights:
    """A checkpoint whose linear weights read back as their int4-dequantized values."""

    def __init__(self, inner):
        self.inner = inner

    def load(self, name):
        t = self.inner.load(name)
        if t.dim() == 2 and "embed_tokens" not in name:
            t = torch.from_numpy(quantize(t.float().numpy(), 4).dequantize())
        return t

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


@pytest.fixture(scope="module", params=["mha-untied", "mqa"])   # untied: the head is int4, the table is not
def folder(request, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RUSTINFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    path = tmp_path_factory.mktemp(request.param)
    make_llama(path, seed=3, **PARITY_CONFIGS[request.param])
    yield path
    mp.undo()


def reference_on_int4(path, monkeypatch):
    real = targets._reference
    monkeypatch.setattr(targets, "TARGETS", {**targets.TARGETS, "reference": lambda ctx: real(
        targets.LoadContext(**{**vars(ctx), "checkpoint": Int4Weights(ctx.checkpoint)}))})
    return load(path, "reference")


def test_int4_exact_against_dequantized_weights(folder, monkeypatch):
    """accuracy_level 0 (float32 activations): only summation order differs."""
    ref = reference_on_int4(folder, monkeypatch)
    cpu = load(folder, "cpu", quant="int4", accuracy_level=0)
    tokens = ids(ref.graph.symbols["vocab"], 30, 5)
    assert close(score(cpu, tokens, [0, 1]), score(ref, tokens, [0, 1]))
    assert greedy(cpu, tokens[:5], 20, [0, 1, 2]) == greedy(ref, tokens[:5], 20, [0, 1, 2])


def test_int4_int8_activations_close(folder, monkeypatch):
    """accuracy_level 4 (the default: int8 activations per block): within 8% of max |logit|
    (measured: 2.0% mha-untied, 5.2% mqa)."""
    ref = reference_on_int4(folder, monkeypatch)
    cpu = load(folder, "cpu", quant="int4")
    tokens = ids(ref.graph.symbols["vocab"], 30, 6)
    got, want = score(cpu, tokens, [0, 1]), score(ref, tokens, [0, 1])
    assert close(got, want, tol=8e-2)
    assert not close(got, want, tol=1e-6)          # int8 activations really were used


@pytest.mark.slow
def test_smollm2_int4_transcoded_equals_fp32(smollm2_gguf, tmp_path, monkeypatch):
    """Q4_1 / Q8_0 blocks transcoded, not requantized: with float32 activations the int4
    model computes the fp32 (dequantized GGUF) model's logits."""
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))
    fp32 = load(smollm2_gguf, "cpu", max_model_len=256, max_tokens=64)
    int4 = load(smollm2_gguf, "cpu", max_model_len=256, max_tokens=64, quant="int4",
                accuracy_level=0)
    assert "transcoded from Q4_1" in (int4.plan_dir / "weights.txt").read_text()
    tokens = ids(49152, 40, 7)
    blocks = list(range(math.ceil(48 / BS)))
    assert close(score(int4, tokens, blocks), score(fp32, tokens, blocks))
    assert greedy(int4, tokens[:8], 16, blocks) == greedy(fp32, tokens[:8], 16, blocks)


@pytest.mark.slow
def test_smollm2_int4_int8_activations_track_fp32(smollm2_gguf, tmp_path, monkeypatch):
    """The default int4 (int8 activations, Q4_1's offsets by the correction MatMul) on real
    text: its next-token choice agrees with fp32 at >= 90% of the positions (measured:
    97%; without the correction 80%)."""
    from rustinfer.runtime.tokenizer import Tokenizer

    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))
    kw = dict(max_model_len=256, max_tokens=64)
    fp32 = load(smollm2_gguf, "cpu", **kw)
    int4 = load(smollm2_gguf, "cpu", quant="int4", **kw)
    text = ("The river rose slowly through the night, and by morning the old stone bridge "
            "stood alone in a wide brown lake. People came down from the hills to look at it, "
            "and the children threw sticks into the current to see how fast it ran.")
    tokens = Tokenizer.from_gguf(smollm2_gguf).encode(text)
    blocks = list(range(math.ceil(len(tokens) / BS) + 1))
    want, got = score(fp32, tokens, blocks), score(int4, tokens, blocks)
    agree = float((want.argmax(-1) == got.argmax(-1)).mean())
    assert agree >= 0.9, agree
    assert not close(got, want, tol=1e-4)          # int8 activations really were used


def test_gguf_kquants_and_mixed_blocks_transcoded_exactly(tmp_path, monkeypatch):
    """A GGUF as llama.cpp's Q4_K_M / Q5_K_M files are: K-quants next to Q5_0 / Q5_1 / Q8_0,
    and a fused q|k|v or gate|up whose parts differ in type. int4 keeps every block (none
    is quantized again): with float32 activations it computes the fp32 (dequantized)
    model's logits."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    from test_checkpoint_gguf import random_kquant_blocks, random_state_dict, tiny_config, write_gguf

    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(hidden_size=256, intermediate_size=256, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64)
    kinds = [{"q_proj": Q.Q4_K, "k_proj": Q.Q4_K, "v_proj": Q.Q6_K, "o_proj": Q.Q4_K,
              "gate_proj": Q.Q5_0, "up_proj": Q.Q5_1, "down_proj": Q.Q6_K},
             {"q_proj": Q.Q5_K, "k_proj": Q.Q5_K, "v_proj": Q.Q8_0, "o_proj": Q.Q5_1,
              "gate_proj": Q.Q4_K, "up_proj": Q.Q4_K, "down_proj": Q.Q4_0}]
    glob = {"embed_tokens": Q.Q6_K, "lm_head": Q.Q5_K}

    def qtype(hf):
        if hf.startswith("model.layers."):
            layer = kinds[int(hf.split(".")[2])]
            return next((q for part, q in layer.items() if f".{part}." in hf), Q.F32)
        return next((q for part, q in glob.items() if part in hf), Q.F32)

    rng = np.random.default_rng(0)
    sd = random_state_dict(cfg)
    tensors = {hf: random_kquant_blocks(rng, *v.shape, qtype(hf)) if qtype(hf).name.endswith("_K")
               else v for hf, v in sd.items()}
    path = tmp_path / "mixed.gguf"
    write_gguf(path, cfg, tensors, lambda hf, v: qtype(hf) if v.ndim == 2 else Q.F32)

    fp32 = load(path, "cpu")
    int4 = load(path, "cpu", quant="int4", accuracy_level=0)
    report = dict(line.split(None, 1) for line in (int4.plan_dir / "weights.txt").read_text()
                  .splitlines())
    stored = {name: (desc.split()[1], desc.rsplit(" ", 1)[1]) for name, desc in report.items()}
    layer = "model.layers.{}.{}.weight".format
    assert stored == {
        layer(0, "self_attn.q+k+v_proj"): ("8-bit", "Q4_K+Q6_K"),   # widened to hold the Q6_K v
        layer(0, "self_attn.o_proj"): ("4-bit", "Q4_K"),
        layer(0, "mlp.gate+up_proj"): ("8-bit", "Q5_0+Q5_1"),
        layer(0, "mlp.down_proj"): ("8-bit", "Q6_K"),
        layer(1, "self_attn.q+k+v_proj"): ("8-bit", "Q5_K+Q8_0"),
        layer(1, "self_attn.o_proj"): ("8-bit", "Q5_1"),
        layer(1, "mlp.gate+up_proj"): ("4-bit", "Q4_K"),
        layer(1, "mlp.down_proj"): ("4-bit", "Q4_0"),
        "lm_head.weight": ("8-bit", "Q5_K")}
    tokens = ids(64, 30, 9)
    got, want = score(int4, tokens, [0, 1]), score(fp32, tokens, [0, 1])
    assert close(got, want)
    assert greedy(int4, tokens[:5], 10, [0, 1]) == greedy(fp32, tokens[:5], 10, [0, 1])


def test_default_is_float32_unless_it_would_not_fit(tmp_path, monkeypatch, capsys):
    """No --quant: float32, unless float32 weights would take over half the available
    memory; then int4, said on stderr. An explicit quant="none" is kept either way."""
    from rustinfer.runtime import onnx_executor

    here = onnx_executor.available_memory()           # this machine's, from /proc/meminfo
    assert here is None or here > 2**20
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", seed=3, **PARITY_CONFIGS["mqa"])
    monkeypatch.setattr(onnx_executor, "available_memory", lambda: 64 * 2**30)
    assert load(tmp_path / "m", "cpu").meta["quant"] == "none"
    assert "quant int4" not in capsys.readouterr().err
    monkeypatch.setattr(onnx_executor, "available_memory", lambda: 2**16)   # 64 KiB left
    assert load(tmp_path / "m", "cpu").meta["quant"] == "int4"
    assert "using --quant int4" in capsys.readouterr().err
    assert load(tmp_path / "m", "cpu", quant="none").meta["quant"] == "none"
