"""The engine: continuous batching, chunked prefill, preemption, prefix caching, stops."""
from __future__ import annotations

import pytest
import torch

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.runtime import LLM, SamplingParams
from rustinfer.runtime.engine_api import RequestError

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


class PairTokenizer:
    """Each token id decodes to two characters, so stop strings can straddle tokens."""

    def __init__(self, eos=()):
        self.eos_token_ids = list(eos)

    @staticmethod
    def piece(t: int) -> str:
        return chr(97 + t % 26) + chr(65 + (t // 26) % 26)

    def new_detokenizer(self, skip_special_tokens=True):
        outer = self

        class Detok:
            def push(self, t):
                return outer.piece(t)

            def flush(self):
                return ""
        return Detok()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine-model")
    make_llama(folder, **PARITY_CONFIGS["smollm2-like"])
    return folder


def make_llm(model_dir, tmp_path_factory=None, **kw):
    kw.setdefault("max_model_len", 256)
    return LLM(model=str(model_dir), target=kw.pop("target", "cpu-torch"), **kw)


@pytest.fixture(scope="module", params=["cpu-torch", "cpu"])
def llm(model_dir, tmp_path_factory, request):
    """The engine on both CPU targets: the paged plan (cpu-torch) and ONNX Runtime (cpu,
    the default here), whose contiguous KV rows must follow every block-table trick."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RUSTINFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield make_llm(model_dir, target=request.param, max_num_batched_tokens=32)
    mp.undo()


def prompts(n, seed=0, lo=3, hi=40):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(0, 490, (k,), generator=g).tolist() for k in lens]


def alone(llm, ps, params=GREEDY):
    return [llm.generate([p], params)[0].token_ids for p in ps]


def test_batched_greedy_equals_each_request_alone(llm):
    ps = prompts(6)                       # up to 39 tokens with a 32-token step: chunked prefill
    together = [o.token_ids for o in llm.generate(ps, GREEDY)]
    assert together == alone(llm, ps)
    assert llm.engine.blocks.num_used == 0


def test_requests_joining_mid_way_match(llm):
    ps = prompts(4, seed=1)
    want = alone(llm, ps)
    eng = llm.engine
    got = {}
    eng.add_request("a", ps[0], GREEDY)
    steps = 0
    while eng.has_unfinished():
        steps += 1
        if steps == 3:
            eng.add_request("b", ps[1], GREEDY)
        if steps == 6:
            eng.add_request("c", ps[2], GREEDY)
            eng.add_request("d", ps[3], GREEDY)
        for ev in eng.step():
            got.setdefault(ev.request_id, []).extend(ev.new_token_ids)
    assert [got[k] for k in "abcd"] == want


def test_preemption_under_a_tiny_cache_keeps_outputs_and_leaks_nothing(model_dir, llm,
                                                                       tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))
    ps = prompts(6, seed=2, lo=20, hi=40)
    want = alone(llm, ps, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))
    # 9 blocks of 16 tokens: two sequences of ~60 tokens cannot both stay resident.
    small = make_llm(model_dir, target=llm.target, num_kv_blocks=9, max_model_len=128,
                     max_num_batched_tokens=32)
    got = small.generate(ps, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))
    assert [o.token_ids for o in got] == want
    assert small.engine.scheduler.num_preempted > 0
    assert small.engine.blocks.num_used == 0


def test_aborts_free_every_block(llm):
    eng = llm.engine
    for i, p in enumerate(prompts(8, seed=3)):
        eng.add_request(f"r{i}", p, SamplingParams(max_tokens=30, temperature=0.0))
    for _ in range(3):
        eng.step()
    eng.abort("r1")
    eng.abort("r6")                        # possibly still waiting
    finished = {}
    while eng.has_unfinished():
        for ev in eng.step():
            if ev.finished:
                finished[ev.request_id] = ev.finish_reason
        if "r3" not in finished and len(finished) >= 2:
            eng.abort("r3")
    assert finished["r1"] == finished["r6"] == "abort" and len(finished) == 8
    assert eng.blocks.num_used == 0 and not eng.scheduler.running


def test_prefix_cache_reuses_a_repeated_system_prompt(llm):
    system = prompts(1, seed=4, lo=40, hi=41)[0]               # 2.5 blocks
    first = llm.generate([system + [5, 6]], GREEDY)[0].token_ids
    before = llm.engine.stats()
    second = llm.generate([system + [5, 6]], GREEDY)[0].token_ids
    after = llm.engine.stats()
    assert first == second
    assert after.prefix_cache_hits - before.prefix_cache_hits == 32  # two full blocks
    assert after.prefix_cache_hit_rate > 0


def test_each_block_is_hashed_once_and_generated_blocks_are_cached(llm, monkeypatch):
    """A decode step hashes only the block it just filled (it used to rehash the whole
    context every step), and blocks filled by generated tokens are cached as well: a next
    turn that sends prompt + answer back reuses them."""
    from rustinfer.runtime import block_manager

    hashed = []
    real = block_manager.block_hash
    monkeypatch.setattr(block_manager, "block_hash", lambda p, t: hashed.append(t) or real(p, t))
    prompt = prompts(1, seed=11, lo=20, hi=21)[0]
    answer = llm.generate([prompt], SamplingParams(max_tokens=60, temperature=0.0,
                                                   ignore_eos=True))[0].token_ids
    computed = len(prompt) + len(answer) - 1          # the last token is sampled, not fed
    looked_up = (len(prompt) - 1) // 16
    assert len(hashed) == looked_up + computed // 16
    before = llm.engine.stats().prefix_cache_hits
    llm.generate([prompt + answer + [7]], GREEDY)
    assert llm.engine.stats().prefix_cache_hits - before == computed // 16 * 16


def test_stop_string_across_token_boundary(model_dir, llm):
    llm.engine.tokenizer = tok = PairTokenizer()
    try:
        p = prompts(1, seed=5)[0]
        full = llm.generate([p], GREEDY)[0]
        text = "".join(tok.piece(t) for t in full.token_ids)
        stop = text[5:8]                  # starts inside token 2, ends inside token 3
        out = llm.generate([p], SamplingParams(max_tokens=12, temperature=0.0, stop=[stop]))[0]
        assert out.finish_reason == "stop"
        assert out.text == text[:text.index(stop)] and stop not in out.text
    finally:
        llm.engine.tokenizer = llm.tokenizer


def test_every_eos_id_stops_and_max_tokens_is_length(llm):
    p = prompts(1, seed=6)[0]
    full = llm.generate([p], GREEDY)[0].token_ids
    for eos_at in (2, 5):
        llm.engine.tokenizer = PairTokenizer(eos=[999_999, full[eos_at]])
        try:
            first_hit = full.index(full[eos_at])
            out = llm.generate([p], SamplingParams(max_tokens=12, temperature=0.0))[0]
            assert out.finish_reason == "stop" and out.token_ids == full[:first_hit + 1]
        finally:
            llm.engine.tokenizer = llm.tokenizer
    out = llm.generate([p], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 4


def test_too_long_prompt_is_rejected_before_queueing(llm):
    with pytest.raises(RequestError) as info:
        llm.engine.add_request("long", [1] * 300, GREEDY)
    assert info.value.code == "context_length_exceeded"
    assert not llm.engine.has_unfinished()


def test_seeded_sampling_is_independent_of_batch_composition(llm):
    ps = prompts(3, seed=7)
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=1234,
                            ignore_eos=True)
    solo = llm.generate([ps[0]], params)[0].token_ids
    mixed = llm.generate([ps[1], ps[0], ps[2]], params)[1].token_ids
    assert solo == mixed


def test_n_choices_share_the_prompt_and_differ(llm):
    p = prompts(1, seed=8, lo=35, hi=36)[0]
    before = llm.engine.stats().prefix_cache_hits
    out = llm.generate([p], SamplingParams(max_tokens=8, temperature=1.0, seed=3, n=3,
                                           ignore_eos=True))[0]
    assert len(out.choices) == 3
    assert len({tuple(c.token_ids) for c in out.choices}) > 1
    assert llm.engine.stats().prefix_cache_hits - before >= 2 * 32   # choices 1, 2 reuse blocks
    assert llm.engine.blocks.num_used == 0


def test_prompt_logprobs_across_prefill_chunks_match_full_logits(llm):
    """Echo scoring: every prompt token's logprob, also when the prompt spans 3 step chunks."""
    p = prompts(1, seed=9, lo=70, hi=71)[0]                 # 70 tokens, 32-token steps
    out = llm.generate([p], SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=3))[0]
    lps = out.prompt_logprobs
    assert len(lps) == len(p) and lps[0] is None
    want = torch.log_softmax(torch.from_numpy(llm.logits(p)), dim=-1)
    for i in range(1, len(p)):
        assert lps[i].token_id == p[i]
        assert abs(lps[i].logprob - want[i - 1, p[i]].item()) < 1e-4
        assert [t for t, _ in lps[i].top] == want[i - 1].topk(3).indices.tolist()


def _lp_pairs(out):
    return [None if e is None else (e.token_id, round(e.logprob, 3)) for e in out.prompt_logprobs]


def test_prompt_logprobs_score_a_prefix_the_cache_already_holds(llm):
    """A prompt whose leading blocks are in the prefix cache (an earlier request, as when
    lm-evaluation-harness scores many continuations of one context) still gets a logprob
    for every prompt token: the cached blocks were never scored for it."""
    context = prompts(1, seed=10, lo=50, hi=51)[0]                      # 3 full blocks
    llm.generate([context + [7]], GREEDY)                               # caches them
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=2)
    p = context + [8, 9]
    out = llm.generate([p], params)[0]
    assert len(out.prompt_logprobs) == len(p) and out.prompt_logprobs[0] is None
    again = llm.generate([p], params)[0]
    assert _lp_pairs(again) == _lp_pairs(out)
    assert llm.engine.blocks.num_used == 0


