"""The batched sampler (runtime/sampling.py) against hand-written references.

- The empirical distribution of temperature / top_k / top_p / min_p sampling on a fixed
  logits vector matches the target (chi-square at 0.1% with 10k draws, a fixed seed), and
  filtered-out tokens never appear.
- Seeded sampling is reproducible and independent of the batch around the sequence.
- logit_bias, min_tokens and the penalties equal a plain-Python reference; logprobs equal
  log_softmax of the processed logits; prompt logprobs follow OpenAI's echo convention.
"""
import math

import pytest
import torch

from rustinfer.runtime.engine_api import TokenLogprob
from rustinfer.runtime.sampling import (Sampler, SamplingParams, SequenceSamplingState,
                                        _keep_threshold)

LOGITS = [2.0, 1.6, 1.2, 0.9, 0.3, 0.0, -0.8, -2.0]
# chi-square 0.999 quantiles for 1..7 degrees of freedom
CHI2_999 = [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32]


class Borderline(Exception):
    """The top_p cut is too close to call in float32: the test skips this case."""


def reference_distribution(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, margin=1e-3):
    """HF's order in plain Python: temperature, top_k, top_p (renormalized), min_p."""
    scaled = [x / temperature for x in logits]
    order = sorted(range(len(logits)), key=lambda i: -scaled[i])
    keep = order[:top_k] if top_k > 0 else order

    def normalized(ids):
        z = sum(math.exp(scaled[i]) for i in ids)
        return {i: math.exp(scaled[i]) / z for i in ids}

    probs = normalized(keep)
    if top_p < 1.0:
        cum, kept = 0.0, []
        for i in keep:
            kept.append(i)
            cum += probs[i]
            if abs(cum - top_p) < margin:
                raise Borderline
            if cum >= top_p:
                break
        keep = kept
    best = max(probs[i] for i in keep)
    keep = [i for i in keep if probs[i] >= min_p * best]
    return normalized(keep)


def step(sampler, logits, states):
    """One engine step: sample, then append (the engine's job, not the sampler's)."""
    tokens, logprobs = sampler.sample(logits, states)
    for state, token in zip(states, tokens):
        state.append(token)
    return tokens, logprobs


def chi_square(counts, target, n):
    return sum((counts[i] - n * p) ** 2 / (n * p) for i, p in target.items())


@pytest.mark.parametrize("opts", [
    dict(temperature=1.0),
    dict(temperature=0.5),
    dict(temperature=1.7, top_k=3),
    dict(top_p=0.8),
    dict(temperature=0.7, top_p=0.5),
    dict(min_p=0.15),
    dict(temperature=0.8, top_k=5, top_p=0.9, min_p=0.05),
])
def test_empirical_distribution_matches_target(opts):
    n = 10000
    target = reference_distribution(LOGITS, **opts)
    params = SamplingParams(seed=1234, **opts)
    # n independent streams (one seed, choice offsets) drawing once, in one batch.
    states = [SequenceSamplingState(params, [], seed_offset=i) for i in range(n)]
    tokens, _ = Sampler().sample(torch.tensor(LOGITS).expand(n, -1), states)
    counts = torch.bincount(torch.tensor(tokens), minlength=len(LOGITS)).tolist()
    assert all(counts[i] == 0 for i in range(len(LOGITS)) if i not in target), (counts, target)
    assert chi_square(counts, target, n) < CHI2_999[len(target) - 2], (counts, target)
    tv = 0.5 * sum(abs(counts[i] / n - target.get(i, 0.0)) for i in range(len(LOGITS)))
    assert tv < 0.025


def test_one_stream_draws_follow_the_distribution():
    """Successive draws of a single sequence's stream (not just first draws of many)."""
    n = 2000
    opts = dict(temperature=1.3, top_k=6, top_p=0.95)
    target = reference_distribution(LOGITS, **opts)
    state = SequenceSamplingState(SamplingParams(seed=7, max_tokens=n, **opts), [])
    sampler, row = Sampler(), torch.tensor([LOGITS])
    for _ in range(n):
        step(sampler, row, [state])
    counts = torch.bincount(torch.tensor(state.output_token_ids), minlength=8).tolist()
    assert all(counts[i] == 0 for i in range(8) if i not in target)
    assert chi_square(counts, target, n) < CHI2_999[len(target) - 2], (counts, target)


