"""Server-Sent Events as OpenAI sends them, and disconnect-aware responses.

Each event is `data: <json>\\n\\n`; the stream ends with `data: [DONE]\\n\\n`.
A failure after the first byte can no longer change the status code, so it is
sent as an event `data: {"error": {...}}` and then `[DONE]`, which is what
the openai client turns into an APIError.
"""
from __future__ import annotations

import asyncio
import json

from starlette.responses import StreamingResponse

DONE = b"data: [DONE]\n\n"


def event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class SSEResponse(StreamingResponse):
    """A streaming response that always watches for the client going away.

    Starlette only listens for `http.disconnect` under ASGI spec < 2.4 and
    otherwise relies on a failing send(), which comes only with the next token
    (never, for a request still waiting in the queue). Watching explicitly
    cancels the body generator at once; its `finally` aborts the request.
    """

    media_type = "text/event-stream"

    def __init__(self, content, cleanup=None, **kw):
        super().__init__(content, headers={"Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"}, **kw)
        self.cleanup = cleanup  # runs however the response ends, even if it never started

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self._run(receive, send)
        finally:
            if self.cleanup is not None:
                self.cleanup()

    async def _run(self, receive, send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        watch = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({stream, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, watch):
                task.cancel()
            await asyncio.gather(stream, watch, return_exceptions=True)
            # A generator parked at a `yield` was not cancelled with the task:
            # close it now, so its cleanup (the abort) runs now, not at GC time.
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if stream.done() and not stream.cancelled() and stream.exception() is not None:
            exc = stream.exception()
            if not isinstance(exc, OSError):  # a send to a closed connection
                raise exc


async def _wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive, coro):
    """Run `coro` unless the client disconnects first (then cancel it and return
    None): a non-streaming request whose client left is aborted, not finished."""
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
        await asyncio.gather(watch, work, return_exceptions=True)
    if work.cancelled():
        return None
    return work.result()
