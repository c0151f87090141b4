"""Overlapped decoding: the engine launches a decode step from the last step's tokens while
they are still where the sampler left them, then reads them back. Whatever the overlap,
every request must get exactly the tokens, text and finish reasons of plain steps.

The executor here is the CPU torch plan behind a wrapper that declares it takes device
token ids (as the cuda target's does), so the engine's bookkeeping runs in CI; on a GPU
the same path overlaps the host's work with the next step (bench/gpu_engine.py)."""
from __future__ import annotations

import pytest
import torch

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.runtime import LLM, SamplingParams


class _TakesDeviceTokens:
    """The cpu-torch executor, declaring what CudaExecutor declares; counts follow-up steps
    (those whose token ids arrive as the sampler's tensor, not a list laid out by the host)."""
    accepts_device_tokens = True

    def __init__(self, inner):
        self.inner, self.from_device = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, step):
        raise AssertionError("the engine copied the logits to the host")

    def forward_device(self, step):
        return self.inner.forward(step)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RUSTINFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    folder = tmp_path_factory.mktemp("overlap-model")
    make_llama(folder, **PARITY_CONFIGS["smollm2-like"])
    llm = LLM(model=str(folder), target="cpu-torch", max_model_len=96,
              max_num_batched_tokens=32)
    llm.engine.executor = _TakesDeviceTokens(llm.engine.executor)
    yield llm
    mp.undo()


def _prompts(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 200, (int(k),), generator=g).tolist()
            for k in torch.randint(3, 30, (n,), generator=g)]


def _run(llm, overlap: bool, fn):
    eng = llm.engine
    eng.overlap_decode, eng.num_overlapped_steps = overlap, 0
    out = fn()
    assert eng.blocks.num_used == 0                 # no block leaked
    assert not eng.has_unfinished()
    return out, eng.num_overlapped_steps


def _outputs(llm, prompts, params):
    return [(o.token_ids, o.text, o.finish_reason) for o in llm.generate(prompts, params)]


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
    SamplingParams(max_tokens=17, temperature=0.9, top_p=0.8, top_k=40, seed=7, n=2),
    SamplingParams(max_tokens=24, temperature=0.0, stop_token_ids=[5, 17, 33, 60, 91]),
    SamplingParams(max_tokens=1, temperature=0.0),
], ids=["greedy", "seeded-n2", "stop-ids", "one-token"])
def test_overlap_gives_the_tokens_of_plain_steps(llm, params):
    ps = _prompts(5, seed=1)
    want, none = _run(llm, False, lambda: _outputs(llm, ps, params))
    got, overlapped = _run(llm, True, lambda: _outputs(llm, ps, params))
    assert got == want
    assert none == 0
    if params.max_tokens > 2:
        assert overlapped > 0, "no step was overlapped"


def test_sampling_that_reads_the_last_token_is_not_overlapped(llm):
    """Penalties count the output, min_tokens its length: the next step's sampling needs the
    token still in flight, so such batches run plain steps, with the same results."""
    ps = _prompts(3, seed=2)
    for params in (SamplingParams(max_tokens=10, temperature=0.0, frequency_penalty=1.5),
                   SamplingParams(max_tokens=10, temperature=0.0, logprobs=2)):
        want, _ = _run(llm, False, lambda: _outputs(llm, ps, params))
        got, overlapped = _run(llm, True, lambda: _outputs(llm, ps, params))
        assert got == want and overlapped == 0
    # min_tokens: plain steps until the output is long enough, overlapped after
    params = SamplingParams(max_tokens=12, min_tokens=6, temperature=0.0)
    want, _ = _run(llm, False, lambda: _outputs(llm, ps, params))
    got, overlapped = _run(llm, True, lambda: _outputs(llm, ps, params))
    assert got == want and overlapped > 0