def test_top_k_keeps_ties_and_top_k_1_is_greedy():
    x = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]])
    thresh = _keep_threshold(x, [SamplingParams(top_k=2)])
    assert (x >= thresh).tolist() == [[True, True, True, True, False]]
    state = SequenceSamplingState(SamplingParams(temperature=2.0, top_k=1, seed=0), [])
    logits = torch.randn(20, 100, generator=torch.Generator().manual_seed(0))
    for row in logits:
        assert Sampler().sample(row[None], [state])[0] == [int(row.argmax())]


def test_keep_threshold_matches_a_full_sort_reference():
    """The head-first top_k/top_p path (and its full-sort fallback) keeps exactly the
    tokens a full-sort reference keeps, on peaked and flat rows larger than the head."""
    g = torch.Generator().manual_seed(3)
    V = 1000
    rows, params = [], []
    for scale in (0.01, 0.3, 1.0, 5.0):                 # 0.01: the top_p cut lies past the head
        for k, p, m in [(0, 0.9, 0.0), (50, 0.95, 0.0), (400, 0.99, 0.0), (0, 0.5, 0.01),
                        (10, 1.0, 0.2), (0, 1.0, 0.0), (300, 0.3, 0.0)]:
            rows.append(torch.randn(V, generator=g) * scale)
            params.append(SamplingParams(top_k=k, top_p=p, min_p=m))
    x = torch.stack(rows)
    kept = (x >= _keep_threshold(x, params)).tolist()
    checked = 0
    for row, p, got in zip(rows, params, kept):
        try:
            want = reference_distribution(row.double().tolist(), top_k=p.top_k, top_p=p.top_p,
                                          min_p=p.min_p, margin=1e-5)
        except Borderline:
            continue
        assert {i for i, k in enumerate(got) if k} == set(want), p
        checked += 1
    assert checked >= len(rows) - 2


def _random_logits(step, V=300):
    return torch.randn(V, generator=torch.Generator().manual_seed(1000 + step)) * 2


def _others(step):
    """Neighbours that differ step to step: greedy, unseeded, other seeds, penalties, logprobs."""
    mix = [SamplingParams(temperature=0), SamplingParams(),
           SamplingParams(seed=99, top_p=0.3, logprobs=5),
           SamplingParams(seed=5, repetition_penalty=1.5, frequency_penalty=1.0, min_p=0.1),
           SamplingParams(temperature=3.0, top_p=0.999)]       # flat: full-sort fallback
    return [SequenceSamplingState(p, [1, 2, 3]) for p in mix[:1 + step % len(mix)]]


def _run(params, steps=12, position=None, seed_offset=0):
    """Generate `steps` tokens for one sequence, alone or at `position` in a changing batch."""
    state = SequenceSamplingState(params, [4, 5, 6], eos_token_ids=[0], seed_offset=seed_offset)
    sampler = Sampler()
    for i in range(steps):
        batch = [] if position is None else _others(i)
        batch.insert(0 if position is None else min(position, len(batch)), state)
        logits = torch.stack([_random_logits(i + 50 * (b is not state)) for b in batch])
        step(sampler, logits, batch)
    return state.output_token_ids


@pytest.mark.parametrize("opts", [
    dict(),
    dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, logprobs=3),
    dict(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5, min_tokens=4),
])
def test_seeded_sampling_is_reproducible_whatever_the_batch(opts):
    params = SamplingParams(seed=42, max_tokens=50, **opts)
    alone = _run(params)
    assert _run(params) == alone
    for position in (0, 2, 10):
        assert _run(params, position=position) == alone
    assert _run(SamplingParams(seed=43, max_tokens=50, **opts)) != alone
    choice1 = _run(params, seed_offset=1)
    assert choice1 != alone and _run(params, seed_offset=1, position=1) == choice1


def test_unseeded_sampling_is_not_reproducible():
    params = SamplingParams(temperature=1.0, max_tokens=50)
    assert _run(params, steps=20) != _run(params, steps=20)


def reference_process(logits, params, prompt, output, eos=()):
    """logit_bias, min_tokens, repetition, presence/frequency, written out token by token."""
    x = list(logits)
    for t, b in params.logit_bias.items():
        if 0 <= t < len(x):
            x[t] += b
    if len(output) < params.min_tokens:
        for t in set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos)):
            x[t] = -math.inf
    for t in range(len(x)):
        if t in prompt or t in output:
            r = params.repetition_penalty
            x[t] = x[t] / r if x[t] > 0 else x[t] * r
        c = output.count(t)
        x[t] -= params.frequency_penalty * c + params.presence_penalty * (c > 0)
    return x