def test_prompt_logprobs_survive_preemption_mid_prefill(model_dir, llm, tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))
    ps = prompts(4, seed=11, lo=60, hi=80)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, prompt_logprobs=1)
    want = [_lp_pairs(llm.generate([p], params)[0]) for p in ps]
    small = make_llm(model_dir, target=llm.target, num_kv_blocks=9, max_model_len=128,
                     max_num_batched_tokens=32)
    got = small.generate(ps, params)
    assert small.engine.scheduler.num_preempted > 0
    assert [_lp_pairs(o) for o in got] == want
    assert small.engine.blocks.num_used == 0


def test_out_of_range_logit_bias_is_rejected(llm):
    with pytest.raises(RequestError) as info:
        llm.engine.add_request("bias", [1, 2], SamplingParams(logit_bias={10_000: 5.0}))
    assert info.value.param == "logit_bias"


def test_engine_runs_on_the_reference_target(model_dir, llm):
    ref = make_llm(model_dir, target="reference", max_num_batched_tokens=32)
    ps = prompts(3, seed=10)
    assert [o.token_ids for o in ref.generate(ps, GREEDY)] == \
        [o.token_ids for o in llm.generate(ps, GREEDY)]


class _DeviceLogits:
    """An executor whose logits stay where they were computed, as the cuda target's
    forward_device leaves them on the GPU; its host-copying forward must not be used."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, step):
        raise AssertionError("the engine copied the logits to the host")

    def forward_device(self, step):
        self.calls += 1
        return self.inner.forward(step)


def test_engine_samples_where_the_executor_leaves_the_logits(model_dir, llm, monkeypatch):
    ps = prompts(3, seed=11)
    mixed = [GREEDY, SamplingParams(max_tokens=8, seed=5, temperature=0.8, top_p=0.9,
                                    logprobs=2)]
    want = [[(o.token_ids, [lp.logprob for lp in o.logprobs or []])
             for o in llm.generate(ps, p)] for p in mixed]
    device_only = _DeviceLogits(llm.engine.executor)
    monkeypatch.setattr(llm.engine, "executor", device_only)
    got = [[(o.token_ids, [lp.logprob for lp in o.logprobs or []])
            for o in llm.generate(ps, p)] for p in mixed]
    assert device_only.calls > 0
    assert got == want
