"""ASGI middleware: API-key check and request-body cap, both answering in OpenAI's shape.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which wraps `receive`
and would hide the client's disconnect from the routes that watch for it.
"""
from __future__ import annotations

import hmac
import json

from .errors import OpenAIError

# Reachable without the API key: liveness probes, and the static chat page
# (it holds no data; its API calls send the key the user types into it).
PUBLIC_PATHS = {"/health", "/", "/index.html", "/favicon.ico"}
PUBLIC_PREFIXES = ("/static/",)


async def send_error(send, err: OpenAIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    for k, v in (err.headers or {}).items():
        headers.append((k.lower().encode(), str(v).encode()))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """`Authorization: Bearer <key>` on every route but the public ones.
    hmac.compare_digest: the time to reject must not reveal how much of a guess matched."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or self._public(scope["path"]):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        await send_error(send, OpenAIError(
            401, "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.",
            "invalid_request_error", code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"}))

    @staticmethod
    def _public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class BodyLimitMiddleware:
    """413 for a Content-Length over `max_bytes`, before a byte of the body is read.
    Bodies without a length (chunked) are capped while read, by `read_body`."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})["max_body_bytes"] = self.max_bytes
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                return await send_error(send, body_too_large(self.max_bytes))
        await self.app(scope, receive, send)


def body_too_large(max_bytes: int) -> OpenAIError:
    return OpenAIError(413, f"the request body is larger than {max_bytes} bytes",
                       "invalid_request_error", code="request_too_large")


async def read_body(request) -> bytes:
    """The request body, refused with 413 as soon as it passes the cap."""
    cap = request.scope.get("state", {}).get("max_body_bytes")
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if cap is not None and seen > cap:
            raise body_too_large(cap)
        chunks.append(chunk)
    return b"".join(chunks)
