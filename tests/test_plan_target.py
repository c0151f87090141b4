"""The compiled plan (cpu-torch target) against the reference interpreter."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.runtime import LLM, SamplingParams


@pytest.fixture(scope="module", params=sorted(PARITY_CONFIGS))
def pair(request, tmp_path_factory, monkeypatch_module):
    folder = tmp_path_factory.mktemp(request.param)
    make_llama(folder, seed=len(request.param), **PARITY_CONFIGS[request.param])
    ref = LLM(model=str(folder), target="reference", max_model_len=128)
    plan = LLM(model=str(folder), target="cpu-torch", max_model_len=128,
               max_num_batched_tokens=16)
    return ref, plan


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    # Compiled plans go to a private cache, so tests never see a stale plan.
    mp = pytest.MonkeyPatch()
    mp.setenv("RUSTINFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield mp
    mp.undo()


def _ids(vocab, n, seed):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_plan_logits_match_reference(pair):
    ref, plan = pair
    ids = _ids(ref.graph.symbols["vocab"], 37, 1)        # > max_num_batched_tokens: chunked
    want, got = ref.logits(ids), plan.logits(ids)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_plan_greedy_matches_reference(pair):
    ref, plan = pair
    ids = _ids(ref.graph.symbols["vocab"], 6, 2)
    params = SamplingParams(max_tokens=32, temperature=0.0)
    assert plan.generate([ids], params)[0].token_ids == ref.generate([ids], params)[0].token_ids


def test_batched_step_of_ragged_sequences(pair):
    """One step holding a prefill chunk, a decode token and a longer prefill."""
    ref, plan = pair
    vocab, bs = ref.graph.symbols["vocab"], ref.block_size
    seqs = [(_ids(vocab, 5, 3), 0, [0]), (_ids(vocab, 8, 4), 0, [2, 1]), (_ids(vocab, 3, 5), 0, [4])]
    for llm in (ref, plan):
        llm.executor.forward(StepInputs.for_sequences(seqs, bs))
    nxt = [(_ids(vocab, 1, 6), 5, [0]), (_ids(vocab, 4, 7), 8, [2, 1]), (_ids(vocab, 1, 8), 3, [4])]
    step = StepInputs.for_sequences(nxt, bs, logits="all")
    want = ref.executor.forward(step).numpy()
    got = plan.executor.forward(StepInputs.for_sequences(nxt, bs, logits="all")).numpy()
    assert got.shape == want.shape == (6, vocab)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
