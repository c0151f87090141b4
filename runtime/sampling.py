"""Sampling parameters and the batched sampler the engine calls once per step.

    state = SequenceSamplingState(params, prompt_token_ids, eos_token_ids, seed_offset=choice)
    tokens, logprobs = Sampler().sample(logits, [state, ...])   # logits [B, V], one row per state
    prompt_lps = Sampler().prompt_logprobs(logits, prompt_token_ids, k)

Per row, in vLLM's order: logit_bias; min_tokens (EOS and stop_token_ids banned until
min_tokens tokens are out); repetition penalty (HF: prompt + output); presence and frequency
penalties (OpenAI: output); JSON mode's mask (response_format json_object: only tokens that
keep the output a JSON object). Logprobs are the log-softmax of these *processed* logits, before
temperature and filters (as OpenAI: the model's distribution after penalties, whatever the
temperature). Then greedy (temperature 0: argmax, ties to the lowest id), or temperature,
top_k, top_p, min_p (HF's order) and one draw from the sequence's own random stream.
"""
from __future__ import annotations

import numpy as np
import torch

from rustinfer.compiler.step_inputs import to_device

from .engine_api import TokenLogprob
# the per-request options live in sampling_params.py; imported from here as before
from .sampling_params import MAX_LOGPROBS, SamplingParams, SamplingParamsError  # noqa: F401


class SequenceSamplingState:
    """One sequence's params, the tokens its penalties count, and its own random stream.

    The engine calls `append(token)` for each token it keeps (`sample` does not append), so
    min_tokens and the penalties see it next step. Keep the object across preemption: the stream
    goes on where it stopped, so recomputing a sequence's KV does not change its tokens."""

    def __init__(self, params: SamplingParams, prompt_token_ids, eos_token_ids=(),
                 seed_offset: int = 0):
        self.params = params
        self.prompt_token_ids = [int(t) for t in prompt_token_ids]
        self.output_token_ids: list[int] = []
        eos = () if params.ignore_eos else eos_token_ids
        # Tokens that would end the sequence; banned while fewer than min_tokens are out.
        self.min_tokens_banned = sorted({int(t) for t in (*params.stop_token_ids, *eos)})
        # What the penalties read, kept current by append(): the distinct ids of prompt and
        # output (prompt first) and how often the output holds each. A step then reads two
        # arrays instead of recounting the whole output (O(output) per step before: 8.7 ms
        # of host time a step at 32 sequences x 1000 tokens with a frequency penalty).
        seen = list(dict.fromkeys(self.prompt_token_ids))
        self._slot = {t: i for i, t in enumerate(seen)}
        self._seen = np.array(seen + [0] * max(16, len(seen)), np.int64)
        self._counts = np.zeros(len(self._seen), np.int64)
        self._num_seen = len(seen)
        # Its own CPU generator: draws depend only on this sequence (not its batch nor the logits'
        # device) and advance only when it samples. Offset 0 keeps the plain seed; the odd
        # multiplier keeps (seed 1, choice 1) apart from (seed 2, choice 0).
        self.constraint = None          # a JsonConstraint in JSON mode (set by the engine)
        self.generator = torch.Generator()
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed((params.seed + seed_offset * 0x9E3779B97F4A7C15) % 2**64)

    def append(self, token: int) -> None:
        """Record a kept token (the only way to add one: the penalties' counts follow it)."""
        token = int(token)
        self.output_token_ids.append(token)
        if self.constraint is not None:
            self.constraint.advance(token)
        i = self._slot.get(token)
        if i is None:
            i = self._slot[token] = self._num_seen
            if i == len(self._seen):
                self._seen = np.concatenate([self._seen, np.zeros_like(self._seen)])
                self._counts = np.concatenate([self._counts, np.zeros_like(self._counts)])
            self._seen[i] = token
            self._num_seen += 1
        self._counts[i] += 1


_LOGPROB_FLOOR = -9999.0   # stands in for -inf (a banned token): JSON has no infinity
_HEAD = 256                # top_k / top_p look at this many best tokens before any full sort
_CHUNKED_ARGMAX = 8192     # from this vocabulary size a GPU's greedy argmax uses two passes
_MIN_TEMP = 1e-5           # below it x / T can overflow to inf; the distribution is argmax anyway