PROMPT, OUTPUT = [1, 2, 2, 7, 12], [2, 3, 3, 3, 8, 1]       # 12: outside the vocabulary


@pytest.mark.parametrize("opts", [
    dict(repetition_penalty=1.8),
    dict(repetition_penalty=0.6),
    dict(presence_penalty=1.5),
    dict(frequency_penalty=-0.7),
    dict(presence_penalty=-2.0, frequency_penalty=2.0),
    dict(logit_bias={0: 5.0, 3: -100.0, 9: 0.25, 500: 3.0}),        # 500: outside the vocab
    dict(min_tokens=8, stop_token_ids=[4], logit_bias={5: 1.0}),
    dict(min_tokens=8, ignore_eos=True, stop_token_ids=[4]),
    dict(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.3,
         logit_bias={2: 2.0}, min_tokens=3),
])
def test_processed_logits_match_reference(opts):
    logits = [1.5, -0.5, 2.0, 0.7, -1.2, 0.0, 3.1, -2.2, 0.4, 1.1]
    params = SamplingParams(max_tokens=20, **opts)
    eos = [6]
    want = reference_process(logits, params, PROMPT, OUTPUT, eos)
    # Batched with an untouched row and a row with other penalties: rows stay separate.
    states = [SequenceSamplingState(SamplingParams(), [6]),
              SequenceSamplingState(params, PROMPT, eos_token_ids=eos),
              SequenceSamplingState(SamplingParams(frequency_penalty=1.0), [0], [6])]
    for token in OUTPUT:
        states[1].append(token)
    for token in [0, 0, 9]:
        states[2].append(token)
    got = Sampler().process(torch.tensor([logits] * 3), states)
    assert got[1].tolist() == pytest.approx(want, rel=1e-6)
    assert got[0].tolist() == pytest.approx(logits)
    assert got[2].tolist() == pytest.approx(reference_process(
        logits, states[2].params, [0], [0, 0, 9]))


def test_penalty_counts_follow_a_long_output_step_by_step():
    """The counts the penalties read are kept by append(): after every step of a long
    output with many distinct tokens (past the state's first capacity), the processed
    logits match the reference recounted from scratch."""
    g = torch.Generator().manual_seed(5)
    V = 97
    prompt = torch.randint(0, V, (40,), generator=g).tolist()
    params = [SamplingParams(repetition_penalty=1.4, frequency_penalty=0.3, presence_penalty=0.2),
              SamplingParams(frequency_penalty=0.5)]               # the prompt does not count
    states = [SequenceSamplingState(p, prompt if i == 0 else [3, 3, 5]) for i, p in enumerate(params)]
    for _ in range(120):
        logits = torch.randn(2, V, generator=g) * 3
        got = Sampler().process(logits, states)
        for i, s in enumerate(states):
            assert got[i].tolist() == pytest.approx(reference_process(
                logits[i].tolist(), s.params, s.prompt_token_ids, s.output_token_ids), rel=1e-5, abs=1e-5)
        for s in states:
            s.append(int(torch.randint(0, V, (), generator=g)))
    assert len(set(states[0].output_token_ids)) > 32


def test_min_tokens_blocks_eos_and_stop_tokens():
    logits = torch.tensor([[0.0, 1.0, 2.0, 5.0, 9.0, 8.0]])        # eos 4 best, stop id 5 next
    sampler = Sampler()
    state = SequenceSamplingState(SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[5]),
                                  [], eos_token_ids=[4])
    assert [step(sampler, logits, [state])[0][0] for _ in range(4)] == [3, 3, 3, 4]
    ignore = SequenceSamplingState(SamplingParams(temperature=0, min_tokens=3, ignore_eos=True,
                                                  stop_token_ids=[5]), [], eos_token_ids=[4])
    assert sampler.sample(logits, [ignore])[0] == [4]            # ignore_eos: EOS not a stop
    # Sampled, in a batch: no draw in the first min_tokens picks a banned token.
    params = SamplingParams(seed=1, min_tokens=2, stop_token_ids=[5], max_tokens=5)
    states = [SequenceSamplingState(params, [], [4], seed_offset=i) for i in range(500)]
    for _ in range(2):
        tokens, _ = step(sampler, logits.expand(500, -1), states)
        assert not {4, 5} & set(tokens)
    tokens, _ = step(sampler, logits.expand(500, -1), states)
    assert {4, 5} <= set(tokens)


