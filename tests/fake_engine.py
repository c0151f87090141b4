"""A fake Engine with the real one's interface, for fast server tests.

It runs no model: each choice "generates" the tokens of a scripted reply, chosen
by markers in the prompt, one token per step, detokenized by the real tokenizer:

    (default)      "The quick brown fox jumps over the lazy dog. " repeated
    [[tool]]       a Llama 3.x JSON tool call for get_weather(city="Paris"), then EOS
    [[args]]       a small model's answer to a started tool call, by how the prompt ends
                   (see ARGS_SCRIPTS), as SmolLM2 does: after a forced key its value,
                   then the schema's "type" as another argument, the call's end and
                   some chatter; after `"parameters":` or `{"name": "` the JSON schema
                   copied from the tool list; then EOS
    [[prefer:X]]   with a logit_bias that allows some tokens only (a forced choice), pick
                   the allowed token whose text is in X (else the lowest allowed id)
    [[short]]      "Hi there!" then EOS
    [[fail]]       three tokens, then the choice fails (finish_reason "error")
    [[slow]]       each step of this request sleeps 50 ms (for disconnect tests)

It keeps the bookkeeping the server reads: running/waiting counts (max_num_seqs),
KV blocks in use (ceil(tokens / block_size) per running choice), token counters,
context-length checks in add_request, logprobs and prompt logprobs (fake values).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from rustinfer.runtime.engine_api import EngineStats, RequestError, RequestEvent, TokenLogprob
from rustinfer.runtime.sampling import SamplingParams

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog. "
TOOL_TEXT = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
_SCHEMA = '{"type": "object", "properties": {"city": {"type": "string"}}}'
# (how the prompt ends, what follows) for [[args]]
ARGS_SCRIPTS = [('{"name": "', 'Paris", "parameters": ' + _SCHEMA + '}'),
                ('"parameters":', ' ' + _SCHEMA + '}'),
                ('": "', 'Paris", "type": "string"}}\n\nThe weather in Paris is sunny and warm.'),
                ('":', ' "Paris"}}\n\nThe weather in Paris is sunny and warm today.'),
                ('', TOOL_TEXT)]


@dataclass
class _Choice:
    request_id: str
    index: int
    prompt: list[int]
    params: SamplingParams
    script: list[int]
    eos_after_script: bool
    fail_after: int | None
    slow: bool
    prefer: str = ""
    detok: object = None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    sent_prompt_logprobs: bool = False
    arrived: float = field(default_factory=time.monotonic)
    last_token: float | None = None


class FakeEngine:
    def __init__(self, tokenizer, model_name: str = "fake-model", max_model_len: int = 2048,
                 max_num_seqs: int = 16, block_size: int = 16, num_kv_blocks: int = 1024):
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.block_size = block_size
        self.num_kv_blocks = num_kv_blocks
        self.waiting: list[_Choice] = []
        self.running: list[_Choice] = []
        self.pending_aborts: list[_Choice] = []
        self.totals = EngineStats(kv_blocks_total=num_kv_blocks)
        self._eos = tokenizer.eos_token_ids[0]

    # ------------------------------------------------------------ interface ---
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams):
        if not prompt_token_ids:
            raise RequestError("the prompt is empty", "invalid_request", "prompt")
        if len(prompt_token_ids) >= self.max_model_len:
            raise RequestError(f"This model's maximum context length is {self.max_model_len} "
                               f"tokens; the prompt has {len(prompt_token_ids)}.",
                               "context_length_exceeded", "messages")
        vocab = self.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise RequestError("token id out of range", "invalid_request", "prompt")
        prompt_text = self.tokenizer.decode(prompt_token_ids)
        text, eos = DEFAULT_TEXT * 200, False
        if "[[args]]" in prompt_text:
            text = next(t for end, t in ARGS_SCRIPTS if prompt_text.endswith(end))
            eos = True
        elif "[[tool]]" in prompt_text:
            text, eos = TOOL_TEXT, True
        elif "[[short]]" in prompt_text:
            text, eos = "Hi there!", True
        script = self.tokenizer.encode(text, add_special_tokens=False)
        for i in range(params.n):
            self.waiting.append(_Choice(
                request_id, i, list(prompt_token_ids), params, script, eos,
                fail_after=3 if "[[fail]]" in prompt_text else None,
                slow="[[slow]]" in prompt_text, prefer=_marker(prompt_text, "prefer"),
                detok=self.tokenizer.new_detokenizer(prompt_token_ids, skip_special_tokens=True)))
        self.totals.prompt_tokens_total += len(prompt_token_ids)

    def abort(self, request_id: str) -> None:
        for queue in (self.waiting, self.running):
            for c in [c for c in queue if c.request_id == request_id]:
                queue.remove(c)
                self.pending_aborts.append(c)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.pending_aborts)

    def step(self) -> list[RequestEvent]:
        events = [RequestEvent(c.request_id, c.index, finished=True, finish_reason="abort",
                               num_prompt_tokens=len(c.prompt),
                               num_generated_tokens=len(c.generated))
                  for c in self.pending_aborts]
        self.pending_aborts.clear()
        while self.waiting and len(self.running) < self.max_num_seqs:
            self.running.append(self.waiting.pop(0))
        if any(c.slow for c in self.running):
            time.sleep(0.05)
        for c in list(self.running):
            events.append(self._advance(c))
        return events

    def stats(self) -> EngineStats:
        s = self.totals
        out = EngineStats(
            num_running=len(self.running), num_waiting=len(self.waiting),
            kv_blocks_used=sum(math.ceil((len(c.prompt) + len(c.generated)) / self.block_size)
                               for c in self.running),
            kv_blocks_total=self.num_kv_blocks, prompt_tokens_total=s.prompt_tokens_total,
            generation_tokens_total=s.generation_tokens_total,
            requests_finished_total=s.requests_finished_total,
            ttft_seconds=s.ttft_seconds, inter_token_seconds=s.inter_token_seconds,
            e2e_seconds=s.e2e_seconds)
        s.ttft_seconds, s.inter_token_seconds, s.e2e_seconds = [], [], []
        return out

    # -------------------------------------------------------------- helpers ---
    def _advance(self, c: _Choice) -> RequestEvent:
        p = c.params
        now = time.monotonic()
        ev = RequestEvent(c.request_id, c.index, num_prompt_tokens=len(c.prompt))
        if p.prompt_logprobs is not None and not c.sent_prompt_logprobs:
            c.sent_prompt_logprobs = True
            ev.prompt_logprobs = [None] + [self._logprob(t, p.prompt_logprobs) for t in c.prompt[1:]]
        if c.fail_after is not None and len(c.generated) >= c.fail_after:
            return self._finish(c, ev, "error", error="the fake engine failed on purpose")
        pos = len(c.generated)
        script_done = pos >= len(c.script)
        token = self._eos if (script_done and c.eos_after_script) else c.script[pos % len(c.script)]
        if script_done and c.eos_after_script and p.ignore_eos:
            token = c.script[pos % len(c.script)]
        forced = self._forced_choice(c)
        if forced is not None:
            token = forced
        c.generated.append(token)
        self.totals.generation_tokens_total += 1
        if c.last_token is None:
            self.totals.ttft_seconds.append(now - c.arrived)
        else:
            self.totals.inter_token_seconds.append(now - c.last_token)
        c.last_token = now
        ev.new_token_ids = [token]
        ev.num_generated_tokens = len(c.generated)
        if p.logprobs is not None:
            ev.logprobs = [self._logprob(token, p.logprobs)]
        if token == self._eos and not p.ignore_eos:
            return self._finish(c, ev, "stop", stop_reason=None)
        piece = c.detok.push(token)
        text = c.text + piece
        for s in p.stop:
            at = text.find(s)
            if at >= 0:
                ev.new_text = text[len(c.text):at]
                c.text = text[:at]
                return self._finish(c, ev, "stop", stop_reason=s)
        ev.new_text, c.text = piece, text
        if len(c.generated) >= p.max_tokens or len(c.prompt) + len(c.generated) >= self.max_model_len:
            ev.new_text += c.detok.flush()
            return self._finish(c, ev, "length")
        return ev

    def _finish(self, c, ev, reason, stop_reason=None, error=None) -> RequestEvent:
        self.running.remove(c)
        ev.finished, ev.finish_reason, ev.stop_reason, ev.error = True, reason, stop_reason, error
        ev.num_generated_tokens = len(c.generated)
        self.totals.requests_finished_total += 1
        self.totals.e2e_seconds.append(time.monotonic() - c.arrived)
        return ev

    def _forced_choice(self, c: _Choice) -> int | None:
        """A logit_bias of +100 on some tokens: no other token can be sampled."""
        bias = c.params.logit_bias
        if not bias or max(bias.values()) < 50:
            return None
        allowed = sorted(t for t, b in bias.items() if b == max(bias.values()))
        for t in allowed:
            piece = self.tokenizer.decode([t]).strip(' "_{}:,')
            if piece and piece in c.prefer:
                return t
        return allowed[0]

    @staticmethod
    def _logprob(token: int, k: int) -> TokenLogprob:
        # Deterministic, plausible values: the chosen token is the best one.
        top = [(token, -0.25)] + [((token + j) % 1000, -1.0 - j) for j in range(1, k)]
        return TokenLogprob(token, -0.25, top[:k])


def _marker(text: str, name: str) -> str:
    start = text.find(f"[[{name}:")
    if start < 0:
        return ""
    start += len(name) + 3
    return text[start:text.find("]]", start)]