def _drive(llm, arrivals, abort_at=None):
    """Step the engine by hand: requests join at given steps, one may be aborted."""
    eng = llm.engine
    tokens, finished, step = {}, {}, 0
    params = SamplingParams(max_tokens=14, temperature=0.0, ignore_eos=True)
    while arrivals or eng.has_unfinished():
        for rid, prompt in arrivals.pop(step, []):
            eng.add_request(rid, prompt, params)
        if abort_at is not None and step == abort_at[1]:
            eng.abort(abort_at[0])
        for ev in eng.step():
            tokens.setdefault(ev.request_id, []).extend(ev.new_token_ids)
            if ev.finished:
                finished[ev.request_id] = ev.finish_reason
        step += 1
    return tokens, finished


def test_requests_joining_and_aborting_mid_overlap(llm):
    ps = _prompts(4, seed=3)
    plan = lambda: {0: [("a", ps[0]), ("b", ps[1])], 6: [("c", ps[2])], 9: [("d", ps[3])]}  # noqa: E731
    want, _ = _run(llm, False, lambda: _drive(llm, plan(), abort_at=("b", 8)))
    got, overlapped = _run(llm, True, lambda: _drive(llm, plan(), abort_at=("b", 8)))
    assert overlapped > 0
    assert got[1] == want[1] == {"a": "length", "b": "abort", "c": "length", "d": "length"}
    for rid in "acd":
        assert got[0][rid] == want[0][rid]
    # An overlapped step's tokens arrive one step() later, so the abort cut b one token
    # earlier (or as early): what it got is what plain steps gave, up to there.
    assert 0 < len(got[0]["b"]) <= len(want[0]["b"])
    assert got[0]["b"] == want[0]["b"][:len(got[0]["b"])]


def test_overlap_with_a_cache_too_small_for_every_sequence(tmp_path, monkeypatch):
    """Blocks run out mid-decode: the follow-up step is not launched, the scheduler preempts
    as in plain steps, and the tokens do not change."""
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", **PARITY_CONFIGS["smollm2-like"])
    llm = LLM(model=str(tmp_path / "m"), target="cpu-torch", max_model_len=64,
              max_num_batched_tokens=32, num_kv_blocks=16, block_size=4)
    llm.engine.executor = _TakesDeviceTokens(llm.engine.executor)
    ps = _prompts(4, seed=4)
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    want, _ = _run(llm, False, lambda: _outputs(llm, ps, params))
    got, overlapped = _run(llm, True, lambda: _outputs(llm, ps, params))
    assert got == want and overlapped > 0
    assert llm.engine.scheduler.num_preempted > 0


def test_overlap_goes_on_while_queued_requests_could_not_start_anyway(tmp_path, monkeypatch):
    """More requests than seats: decoding stays overlapped while the queue waits for a seat
    (admission is at most one step later), with the tokens of plain steps."""
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", **PARITY_CONFIGS["smollm2-like"])
    llm = LLM(model=str(tmp_path / "m"), target="cpu-torch", max_model_len=96,
              max_num_batched_tokens=32, max_num_seqs=2)
    llm.engine.executor = _TakesDeviceTokens(llm.engine.executor)
    eng = llm.engine
    ps = _prompts(5, seed=5)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    want, _ = _run(llm, False, lambda: _outputs(llm, ps, params))

    def count_queued_overlaps():
        for i, p in enumerate(ps):
            eng.add_request(f"q{i}", p, params)
        queued = 0
        while eng.has_unfinished():
            waiting, before = bool(eng.scheduler.waiting), eng.num_overlapped_steps
            eng.step()
            queued += waiting and eng.num_overlapped_steps > before
        return queued

    got, _ = _run(llm, True, lambda: _outputs(llm, ps, params))
    assert got == want
    eng.overlap_decode = True
    assert count_queued_overlaps() > 0


def test_a_last_token_is_not_left_in_flight(llm):
    """A step whose rows all end by length returns its tokens at once: nothing would be
    launched behind it, so holding them to the next step() would only delay them."""
    eng = llm.engine
    eng.overlap_decode = True
    eng.add_request("last", [5, 6, 7], SamplingParams(max_tokens=1, temperature=0.0))
    events = eng.step()
    assert [e.finish_reason for e in events] == ["length"]
    assert not eng.has_unfinished()