def test_logprobs_are_log_softmax_of_processed_logits():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(4, 64, generator=g) * 3
    base = dict(repetition_penalty=1.2, logit_bias={7: 4.0}, presence_penalty=0.5)
    params = [SamplingParams(temperature=0, logprobs=5, **base),
              SamplingParams(temperature=0.3, top_k=3, logprobs=20, seed=2, **base),
              SamplingParams(temperature=1.5, logprobs=0, seed=3, **base),
              SamplingParams(logprobs=None, seed=4)]
    states = [SequenceSamplingState(p, [7, 8, 9]) for p in params]
    sampler = Sampler()
    processed = sampler.process(logits, states)
    tokens, lps = sampler.sample(logits, states)
    assert lps[3] is None
    for row, state, token, lp in zip(processed, states, tokens, lps[:3]):
        ref = torch.log_softmax(row.double(), -1)    # before temperature: the model's distribution
        assert isinstance(lp, TokenLogprob) and lp.token_id == token
        assert lp.logprob == pytest.approx(float(ref[token]), abs=1e-5)
        k = state.params.logprobs
        best = ref.sort(descending=True)
        assert [t for t, _ in lp.top] == best.indices[:k].tolist()
        assert [v for _, v in lp.top] == pytest.approx(best.values[:k].tolist(), abs=1e-5)
    assert lps[0].top[0][0] == tokens[0]                 # greedy: the sampled token is the best
    assert len(lps[1].top) == 20 and lps[2].top == []


def test_banned_token_logprob_is_finite():
    """JSON has no -inf: a token banned by min_tokens shows up as -9999 in the top list."""
    state = SequenceSamplingState(SamplingParams(temperature=0, min_tokens=1, logprobs=3), [],
                                  eos_token_ids=[0])
    _, [lp] = Sampler().sample(torch.tensor([[9.0, 1.0, 0.5]]), [state])
    assert lp.token_id == 1 and lp.top[-1] == (0, -9999.0)


def test_prompt_logprobs_convention_and_chunks():
    g = torch.Generator().manual_seed(5)
    prompt = [3, 9, 1, 4, 4, 0]
    logits = torch.randn(len(prompt), 12, generator=g)
    sampler = Sampler()
    full = sampler.prompt_logprobs(logits, prompt, 2)
    assert len(full) == len(prompt) and full[0] is None
    ref = torch.log_softmax(logits.double(), -1)
    for pos in range(1, len(prompt)):
        entry = full[pos]
        assert entry.token_id == prompt[pos]
        assert entry.logprob == pytest.approx(float(ref[pos - 1, prompt[pos]]), abs=1e-5)
        assert [t for t, _ in entry.top] == ref[pos - 1].argsort(descending=True)[:2].tolist()
    # Prefill in chunks [0, 2), [2, 5), [5, 6): the concatenation is the same list.
    chunks = [sampler.prompt_logprobs(logits[a:b], prompt, 2, start=a)
              for a, b in [(0, 2), (2, 5), (5, 6)]]
    assert [len(c) for c in chunks] == [3, 3, 0] and sum(chunks, []) == full
    assert sampler.prompt_logprobs(logits[:1], [5], 0) == [None]
    assert [e.top for e in sampler.prompt_logprobs(logits, prompt, 0)[1:]] == [[]] * 5


def test_old_single_sequence_call():
    row = torch.tensor([0.1, 3.0, 0.2])
    assert Sampler(SamplingParams(temperature=0))(row) == 1
    a = Sampler(SamplingParams(seed=8))
    b = Sampler(SamplingParams(seed=8))
    assert [a(row) for _ in range(10)] == [b(row) for _ in range(10)]
    with pytest.raises(TypeError):
        Sampler()(row)


def test_greedy_ties_go_to_the_lowest_id_and_bad_shapes_are_refused():
    state = SequenceSamplingState(SamplingParams(temperature=0), [])
    assert Sampler().sample(torch.tensor([[1.0, 4.0, 4.0, 4.0]]), [state])[0] == [1]
    with pytest.raises(ValueError):
        Sampler().sample(torch.zeros(2, 4), [state])


