"""Every family in specs/ against transformers, on every CPU target, on random tiny configs.

For each (family, config) of family_models.FAMILY_CONFIGS and each target
(`reference`: the IR interpreter; `cpu-torch`: the fused, memory-planned plan; `cpu`:
ONNX Runtime, or cpu-torch after a loud fallback where ORT's kernels cannot run it):
  - logits of a 23-token prompt within 1e-4 (relative to the largest) of
    transformers in float32 with eager attention; the prompt is longer than
    every sliding window, so windows and soft-caps are exercised;
  - 32 greedy tokens identical to transformers' generate (through our KV cache);
  - chunked prefill + token-by-token decode == one full recomputation.
The spec is selected from config.json alone (no `spec=`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from family_models import (all_cases, greedy, hf_greedy, load_llm, make_model,  # noqa: F401
                           one_torch_thread, prompt)
from rustinfer.compiler.step_inputs import StepInputs

TARGETS = ("reference", "cpu-torch", "cpu")
N_GREEDY = 32


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    # Compiled plans go to a private cache, so tests never see a stale plan.
    mp = pytest.MonkeyPatch()
    mp.setenv("RUSTINFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module", params=all_cases(), ids=lambda c: f"{c[0]}-{c[1]}")
def case(request, tmp_path_factory, private_cache):
    from family_models import FAMILY_CONFIGS

    family, name = request.param
    cfg = FAMILY_CONFIGS[family][name]
    folder = tmp_path_factory.mktemp(f"{family}-{name}")
    hf = make_model(family, folder, seed=len(name), **cfg)
    vocab = cfg["vocab_size"]
    ids = prompt(vocab, 23, seed=1)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
    greedy_prompt = prompt(vocab, 7, seed=2)
    llms = {t: load_llm(folder, t) for t in TARGETS}
    return dict(family=family, vocab=vocab, ids=ids, want=want, llms=llms,
                greedy_prompt=greedy_prompt, hf_tokens=hf_greedy(hf, greedy_prompt, N_GREEDY))


def test_spec_is_selected_from_config(case):
    for llm in case["llms"].values():
        assert Path(llm.spec_path).name == f"{case['family']}.yaml"


@pytest.mark.parametrize("target", TARGETS)
def test_logits_match_transformers(case, target):
    got, want = case["llms"][target].logits(case["ids"]), case["want"]
    assert got.shape == want.shape and got.dtype == np.float32
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 1e-4, err


@pytest.mark.parametrize("target", TARGETS)
def test_greedy_tokens_match_transformers(case, target):
    tokens = greedy(case["llms"][target], case["greedy_prompt"], N_GREEDY)
    assert tokens == case["hf_tokens"]


@pytest.mark.parametrize("target", TARGETS)
def test_incremental_decode_equals_recomputation(case, target):
    """Prefill in chunks, then decode one token at a time, through the KV cache."""
    llm = case["llms"][target]
    ids = case["ids"][:14]
    full = llm.logits(ids)
    blocks = list(range(4))
    rows, cached = [], 0
    for chunk in (ids[:5], ids[5:9], *[[t] for t in ids[9:]]):
        step = StepInputs.for_sequences([(chunk, cached, blocks)], llm.block_size, logits="all")
        rows.append(llm.executor.forward(step).numpy().copy())   # plans reuse their output buffer
        cached += len(chunk)
    incremental = np.concatenate(rows)
    assert np.abs(incremental - full).max() <= 1e-5 * np.abs(full).max()
