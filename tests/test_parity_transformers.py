"""The reference target against Hugging Face transformers on random Llama configs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.runtime import LLM, SamplingParams


@pytest.fixture(scope="module", params=sorted(PARITY_CONFIGS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = make_llama(folder, seed=len(request.param), **PARITY_CONFIGS[request.param])
    return hf, LLM(model=str(folder), target="reference", max_model_len=256)


def _prompt(vocab: int, n: int, seed: int = 1) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def test_logits_match(pair):
    hf, llm = pair
    ids = _prompt(hf.config.vocab_size, 23)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
    got = llm.logits(ids)
    assert got.shape == want.shape and got.dtype == np.float32
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale, np.abs(got - want).max() / scale


def test_greedy_tokens_match(pair):
    hf, llm = pair
    ids = _prompt(hf.config.vocab_size, 7, seed=2)
    with torch.no_grad():
        # An explicit mask: without one, generate() masks prompt tokens equal to pad_token_id.
        want = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=32, min_new_tokens=32, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(ids):]
    out = llm.generate([ids], SamplingParams(max_tokens=32, temperature=0.0))[0]
    assert out.token_ids == want.tolist()
    assert out.finish_reason == "length"


def test_incremental_decode_equals_recomputation(pair):
    """Prefill in chunks, then decode one token at a time, through the KV cache."""
    hf, llm = pair
    ids = _prompt(hf.config.vocab_size, 12, seed=3)
    full = llm.logits(ids)
    blocks = list(range(4))
    rows, cached = [], 0
    for chunk in (ids[:5], ids[5:8], *[[t] for t in ids[8:]]):
        step = StepInputs.for_sequences([(chunk, cached, blocks)], llm.block_size, logits="all")
        rows.append(llm.executor.forward(step).numpy())
        cached += len(chunk)
    incremental = np.concatenate(rows)
    scale = np.abs(full).max()
    assert np.abs(incremental - full).max() <= 1e-5 * scale
