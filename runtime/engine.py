"""The engine: requests in, tokens out, many sequences at once.

Each `step()` asks the scheduler for a batch (decodes and prefill chunks
together), lays it out as one `StepInputs`, runs the executor once, samples
the sequences whose tokens are all computed, and returns what each request
got. See runtime/engine_api.py for the types and runtime/scheduler.py for the
batching policy.

Overlapped decoding: on an executor that takes token ids still on the device (the cuda
target's), a pure-decode step does not wait for its sampled tokens. They stay on the
device as the next step's inputs, and the next `step()` launches that follow-up step
before it reads them back, so the host's work of a step (reading tokens, stop rules,
detokenizing, laying out the next batch) runs while the GPU computes the next one. A
sequence that stops costs one discarded row; penalties, min_tokens, logprobs, a request
the scheduler could admit now, or a full KV cache end the overlap (their next step needs
the host's tokens, or the scheduler).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rustinfer.compiler.step_inputs import StepInputs, int64_tensor, padded_table, to_device

from .block_manager import BlockManager, NoFreeBlocks
from .engine_api import EngineStats, RequestError, RequestEvent
from .json_constraint import Automaton
from .json_masks import JsonConstraint, JsonTokenIndex
from .sampling import Sampler, SamplingParams, SequenceSamplingState
from .scheduler import ScheduledSeq, Scheduler
from .sequence import Sequence, Status
from .stop import StopChecker
from .token_bytes import token_bytes


@dataclass
class _InFlight:
    """A launched decode step whose sampled tokens the host has not read yet."""
    seqs: list[Sequence]
    tokens: torch.Tensor      # [len(seqs)] int64 where the logits are: the next step's inputs
    host: torch.Tensor        # their copy on the host, valid once `ready` has completed
    ready: object             # a torch.cuda.Event, or None (the copy is already done)
    follow_up: bool           # launched from device tokens: its seqs' num_computed lag by one


class Engine:
    def __init__(self, executor, tokenizer, *, max_model_len: int, vocab_size: int,
                 max_num_seqs: int = 16, max_num_batched_tokens: int = 512,
                 enable_prefix_caching: bool = True, model_name: str = "model",
                 overlap_decode: bool = True):
        self.executor, self.tokenizer = executor, tokenizer
        self.block_size = executor.block_size
        self.blocks = BlockManager(executor.num_blocks, self.block_size, enable_prefix_caching)
        # A sequence must fit in the cache on its own, or preemption could never make room.
        self.max_model_len = min(max_model_len, executor.num_blocks * self.block_size)
        self.vocab_size = vocab_size
        self.model_name = model_name
        step_tokens = min(max_num_batched_tokens, executor.max_tokens)
        self.scheduler = Scheduler(self.blocks, max_num_seqs, step_tokens)
        self.sampler = Sampler()
        self.requests: dict[str, list[Sequence]] = {}
        self.pending_events: list[RequestEvent] = []
        self.stats_ = EngineStats(kv_blocks_total=executor.num_blocks)
        self.overlap_decode = overlap_decode and getattr(executor, "accepts_device_tokens", False)
        self._json: JsonTokenIndex | None = None
        self._automata: dict[str, Automaton] = {}
        self._inflight: _InFlight | None = None
        self.num_overlapped_steps = 0         # follow-up steps launched before a read-back

    @classmethod
    def from_model(cls, model=None, target: str = "auto", *, max_num_seqs: int = 16,
                   max_num_batched_tokens: int = 512, **kw) -> "Engine":
        from .llm import LLM

        return LLM(model=model, target=target, max_num_seqs=max_num_seqs,
                   max_num_batched_tokens=max_num_batched_tokens, **kw).engine

    # -- requests --------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams) -> None:
        if request_id in self.requests:
            raise RequestError(f"request id '{request_id}' is already running", "duplicate_id")
        ids = [int(t) for t in prompt_token_ids]
        if not ids:
            raise RequestError("the prompt is empty: give at least one token", param="prompt")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}",
                               param="prompt")
        for name, tokens in (("logit_bias", params.logit_bias), ("stop_token_ids",
                                                                params.stop_token_ids)):
            bad = [t for t in tokens if not 0 <= int(t) < self.vocab_size]
            if bad:
                raise RequestError(f"{name} has token ids outside [0, {self.vocab_size}): "
                                   f"{bad[:5]}", param=name)
        if len(ids) + 1 > self.max_model_len:
            raise RequestError(f"this model's maximum context length is {self.max_model_len} "
                               f"tokens; the prompt has {len(ids)} tokens: shorten it",
                               "context_length_exceeded", param="messages")
        eos = list(self.tokenizer.eos_token_ids) if self.tokenizer is not None else []
        if params.json_mode and not eos:
            raise RequestError("response_format json_object / json_schema needs the model's tokenizer and its "
                               "end-of-generation token; this model has none", "response_format")
        seqs = []
        for index in range(params.n):
            seq = Sequence(request_id, index, list(ids), params)
            seq.sampling = SequenceSamplingState(params, seq.prompt_token_ids, seed_offset=index,
                                                 eos_token_ids=eos)
            if params.json_mode:
                seq.sampling.constraint = JsonConstraint(self._json_index(),
                                                         self._automaton(params.schema))
            seq.stop = StopChecker(self.tokenizer, params)
            if index > 0:
                seq.waits_for = seqs[0]             # reuse the first choice's cached prompt
                seq.prompt_logprobs_done = True
            seqs.append(seq)
            self.scheduler.add(seq)
        self.requests[request_id] = seqs
        self.stats_.prompt_tokens_total += len(ids)

    def _json_index(self) -> JsonTokenIndex:
        """The vocabulary's JSON-mode index, built on the first JSON request (~1 s for 128k
        tokens) and kept: its masks per automaton state are shared by all requests."""
        if self._json is None:
            self._json = JsonTokenIndex(token_bytes(self.tokenizer), self.vocab_size,
                                        self.tokenizer.eos_token_ids)
        return self._json

    def _automaton(self, schema) -> Automaton:
        """One automaton per schema (its masks are cached in the index under the schema)."""
        if schema.key not in self._automata:
            if len(self._automata) >= 64:
                self._automata.pop(next(iter(self._automata)))
            self._automata[schema.key] = Automaton(schema)
        return self._automata[schema.key]

    def abort(self, request_id: str) -> None:
        for seq in self.requests.pop(request_id, []):
            if seq.status != Status.FINISHED:
                self.scheduler.finish(seq)
                self.pending_events.append(RequestEvent(
                    request_id, seq.index, finished=True, finish_reason="abort",
                    num_prompt_tokens=len(seq.prompt_token_ids),
                    num_generated_tokens=len(seq.output_token_ids)))

    def has_unfinished(self) -> bool:
        return (self.scheduler.has_unfinished() or bool(self.pending_events)
                or self._inflight is not None)

    # -- one iteration ---------------------------------------------------------------
    def step(self) -> list[RequestEvent]:
        events, self.pending_events = self.pending_events, []
        if self._inflight is not None:
            prev = self._inflight
            self._inflight = self._launch_follow_up(prev)   # queued behind prev on the GPU
            return events + self._complete(prev)
        batch = self.scheduler.schedule()
        if not batch:
            return events
        step, sample_rows, prompt_rows = self._layout(batch)
        # A GPU executor keeps the logits on the device: sampling there reads back only the
        # tokens (and the logprobs asked for), where copying [rows, vocab] float32 to the
        # host and sampling on the CPU would cost more than the step itself.
        forward = getattr(self.executor, "forward_device", None) or self.executor.forward
        logits = forward(step)
        now = time.perf_counter()
        for item in batch:
            seq = item.seq
            seq.num_computed += item.num_tokens
            seq.blocks_checked = self.blocks.register_computed(
                seq.block_table, seq.all_token_ids, seq.num_computed, seq.block_hashes,
                seq.blocks_checked, seq.blocks_pending)
        self._prompt_logprobs(batch, logits, prompt_rows)
        to_sample = [s.seq for s in batch if s.seq.num_uncomputed == 0]
        if to_sample:
            idx = [sample_rows[id(seq)] for seq in to_sample]
            # Usually every row, in order (decodes): sample the logits as they are.
            rows = logits if idx == list(range(logits.shape[0])) else logits[idx]
            if self._may_overlap(batch, to_sample):
                self._inflight = self._sample_in_flight(to_sample, rows, follow_up=False)
                return events
            tokens, logprobs = self.sampler.sample(rows, [s.sampling for s in to_sample])
            for seq, token, lp in zip(to_sample, tokens, logprobs):
                events.append(self._advance(seq, token, lp, now))
        return events

    # -- overlapped decoding ------------------------------------------------------------
    def _may_overlap(self, batch: list[ScheduledSeq], to_sample: list[Sequence]) -> bool:
        """Whether the next step can be these sequences' decode, launched before their tokens
        are read: no other sequence runs and no queued one could start (while every seat or
        block is taken, admission waits one step at most), and their sampling needs no token
        the host has not seen yet."""
        return (self.overlap_decode and len(to_sample) == len(batch)
                and not self.scheduler.can_admit() and len(batch) == len(self.scheduler.running)
                and all(self._samples_without_host(s) for s in to_sample)
                and any(not self._last_by_length(s) for s in to_sample))

    def _last_by_length(self, seq: Sequence) -> bool:
        """Whether the token seq is about to receive (still on the device) is its last."""
        return (len(seq.output_token_ids) + 1 >= seq.params.max_tokens
                or seq.num_tokens + 1 >= self.max_model_len)

    @staticmethod
    def _samples_without_host(seq: Sequence) -> bool:
        # Penalties count the output, min_tokens bans EOS by its length and JSON mode's mask
        # follows the output: all would miss the token still on the device. Logprobs are read
        # back with the token (not here).
        p = seq.params
        return (p.logprobs is None and not p.json_mode and p.repetition_penalty == 1.0
                and p.presence_penalty == 0 and p.frequency_penalty == 0
                and len(seq.output_token_ids) >= p.min_tokens)

    def _sample_in_flight(self, seqs: list[Sequence], logits, follow_up: bool) -> _InFlight:
        tokens = self.sampler.sample_tokens(logits, [s.sampling for s in seqs])
        if tokens.device.type == "cpu":
            return _InFlight(seqs, tokens, tokens, None, follow_up)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return _InFlight(seqs, tokens, host, ready, follow_up)

    def _launch_follow_up(self, prev: _InFlight) -> _InFlight | None:
        """Launch the decode step that consumes prev's tokens straight from the device; None
        (nothing launched) when the host must see them first."""
        if not self.overlap_decode or self.scheduler.can_admit():
            return None
        running = {id(s) for s in self.scheduler.running}
        if not running <= {id(s) for s in prev.seqs}:
            return None                       # a sequence outside prev needs the scheduler
        # Leave out the rows whose pending token is their last by length (no wasted row).
        keep = [i for i, s in enumerate(prev.seqs)
                if id(s) in running and not self._last_by_length(s)]
        seqs = [prev.seqs[i] for i in keep]
        if not seqs or not all(self._samples_without_host(s) for s in seqs):
            return None
        bs = self.block_size
        positions = [s.num_tokens for s in seqs]      # where each pending token goes
        try:
            for seq, p in zip(seqs, positions):
                self.blocks.ensure_capacity(seq.block_table, p + 1)
        except NoFreeBlocks:
            return None                       # the scheduler will preempt, after the read-back
        tokens = prev.tokens if len(keep) == len(prev.seqs) else \
            prev.tokens[to_device(keep, prev.tokens.device)]
        tables = [s.block_table for s in seqs]
        step = StepInputs(
            token_ids=tokens, positions=int64_tensor(positions),
            query_start=list(range(len(seqs) + 1)), context_lens=[p + 1 for p in positions],
            block_tables=[list(t) for t in tables],
            slot_mapping=int64_tensor([t[p // bs] * bs + p % bs
                                       for t, p in zip(tables, positions)]),
            block_size=bs, logit_rows=int64_tensor(range(len(seqs))),
            block_table_tensor=padded_table(tables))
        logits = self.executor.forward_device(step)
        self.num_overlapped_steps += 1
        return self._sample_in_flight(seqs, logits, follow_up=True)

    def _complete(self, prev: _InFlight) -> list[RequestEvent]:
        """Read prev's tokens back and apply them, as a synchronous step would have."""
        if prev.ready is not None:
            prev.ready.synchronize()              # prev's tokens only, not the step behind it
        tokens = prev.host.tolist()
        now = time.perf_counter()
        events = []
        for seq, token in zip(prev.seqs, tokens):
            if seq.status != Status.RUNNING:
                continue                          # stopped or aborted meanwhile: a spare row
            if prev.follow_up:                    # its input token's k/v are in the cache now
                seq.num_computed += 1
                seq.blocks_checked = self.blocks.register_computed(
                    seq.block_table, seq.all_token_ids, seq.num_computed, seq.block_hashes,
                    seq.blocks_checked, seq.blocks_pending)
            events.append(self._advance(seq, token, None, now))
        return events

    def _layout(self, batch: list[ScheduledSeq]):
        """One StepInputs for the batch; which logits row each sequence samples from."""
        tokens, positions, slots, starts, ctx, tables, rows = [], [], [], [0], [], [], []
        sample_rows, prompt_rows = {}, {}
        bs = self.block_size
        for item in batch:
            seq, n = item.seq, item.num_tokens
            start = seq.num_computed
            tokens += seq.all_token_ids[start:start + n]
            pos = range(start, start + n)
            positions += pos
            slots += [seq.block_table[p // bs] * bs + p % bs for p in pos]
            row0 = starts[-1]
            starts.append(row0 + n)
            ctx.append(start + n)
            tables.append(seq.block_table)
            wants_prompt_lp = (seq.params.prompt_logprobs is not None
                               and not seq.prompt_logprobs_done)
            if wants_prompt_lp:
                prompt_rows[id(seq)] = (len(rows), start, n)
                rows += range(row0, row0 + n)
            if start + n == seq.num_tokens:
                if not (wants_prompt_lp and rows and rows[-1] == row0 + n - 1):
                    rows.append(row0 + n - 1)
                sample_rows[id(seq)] = len(rows) - 1
        step = StepInputs(
            token_ids=int64_tensor(tokens), positions=int64_tensor(positions),
            query_start=starts, context_lens=ctx, block_tables=[list(t) for t in tables],
            slot_mapping=int64_tensor(slots), block_size=bs, logit_rows=int64_tensor(rows),
            block_table_tensor=padded_table(tables))
        return step, sample_rows, prompt_rows

    def _prompt_logprobs(self, batch, logits, prompt_rows) -> None:
        """Score prompt tokens (echo / prompt_logprobs): the row at position p predicts p + 1."""
        for item in batch:
            seq = item.seq
            if id(seq) not in prompt_rows:
                continue
            first_row, start, n = prompt_rows[id(seq)]
            prompt = seq.prompt_token_ids
            if start == 0:
                seq.pending_prompt_logprobs.append(None)     # nothing predicts the first token
            m = min(start + n, len(prompt) - 1) - start       # rows here that predict a prompt token
            if m > 0:
                scored = self.sampler.prompt_logprobs(logits[first_row:first_row + m].float(),
                                                      prompt[start:start + m + 1],
                                                      seq.params.prompt_logprobs)
                seq.pending_prompt_logprobs += scored[1:]
            if start + n >= len(prompt):
                seq.prompt_logprobs_done = True

    def _advance(self, seq: Sequence, token: int, logprob, now: float) -> RequestEvent:
        """Append a sampled token, apply the stop rules, make the request's event."""
        seq.append_token(token)
        seq.sampling.append(token)
        self.stats_.generation_tokens_total += 1
        if seq.first_token_time is None:
            seq.first_token_time = now
        else:
            seq.inter_token.append(now - seq.last_token_time)
        seq.last_token_time = now
        text, reason = seq.stop.push(token)
        if reason is None and (len(seq.output_token_ids) >= seq.params.max_tokens
                               or seq.num_tokens >= self.max_model_len):
            reason = "length"
            text += seq.stop.flush()
        event = RequestEvent(seq.request_id, seq.index, [token], text,
                             logprobs=[logprob] if logprob is not None else None,
                             num_prompt_tokens=len(seq.prompt_token_ids),
                             num_generated_tokens=len(seq.output_token_ids))
        if seq.pending_prompt_logprobs and seq.params.prompt_logprobs is not None:
            event.prompt_logprobs, seq.pending_prompt_logprobs = seq.pending_prompt_logprobs, []
        if reason is not None:
            event.finished, event.finish_reason = True, reason
            event.stop_reason = seq.stop.stop_reason
            self._finish(seq)
        return event

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        st = self.stats_
        st.requests_finished_total += 1
        st.ttft_seconds.append(seq.first_token_time - seq.arrival)
        st.inter_token_seconds += seq.inter_token
        st.e2e_seconds.append(seq.last_token_time - seq.arrival)
        seqs = self.requests.get(seq.request_id, [])
        if all(s.status == Status.FINISHED for s in seqs):
            self.requests.pop(seq.request_id, None)

    # -- stats ---------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """Counters and gauges now; latency samples since the previous call."""
        st = self.stats_
        out = EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            num_preempted_total=self.scheduler.num_preempted,
            kv_blocks_used=self.blocks.num_used, kv_blocks_total=self.blocks.num_blocks,
            prefix_cache_queries=self.blocks.queries, prefix_cache_hits=self.blocks.hits,
            prompt_tokens_total=st.prompt_tokens_total,
            generation_tokens_total=st.generation_tokens_total,
            requests_finished_total=st.requests_finished_total,
            ttft_seconds=st.ttft_seconds, inter_token_seconds=st.inter_token_seconds,
            e2e_seconds=st.e2e_seconds)
        st.ttft_seconds, st.inter_token_seconds, st.e2e_seconds = [], [], []
        return out