def test_sample_leaves_appending_to_the_engine():
    state = SequenceSamplingState(SamplingParams(temperature=0, frequency_penalty=2.0), [])
    logits = torch.tensor([[1.0, 0.0]])
    assert Sampler().sample(logits, [state])[0] == [0] and state.output_token_ids == []
    state.append(0)
    assert Sampler().sample(logits, [state])[0] == [1]       # the penalty saw the appended 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_logits_give_the_cpu_tokens():
    """Every path on CUDA tensors; the CPU streams make the tokens device-independent."""
    mix = [SamplingParams(temperature=0, logprobs=3, repetition_penalty=1.2),
           SamplingParams(seed=1, top_k=20, top_p=0.9, min_p=0.05, logprobs=2),
           SamplingParams(seed=2, temperature=3.0, top_p=0.999),     # full-sort fallback
           SamplingParams(seed=3, presence_penalty=1.0, frequency_penalty=0.5,
                          logit_bias={5: 3.0}, min_tokens=3, stop_token_ids=[7])]
    runs = {}
    for device in ("cpu", "cuda"):
        states = [SequenceSamplingState(p, [1, 2, 3], eos_token_ids=[0]) for p in mix]
        sampler, out = Sampler(), []
        for i in range(10):
            logits = torch.stack([_random_logits(i + 7 * j) for j in range(len(states))])
            tokens, lps = step(sampler, logits.to(device), states)
            out.append((tokens, [None if lp is None else lp.logprob for lp in lps]))
        runs[device] = out
    for (tokens, lps), (want_tokens, want_lps) in zip(runs["cuda"], runs["cpu"]):
        assert tokens == want_tokens
        assert lps == [None if v is None else pytest.approx(v, abs=1e-4) for v in want_lps]


def test_bf16_logits_sample_as_their_float32_copy():
    """The engine hands the sampler the executor's logits as they are (bf16 on the cuda
    target): greedy rows take their argmax without a float32 copy, everything else converts.
    Tokens and logprobs must be those of the float32 copy, ties included."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 300, generator=g) * 4).to(torch.bfloat16)
    x[2, 17] = x[2, 250] = x[2].max() + 1           # a tie: the lowest id wins either way
    plans = [[SamplingParams(temperature=0.0)] * 6,
             [SamplingParams(temperature=0.0, logprobs=3)] * 6,
             [SamplingParams(temperature=0.0, logit_bias={5: 100.0})] * 6,
             [SamplingParams(temperature=0.7, seed=i) for i in range(6)]]
    for params in plans:
        runs = []
        for logits in (x, x.float()):
            states = [SequenceSamplingState(p, [1, 2]) for p in params]
            tokens, lps = Sampler().sample(logits, states)
            runs.append((tokens, [None if lp is None else (lp.logprob, lp.top)
                                  for lp in lps]))
        assert runs[0] == runs[1]
    assert Sampler().sample(x, [SequenceSamplingState(SamplingParams(temperature=0.0), [])
                                for _ in range(6)])[0][2] == 17


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampling_of_an_overlapped_step_never_waits_for_the_gpu():
    """sample_tokens on CUDA logits is what the engine's overlapped decoding calls right after
    launching a step: a wait for the GPU there (a copy from pageable memory, a list index, a
    read of a device value) would stall the host until that step ends and undo the overlap.
    torch's sync debug mode raises on any such wait. top_p without top_k, the OpenAI API's
    only nucleus knob, sorts the whole row on a GPU rather than read back whether the best
    256 logits decide the cut."""
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(4, 128256, device="cuda", generator=g).to(torch.bfloat16)
    cases = [[SamplingParams(temperature=0.0)] * 4,
             [SamplingParams(temperature=0.8, seed=i) for i in range(4)],
             [SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=i) for i in range(4)],
             [SamplingParams(temperature=1.0, top_p=0.95, seed=i) for i in range(4)],
             [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_p=0.5,
                                                              seed=2)] * 2,
             [SamplingParams(temperature=0.0),
              SamplingParams(temperature=0.7, top_k=20, min_p=0.05, seed=1)] * 2,
             [SamplingParams(temperature=0.0, logit_bias={5: 2.0})] * 4]
    sampler = Sampler()
    for params in cases:
        states = [SequenceSamplingState(p, [1, 2]) for p in params]
        sampler.sample_tokens(logits, states)       # first calls allocate (pinned blocks)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            sampler.sample_tokens(logits, states)
        finally:
            torch.cuda.set_sync_debug_mode("default")
