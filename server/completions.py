"""POST /v1/completions: text or token-id prompts (one or a batch), echo, logprobs.

Scoring, as lm-evaluation-harness does it: `echo: true, logprobs: k,
max_tokens: 0` returns the prompt's own tokens with their logprobs. The engine
always generates at least one token, so for max_tokens 0 we ask for one and
drop it. Choices are numbered prompt_index * n + choice, as OpenAI does.
"""
from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from . import sse
from .engine_client import EngineDead, ServerShuttingDown
from .errors import OpenAIError, invalid
from .middleware import read_body
from .logprobs import CompletionLogprobs
from .openai_types import (CompletionRequest, build_params, check_stream_options, context_error,
                           parse_body)
from .state import ServerState, decode, encode


def _tokenize(tokenizer, prompt) -> tuple[list[list[int]], list[str | None]]:
    """(token ids per prompt, original text per prompt or None for id prompts)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    ids, texts = [], []
    for p in prompt:
        if isinstance(p, str):
            ids.append(encode(tokenizer, p))
            texts.append(p)
        else:
            ids.append(list(p))
            texts.append(None)
    return ids, texts


def engine_failure(ev: dict | None, exc: Exception | None = None) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, ServerShuttingDown):
        return OpenAIError(503, f"the server is shutting down ({exc}); retry the request",
                           "service_unavailable", code="server_shutting_down")
    if exc is not None:
        return OpenAIError(503, f"the engine is not available ({exc})", "service_unavailable",
                           code="engine_unavailable")
    reason = ev.get("error") or f"the request ended with finish_reason {ev.get('finish_reason')!r}"
    return OpenAIError(500, f"generation failed: {reason}", code="engine_error")


async def create_completion(state: ServerState, request: Request):
    req = parse_body(await read_body(request), CompletionRequest)
    state.check_model(req.model)
    state.require_ready()
    check_stream_options(req)
    if req.suffix:
        raise invalid("suffix is not supported", "suffix")
    if req.best_of not in (None, req.n):
        raise invalid("best_of other than n is not supported", "best_of")
    slot = state.admit()
    streams = []
    try:
        prompts, texts = await state.run_blocking(_tokenize, state.tokenizer, req.prompt)
        vocab, limit = state.vocab_size, state.max_model_len
        for ids in prompts:
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise invalid(f"prompt token ids out of range [0, {vocab}): {bad[:5]}", "prompt")
            if len(ids) >= limit:
                raise context_error(len(ids), limit, "prompt")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        room = limit - max(len(p) for p in prompts)
        logprobs = req.logprobs
        params = build_params(req, max_tokens=max(1, min(max_tokens, room)), vocab_size=vocab,
                              logprobs=logprobs,
                              prompt_logprobs=logprobs if req.echo and logprobs is not None else None,
                              response_format=req.response_format)
        run = _Completion(state, req, prompts, texts, score_only=max_tokens == 0)
        streams = await state.submit(run.id, prompts, params)
    except BaseException:
        state.abort_soon(streams)
        slot.release()
        raise
    return await respond(state, request, req.stream, run, streams, slot)


async def respond(state: ServerState, request: Request, stream: bool, run, streams, slot):
    """The response for submitted requests: SSE or JSON. Whatever way it ends
    (done, failed, client gone), unfinished requests are aborted and the slot freed."""
    def cleanup():
        state.abort_soon(streams)
        slot.release()

    if stream:
        return sse.SSEResponse(run.stream(streams), cleanup=cleanup)
    try:
        body = await sse.until_disconnect(request.receive, run.collect(streams))
    finally:
        cleanup()
    # None: the client has gone; nobody will read this.
    return JSONResponse(body if body is not None else {}, status_code=200 if body else 499)


class _Completion:
    def __init__(self, state: ServerState, req: CompletionRequest, prompts, texts, score_only):
        self.state, self.req, self.prompts, self.score_only = state, req, prompts, score_only
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        tt = state.token_text
        self.prompt_texts = [t if t is not None else decode(state.tokenizer, p)
                             for p, t in zip(prompts, texts)]
        n = req.n
        self.text = {i * n + j: "" for i in range(len(prompts)) for j in range(n)}
        self.finish = {}
        self.stop_reason = {}
        self.generated = dict.fromkeys(self.text, 0)
        self.lp = ({k: CompletionLogprobs(tt, req.logprobs) for k in self.text}
                   if req.logprobs is not None else None)
        self.echoed = set()

    def _apply(self, pi: int, ev: dict) -> tuple[int, str, dict | None]:
        """Fold one event in; returns (choice index, text delta, logprobs delta)."""
        k = pi * self.req.n + ev["index"]
        delta = ""
        if self.req.echo and k not in self.echoed:
            self.echoed.add(k)
            delta = self.prompt_texts[pi]
            if self.lp is not None:
                plps = ev.get("prompt_logprobs") or [None] * len(self.prompts[pi])
                for tok, entry in zip(self.prompts[pi], plps):
                    self.lp[k].add(tok, entry)
        if not self.score_only:
            delta += ev.get("new_text", "")
            self.generated[k] += len(ev.get("new_token_ids", []))
            if self.lp is not None:
                for entry in ev.get("logprobs") or []:
                    self.lp[k].add(entry["token_id"], entry)
        self.text[k] += delta
        if ev["finished"]:
            self.finish[k] = "length" if self.score_only else ev.get("finish_reason")
            self.stop_reason[k] = ev.get("stop_reason")
            self.state.metrics.finished(ev.get("finish_reason"))
        return k, delta, (self.lp[k].take() if self.lp is not None else None)

    def _usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        done = sum(self.generated.values())
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def _head(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.state.model_name}

    async def collect(self, streams) -> dict:
        logprob_parts = {k: [] for k in self.text}
        try:
            async for pi, ev in self.state.merged(streams):
                if ev["finished"] and ev.get("finish_reason") in ("error", "abort"):
                    raise engine_failure(ev)
                k, _, lp = self._apply(pi, ev)
                if lp is not None:
                    logprob_parts[k].append(lp)
        except EngineDead as e:
            raise engine_failure(None, e) from None
        choices = [{"index": k, "text": self.text[k],
                    "logprobs": (CompletionLogprobs.merge(logprob_parts[k])
                                 if self.lp is not None else None),
                    "finish_reason": self.finish.get(k), "stop_reason": self.stop_reason.get(k)}
                   for k in sorted(self.text)]
        return {**self._head(), "choices": choices, "usage": self._usage()}

    async def stream(self, streams):
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}
        try:
            async for pi, ev in self.state.merged(streams):
                if ev["finished"] and ev.get("finish_reason") in ("error", "abort"):
                    yield sse.event(engine_failure(ev).body())
                    yield sse.DONE
                    return
                k, delta, lp = self._apply(pi, ev)
                if not delta and not ev["finished"] and not (lp and lp["tokens"]):
                    continue
                choice = {"index": k, "text": delta, "logprobs": lp,
                          "finish_reason": self.finish.get(k) if ev["finished"] else None}
                if ev["finished"]:
                    choice["stop_reason"] = self.stop_reason.get(k)
                yield sse.event({**self._head(), "choices": [choice], **extra})
        except EngineDead as e:
            yield sse.event(engine_failure(None, e).body())
            yield sse.DONE
            return
        if include_usage:
            yield sse.event({**self._head(), "choices": [], "usage": self._usage()})
        yield sse.DONE
