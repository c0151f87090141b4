"""What every route shares: the engine link, the tokenizer, admission, submission.

Admission is a bounded count of requests in this process (tokenizing, queued
or running): past `max_pending` a request gets 429 with Retry-After at once,
instead of piling up memory and latency. Tokenization and chat-template
rendering run on a small thread pool, so a huge prompt never stalls the event
loop (and /health with it).
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from .engine_client import EngineClient, RequestStream
from .errors import OpenAIError
from .logprobs import TokenText
from .metrics import Metrics

log = logging.getLogger("rustinfer.server")


class ServerState:
    def __init__(self, client: EngineClient, *, served_model_name: str | None = None,
                 max_pending: int = 256, api_key: str | None = None):
        self.client = client
        self.served_model_name = served_model_name
        self.max_pending = max_pending
        self.api_key = api_key
        self.tokenizer = None
        self.tokenizer_error: str | None = None   # why the tokenizer could not be loaded
        self.token_text: TokenText | None = None
        self.metrics = Metrics(served_model_name or "unknown")
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rustinfer-tokenize")
        self.active = 0
        self._background: set[asyncio.Task] = set()
        client.on_stats = self.metrics.update

    # ------------------------------------------------------------- engine info ---
    @property
    def model_name(self) -> str:
        info = self.client.info or {}
        return self.served_model_name or info.get("model_name", "unknown")

    @property
    def max_model_len(self) -> int:
        return int((self.client.info or {}).get("max_model_len", 0))

    @property
    def vocab_size(self) -> int:
        info = self.client.info or {}
        return int(info.get("vocab_size") or getattr(self.tokenizer, "vocab_size", 0))

    @property
    def ready(self) -> bool:
        return self.client.alive and self.tokenizer is not None

    @property
    def not_ready_reason(self) -> str:
        return self.client.dead_reason or self.tokenizer_error or "loading the tokenizer"

    async def load_tokenizer_when_ready(self) -> None:
        """Background task: once the engine says ready, load the same tokenizer here."""
        from rustinfer.runtime.tokenizer import Tokenizer

        await self.client.ready.wait()
        path = self.client.info["model_path"]
        try:
            tokenizer = await self.run_blocking(Tokenizer.load, path)
        except Exception as e:  # say why in every 503 and the log, instead of "loading" forever
            self.tokenizer_error = f"cannot load the tokenizer from {path}: {e}"
            log.error("%s", self.tokenizer_error)
            return
        self.tokenizer = tokenizer
        self.token_text = TokenText(self.tokenizer)
        self.metrics.set_model_name(self.model_name)
        log.info("tokenizer loaded from %s; serving %s", path, self.model_name)

    # ------------------------------------------------------------------ checks ---
    def require_ready(self) -> None:
        self.metrics.engine_up = self.client.alive
        if not self.ready:
            reason = self.not_ready_reason
            raise OpenAIError(503, f"the engine is not available ({reason})",
                              "service_unavailable", code="engine_unavailable",
                              headers={"Retry-After": "5"})

    def check_model(self, name: str | None) -> None:
        if not self.ready:          # the name is not known until the engine is up: 503
            self.require_ready()
        if name and name != self.model_name:
            raise OpenAIError(404, f"The model `{name}` does not exist.", "invalid_request_error",
                              "model", "model_not_found")

    def admit(self) -> "Slot":
        """A place among the max_pending; released when the response is done
        (for a stream, after its last byte, so it is not a context manager)."""
        if self.active >= self.max_pending:
            raise OpenAIError(429, f"the server is at capacity ({self.max_pending} requests "
                              "pending); retry shortly", "rate_limit_error",
                              code="too_many_requests", headers={"Retry-After": "1"})
        self.active += 1
        return Slot(self)

    async def run_blocking(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    # -------------------------------------------------------------- submission ---
    async def submit(self, base_id: str, prompts: list[list[int]], params: dict) -> list[RequestStream]:
        """One engine request per prompt; all accepted, or none left behind."""
        streams: list[RequestStream] = []
        try:
            for i, ids in enumerate(prompts):
                rid = base_id if len(prompts) == 1 else f"{base_id}-{i}"
                streams.append(await self.client.generate(rid, ids, params, params["n"]))
        except BaseException:
            self.abort_soon(streams)
            raise
        return streams

    def abort_soon(self, streams: list[RequestStream]) -> None:
        """Abort unfinished requests from any context, cancelled ones included:
        the abort is sent by a task of its own, which a cancelled caller cannot stop."""
        for s in streams:
            if s.finished:
                self.client.release(s.request_id)
                continue
            task = asyncio.get_running_loop().create_task(self.client.abort(s.request_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def merged(self, streams: list[RequestStream]):
        """(prompt index, event) from several streams, as they come."""
        if len(streams) == 1:
            async for ev in streams[0]:
                yield 0, ev
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i, stream):
            try:
                async for ev in stream:
                    queue.put_nowait((i, ev))
                queue.put_nowait((i, None))
            except Exception as e:
                queue.put_nowait((i, e))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        try:
            open_streams = len(streams)
            while open_streams:
                i, item = await queue.get()
                if item is None:
                    open_streams -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()


def encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    """tokenizer.encode(text), but releasing the GIL: `tokenizers` holds it for the
    whole of a single encode() (seconds for a huge prompt, during which the event
    loop thread cannot run at all), while encode_batch() lets go of it."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None or not hasattr(backend, "encode_batch"):
        return tokenizer.encode(text, add_special_tokens)
    return backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids


def encode_many(tokenizer, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    """encode() of several texts in one call (in parallel, without the GIL)."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None or not hasattr(backend, "encode_batch"):
        return [tokenizer.encode(t, add_special_tokens) for t in texts]
    return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]


def decode(tokenizer, ids: list[int], skip_special_tokens: bool = False) -> str:
    """tokenizer.decode(ids), releasing the GIL in the same way."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None or not hasattr(backend, "decode_batch"):
        return tokenizer.decode(ids, skip_special_tokens)
    return backend.decode_batch([[int(i) for i in ids]], skip_special_tokens=skip_special_tokens)[0]


class Slot:
    def __init__(self, state: ServerState):
        self.state, self.held = state, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.active -= 1
