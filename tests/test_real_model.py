"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers loading the same file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rustinfer.runtime import LLM, SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "List three prime numbers and explain why they are prime.",
]


@pytest.fixture(scope="module")
def llm(smollm2_gguf):
    """What users run: the compiled plan (cpu-torch)."""
    return LLM(model=str(smollm2_gguf), target="cpu-torch", max_model_len=512)


@pytest.fixture(scope="module")
def ref(smollm2_gguf):
    """The IR interpreter: the oracle for the compiled plan."""
    return LLM(model=str(smollm2_gguf), target="reference", max_model_len=512)


@pytest.fixture(scope="module")
def hf_model(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                 dtype=torch.float32)
    return model.eval()


def test_default_alias_answers_paris(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(max_tokens=32, temperature=0.0))
    assert "Paris" in out.text, out.text


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_match_transformers_on_gguf(llm, hf_model, prompt):
    ids = llm.tokenizer.encode_chat([{"role": "user", "content": prompt}])
    with torch.no_grad():
        want = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 eos_token_id=None, pad_token_id=0, min_new_tokens=32)
    ours = llm.generate([ids], SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True))
    assert ours[0].token_ids == want[0, len(ids):].tolist()


@pytest.mark.parametrize("target", ["llm", "ref"])
def test_logits_match_transformers_on_gguf(target, request, hf_model):
    model = request.getfixturevalue(target)
    ids = model.tokenizer.encode_chat([{"role": "user", "content": PROMPTS[1]}])
    with torch.no_grad():
        want = hf_model(torch.tensor([ids])).logits[0].numpy()
    got = model.logits(ids)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_compiled_plan_matches_reference_on_smollm2(ref, smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))    # compile afresh, not from a cache
    plan = LLM(model=str(smollm2_gguf), target="cpu-torch", max_model_len=512,
               max_num_batched_tokens=64)
    assert not plan.plan_cached
    ids = ref.tokenizer.encode_chat([{"role": "user", "content": PROMPTS[2]}])
    want, got = ref.logits(ids), plan.logits(ids)          # chunked: 64-token steps
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    assert plan.generate([ids], params)[0].token_ids == ref.generate([ids], params)[0].token_ids