class Sampler:
    """Stateless apart from the old one-sequence form `Sampler(params)(logits_row) -> int`."""

    def __init__(self, params: SamplingParams | None = None):
        self._single = SequenceSamplingState(params, []) if params is not None else None

    def __call__(self, logits_row: torch.Tensor) -> int:
        if self._single is None:
            raise TypeError("Sampler() without params: call sample(logits, states)")
        token = self.sample(logits_row.reshape(1, -1), [self._single])[0][0]
        self._single.append(token)
        return token

    def sample(self, logits: torch.Tensor, states: list[SequenceSamplingState]
               ) -> tuple[list[int], list[TokenLogprob | None]]:
        """One token per row and its logprobs where asked for; the caller appends the tokens."""
        x, chosen = self._choose(logits, states)
        tokens = chosen.tolist()
        logprobs: list[TokenLogprob | None] = [None] * len(states)
        want = [i for i, s in enumerate(states) if s.params.logprobs is not None]
        if want:
            entries = _logprob_entries(torch.log_softmax(x[want].float(), -1),
                                       [tokens[i] for i in want],
                                       [states[i].params.logprobs for i in want])
            for i, entry in zip(want, entries):
                logprobs[i] = entry
        return tokens, logprobs

    def sample_tokens(self, logits: torch.Tensor, states: list[SequenceSamplingState]
                      ) -> torch.Tensor:
        """The tokens as an int64 tensor where the logits are, without waiting for them (no
        logprobs): the engine feeds them to the next step before reading them back."""
        return self._choose(logits, states)[1]

    def _choose(self, logits: torch.Tensor, states: list[SequenceSamplingState]):
        if logits.dim() != 2 or logits.shape[0] != len(states):
            raise ValueError(f"logits {tuple(logits.shape)} must be [len(states)={len(states)}, V]")
        greedy = [i for i, s in enumerate(states) if s.params.greedy]
        drawn = [i for i, s in enumerate(states) if not s.params.greedy]
        if not drawn and not any(self._edits(states, logits.shape[1])) \
                and all(s.constraint is None for s in states):
            # the argmax of the logits as they are: a float32 copy of [rows, vocab] bf16
            # logits would find the same first maximum (the cast is exact), a kernel later
            return logits, greedy_argmax(logits)
        x = self.process(logits, states)
        if not drawn:                               # all greedy: no row gathers (the common case)
            chosen = greedy_argmax(x)               # the first maximum: ties go to the lowest id
        elif not greedy:                            # all drawn: no row gathers either
            chosen = _draw(x, states)
        else:
            # index tensors, not lists: a list index is copied to the GPU with a wait
            g, d = _ids(greedy, x.device), _ids(drawn, x.device)
            chosen = torch.empty(len(states), dtype=torch.long, device=x.device)
            chosen[g] = greedy_argmax(x[g])
            chosen[d] = _draw(x[d], [states[i] for i in drawn])
        return x, chosen

    def process(self, logits: torch.Tensor, states: list[SequenceSamplingState]) -> torch.Tensor:
        """The logits in float32 after logit_bias, min_tokens and the penalties: a copy when
        any applies (or the dtype differs), else `logits` itself; callers must not write
        into the result."""
        V, dev = logits.shape[1], logits.device
        bias, banned, penalized = self._edits(states, V)
        constrained = [i for i, s in enumerate(states) if s.constraint is not None]
        if not (bias or banned or penalized or constrained) and logits.dtype == torch.float32:
            return logits           # nothing to change: skip a copy of [rows, vocab]
        x = logits.to(torch.float32, copy=True)
        if bias:
            rows, cols, vals = zip(*bias)
            x.index_put_((_ids(rows, dev), _ids(cols, dev)),
                         to_device(vals, dev, torch.float32),
                         accumulate=True)
        if banned:
            rows, cols = zip(*banned)
            x[_ids(rows, dev), _ids(cols, dev)] = float("-inf")
        _penalize(x, penalized, [states[i] for i in penalized])
        for i in constrained:
            _constrain(x[i], states[i].constraint.allowed())
        return x

    @staticmethod
    def _edits(states: list[SequenceSamplingState], V: int):
        """What `process` changes: (row, token, bias), (row, banned token), penalized rows."""
        # Ids outside the vocabulary are skipped here; the engine rejects them at add_request.
        bias = [(i, t, b) for i, s in enumerate(states) for t, b in s.params.logit_bias.items()
                if 0 <= t < V]
        banned = [(i, t) for i, s in enumerate(states) if len(s.output_token_ids) <
                  s.params.min_tokens for t in s.min_tokens_banned if 0 <= t < V]
        penalized = [i for i, s in enumerate(states) if s.params.repetition_penalty != 1.0
                     or s.params.presence_penalty != 0 or s.params.frequency_penalty != 0]
        return bias, banned, penalized

    def prompt_logprobs(self, logits: torch.Tensor, prompt_token_ids: list[int], k: int | None,
                        start: int = 0) -> list[TokenLogprob | None]:
        """Logprobs of the prompt's tokens under the raw logits (no penalties or temperature), for
        echo scoring. logits[j] is the output at position start + j: it predicts token start+j+1
        (the last prompt position's output is skipped). None first when start == 0 (OpenAI: no
        logprob for token 0), so lists for successive prefill chunks concatenate to the prompt's."""
        out: list[TokenLogprob | None] = [None] if start == 0 else []
        n = min(logits.shape[0], len(prompt_token_ids) - 1 - start)
        if n <= 0:
            return out
        targets = [int(t) for t in prompt_token_ids[start + 1:start + 1 + n]]
        return out + _logprob_entries(torch.log_softmax(logits[:n].float(), -1), targets,
                                      [k or 0] * n)


