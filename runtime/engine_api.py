"""The engine's interface: what goes in (requests) and what comes out (events).

The engine (runtime/engine.py) and everything that drives it — `LLM.generate`,
the server's engine process — speak only these types. They are plain
dataclasses of ints, floats, strings and lists, so the server can send them
over MessagePack as `dataclasses.asdict(...)`.

    engine.add_request(request_id, prompt_token_ids, params)   # may raise RequestError
    events = engine.step()          # list[RequestEvent]: new tokens / text / finish per request
    engine.abort(request_id)        # frees its KV blocks; emits a finish event "abort"
    engine.has_unfinished()         # anything running, waiting, or a step still in flight
    engine.stats()                  # EngineStats

With overlapped decoding (the cuda target) a decode step's tokens come back from the
next `step()` call, which has launched the step after it: drive the engine until
has_unfinished() is false, as LLM.generate and the server do.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class RequestError(ValueError):
    """A request the engine refuses before queueing it (e.g. a prompt longer than the
    context). `code` follows OpenAI's error codes (e.g. "context_length_exceeded")."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)   # (token_id, logprob), best first


@dataclass
class RequestEvent:
    """What one request got from one engine step (for n > 1: one event per choice)."""
    request_id: str
    index: int = 0                       # which of the request's n choices
    new_token_ids: list[int] = field(default_factory=list)
    new_text: str = ""                   # detokenized, stop strings removed, never half a UTF-8 char
    logprobs: list[TokenLogprob] | None = None          # one per new token when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first event only, when asked for
    finished: bool = False
    finish_reason: str | None = None     # "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None  # the stop string or token id that matched
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0        # so far, this choice
    error: str | None = None


@dataclass
class EngineStats:
    num_running: int = 0
    num_waiting: int = 0
    num_preempted_total: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    prefix_cache_queries: int = 0        # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0           # of those, tokens found cached
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_finished_total: int = 0
    # per finished request, since the last stats() call (for histograms)
    ttft_seconds: list[float] = field(default_factory=list)
    inter_token_seconds: list[float] = field(default_factory=list)
    e2e_seconds: list[float] = field(default_factory=list)

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