def greedy_argmax(x: torch.Tensor) -> torch.Tensor:
    """Row-wise index of the first maximum: the engine's greedy pick (the GPU benchmarks call
    it too, to time what the engine runs). On a CPU through numpy: torch's argmax took
    112 us for one row of 49152 logits with one thread on the 2-core CI machine, numpy's
    4 us (a decode step of SmolLM2 int4 is ~8 ms, so this was ~1.4% of it per row)."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.from_numpy(x.numpy().argmax(-1))
    if x.device.type == "cuda" and x.shape[-1] >= _CHUNKED_ARGMAX and x.stride(-1) == 1:
        # torch reduces a row in one block of threads: 37 us for 128k logits on an H200
        from rustinfer.kernels.triton.argmax import argmax_rows
        return argmax_rows(x)
    return x.argmax(-1)


def _ids(values, device) -> torch.Tensor:
    return to_device(values, device)


def _penalize(x: torch.Tensor, rows: list[int], states: list[SequenceSamplingState]) -> None:
    """In place: repetition (HF: prompt + output), presence and frequency (OpenAI: output).
    Only seen tokens change: each state keeps its distinct ids and output counts (see
    SequenceSamplingState.append), so this gathers and scatters flat indices j * V + token
    (j: index in `states`): no dense [B, V] pass (~5 ms a row on CPU at V = 150k), no
    per-token Python, and nothing that grows with the output beyond its distinct ids."""
    if not rows:
        return
    V = x.shape[1]
    ids, cnt = [], []
    for s in states:
        k = s._num_seen
        seen, counts = s._seen[:k], s._counts[:k]
        if s.params.repetition_penalty == 1.0:   # then a token only the prompt holds keeps
            out = counts > 0
            seen, counts = seen[out], counts[out]
        ids.append(seen)
        cnt.append(counts)
    j = np.repeat(np.arange(len(states)), [len(t) for t in ids])
    ids, cnt = np.concatenate(ids), np.concatenate(cnt).astype(np.float32)
    coef = np.array([[s.params.repetition_penalty, s.params.presence_penalty,
                      s.params.frequency_penalty] for s in states], np.float32)[j]
    if ids.size and ids.max() >= V:              # ids outside the vocabulary change nothing
        inside = ids < V
        ids, j, cnt, coef = ids[inside], j[inside], cnt[inside], coef[inside]
    at = torch.from_numpy(np.asarray(rows, np.int64)[j] * V + ids).to(x.device)  # x flattened
    rep, pres, freq = torch.from_numpy(np.ascontiguousarray(coef.T)).to(x.device)
    cnt = torch.from_numpy(cnt).to(x.device)
    flat = x.view(-1)                                # x is the contiguous copy `process` made
    v = flat[at]
    # Divide positive logits, multiply negative ones: either way the token gets less likely.
    v = torch.where(v > 0, v / rep, v * rep)
    flat[at] = v - freq * cnt - pres * (cnt > 0)


def _constrain(row: torch.Tensor, allowed: np.ndarray) -> None:
    """-inf on every token JSON mode does not allow here. When that leaves nothing (the
    object is complete but min_tokens still bans the end of generation), the allowed
    tokens keep their logits: the JSON wins over min_tokens."""
    keep = torch.from_numpy(allowed[:row.shape[0]]).to(row.device)
    if row.shape[0] > keep.shape[0]:                 # logits wider than the vocabulary
        keep = torch.cat([keep, keep.new_zeros(row.shape[0] - keep.shape[0])])
    row.masked_fill_(~keep, float("-inf"))
    if row.max() == float("-inf"):
        row.masked_fill_(keep, 0.0)


def _draw(x: torch.Tensor, states: list[SequenceSamplingState]) -> torch.Tensor:
    """One token per row from softmax(x / temperature), filtered by top_k, top_p and min_p."""
    V, dev = x.shape[1], x.device
    x = x / to_device([[max(s.params.temperature, _MIN_TEMP)] for s in states], dev,
                      torch.float32)
    x = x.masked_fill(x < _keep_threshold(x, [s.params for s in states]), float("-inf"))
    # Inverse CDF in float64 with one uniform per row from the row's own stream: a token with
    # zero probability has an empty interval and is never picked.
    cdf = torch.exp((x - x.amax(-1, keepdim=True)).double()).cumsum(-1)
    u = torch.stack([torch.rand((), dtype=torch.float64, generator=s.generator) for s in states])
    target = to_device(u, dev, torch.float64)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).clamp_(max=V - 1)[:, 0]


def _keep_threshold(x: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """[S, 1]: the lowest logit each row keeps. top_k, top_p (on the top_k-renormalized
    distribution) and min_p each keep a best-first prefix, so thresholds combining by max;
    every token tied with the last one kept stays, whatever order a sort puts ties in."""
    (S, V), dev = x.shape, x.device
    thresh = torch.full((S, 1), float("-inf"), device=dev)
    k = [min(p.top_k, V) if p.top_k > 0 else V for p in params]
    need = [i for i, p in enumerate(params) if k[i] < V or p.top_p < 1.0]
    if need:
        kt = _ids([[k[i]] for i in need], dev)
        # top_p off: a bound no cumulative sum reaches, even with rounding.
        pt = to_device([[p if (p := params[i].top_p) < 1.0 else 2.0] for i in need], dev,
                       torch.float32)
        every = len(need) == S
        xs = x if every else x[_ids(need, dev)]
        # A full sort costs ~8 ms a row on CPU at V = 150k: decide from the best few first.
        # On a GPU, whether the head decided a top_p row would have to be read back, a wait
        # that stalls the engine's overlapped step: sort the whole row there (as vLLM does).
        # NOTE: the sort's GPU time at Llama 3's vocabulary is not yet measured.
        head = V if dev.type == "cuda" else min(V, max([_HEAD] + [k[i] for i in need
                                                                   if k[i] < V]))
        cut, decided = _cut(xs, kt, pt, head)
        # Rows whose top_k fits the head are decided by it, known here without reading the
        # device (a read waits for the GPU, and the engine's overlapped step with it).
        if not (head == V or all(k[i] <= head for i in need)) and not bool(decided.all()):
            rows = (~decided[:, 0]).nonzero()[:, 0]
            cut[rows] = _cut(xs[rows], kt[rows], pt[rows], V)[0]
        if every:
            thresh = cut
        else:
            thresh[_ids(need, dev)] = cut
    # min_p: keep p_i >= min_p * p_max, i.e. x_i >= x_max + log(min_p); log(0) = -inf: off.
    min_p = to_device([[p.min_p] for p in params], dev, torch.float32)
    return torch.maximum(thresh, x.amax(-1, keepdim=True) + torch.log(min_p))


def _cut(x, kt, pt, head):
    """top_k then top_p thresholds from the `head` best logits of each row, and whether the
    head decides the row: it holds every top_k survivor or the top_p cut falls inside it."""
    vals = (x.sort(-1, descending=True) if head == x.shape[1] else x.topk(head, -1)).values
    has_k = kt <= head                                               # every top_k fits the head
    kth = torch.where(has_k, vals.gather(1, kt.clamp(max=head) - 1), float("-inf"))
    lse = torch.logsumexp(x.masked_fill(x < kth, float("-inf")), -1, keepdim=True)
    probs = torch.exp(vals.masked_fill(vals < kth, float("-inf")) - lse)   # top_k-renormalized
    before = probs.cumsum(-1) - probs                                # mass of better tokens
    n_keep = (before < pt).sum(-1, keepdim=True)                     # >= 1 since top_p > 0
    thresh = torch.maximum(kth, vals.gather(1, n_keep - 1))
    return thresh, has_k | (n_keep < head) | (head == x.shape[1])


def _logprob_entries(lp: torch.Tensor, targets: list[int], ks: list[int]) -> list[TokenLogprob]:
    """Row r: targets[r]'s logprob and the ks[r] best (token, logprob), best first."""
    chosen = lp.gather(1, _ids(targets, lp.device)[:, None])[:, 0].tolist()
    kmax = min(max(ks), lp.shape[1])
    top_vals, top_ids = lp.topk(kmax, -1) if kmax else (lp[:, :0], lp[:, :0].long())
    return [TokenLogprob(t, max(c, _LOGPROB_FLOOR),
                         [(i, max(v, _LOGPROB_FLOOR)) for i, v in zip(ids[:k], vals[:k])])
            for t, c, ids, vals, k in zip(targets, chosen, top_ids.tolist(), top_vals.tolist(), ks)]
