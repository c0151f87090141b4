"""The FastAPI application: routes, middleware, error handlers, life cycle.

Generation routes live in chat.py and completions.py; this file wires them up
with the small routes (models, health, metrics, tokenizer endpoints for
lm-evaluation-harness) and the static chat page.

When the engine process this server started dies (after it was ready), the
server shuts down, as vLLM's does, so that a supervisor (systemd, Kubernetes)
restarts the whole service rather than leaving it answering 503 forever: the
in-flight requests have already ended with an error (engine_client.py), then
`on_engine_lost` runs, by default stopping uvicorn as a Ctrl-C would.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from rustinfer.runtime.chat_template import ChatTemplateError

from .chat import create_chat_completion
from .completions import create_completion
from .errors import OpenAIError, error_response, install_error_handlers, invalid
from .metrics import CONTENT_TYPE
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware, read_body
from .openai_types import DetokenizeRequest, TokenizeRequest, check_messages, parse_body
from .state import ServerState, decode, encode

log = logging.getLogger("rustinfer.server")
WEB_DIR = files("rustinfer.server") / "web"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


def create_app(state: ServerState, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               on_shutdown=None, on_engine_lost=None) -> FastAPI:
    """`on_engine_lost()`: called once when the engine process this server started has
    died after being ready; it should stop the server with a non-zero exit status.
    None: stop uvicorn as SIGINT does (when it runs in the main thread)."""
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await state.client.start()
        loader = asyncio.create_task(state.load_tokenizer_when_ready())
        watcher = asyncio.create_task(_stop_when_engine_lost(state, on_engine_lost))
        try:
            yield
        finally:
            watcher.cancel()
            loader.cancel()
            await state.client.close()
            state.pool.shutdown(wait=False, cancel_futures=True)
            if on_shutdown is not None:
                on_shutdown()

    # No /docs or /openapi.json: this is an API server, not a schema browser, and
    # FastAPI's generated schema would not describe our hand-validated bodies.
    app = FastAPI(title="rustinfer", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    install_error_handlers(app)
    app.state.server = state

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await create_chat_completion(state, request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await create_completion(state, request)

    def model_card() -> dict:
        info = state.client.info or {}
        return {"id": state.model_name, "object": "model", "created": started,
                "owned_by": "rustinfer", "root": info.get("model_path"),
                "max_model_len": state.max_model_len}

    @app.get("/v1/models")
    async def models():
        state.require_ready()
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        state.require_ready()
        state.check_model(name)
        return model_card()

    @app.get("/health")
    async def health():
        if not state.ready:
            reason = state.not_ready_reason
            return error_response(OpenAIError(503, f"the engine is not available ({reason})",
                                              "service_unavailable", code="engine_unavailable"))
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version():
        from importlib.metadata import version as v
        return {"version": v("rustinfer")}

    @app.get("/metrics")
    async def metrics():
        state.metrics.engine_up = state.client.alive
        await state.client.fresh_stats()
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        req = parse_body(await read_body(request), TokenizeRequest)
        state.check_model(req.model)
        state.require_ready()
        if (req.prompt is None) == (req.messages is None):
            raise invalid("give either prompt or messages", "prompt")
        tok = state.tokenizer
        if req.prompt is not None:
            ids = await state.run_blocking(encode, tok, req.prompt, req.add_special_tokens)
        else:
            check_messages(req.messages)
            messages = [m.model_dump(exclude_none=True) for m in req.messages]
            try:
                text = await state.run_blocking(tok.apply_chat_template, messages,
                                                req.add_generation_prompt)
            except ChatTemplateError as e:
                raise invalid(f"the chat template refused these messages: {e}", "messages")
            ids = await state.run_blocking(encode, tok, text, False)
        return {"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids,
                "token_strs": None}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        req = parse_body(await read_body(request), DetokenizeRequest)
        state.check_model(req.model)
        state.require_ready()
        bad = [t for t in req.tokens if not 0 <= t < state.vocab_size]
        if bad:
            raise invalid(f"token ids out of range [0, {state.vocab_size}): {bad[:5]}", "tokens")
        return {"prompt": await state.run_blocking(decode, state.tokenizer, req.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        state.require_ready()
        tok = state.tokenizer
        template = tok.chat_template
        return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": state.max_model_len,
                "vocab_size": tok.vocab_size, "bos_token_id": tok.bos_token_id,
                "eos_token_ids": tok.eos_token_ids, **tok.special_tokens,
                "chat_template": template if isinstance(template, str) else None,
                "chat_templates": template if isinstance(template, dict) else None}

    @app.get("/")
    async def index():
        return FileResponse(str(WEB_DIR / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, api_key=state.api_key)  # outermost: checked first
    return app


async def _stop_when_engine_lost(state: ServerState, on_engine_lost) -> None:
    client = state.client
    await client.lost.wait()
    if not client.ever_ready:
        return   # died while loading: the command that started it reports that (cli.py)
    log.error("the engine process is gone (%s): shutting the server down so that its "
              "supervisor can restart it", client.dead_reason)
    (on_engine_lost or _interrupt_uvicorn)()


def _interrupt_uvicorn() -> None:
    """Stop the uvicorn server of this process as Ctrl-C does: it drains, then the
    SIGINT reaches the previous handler (KeyboardInterrupt), and the process exits
    with a non-zero status. Only when uvicorn owns SIGINT here (it runs in the main
    thread); an embedding that runs it elsewhere must pass on_engine_lost."""
    handler = signal.getsignal(signal.SIGINT)
    owner = getattr(handler, "__self__", None)
    if (threading.current_thread() is not threading.main_thread()
            or not type(owner).__module__.startswith("uvicorn")):
        log.error("cannot stop this server by itself (uvicorn does not handle SIGINT "
                  "here): pass create_app(on_engine_lost=...)")
        return
    if getattr(owner, "should_exit", False):
        return   # already shutting down (a SIGTERM that stopped the engine too): let it drain
    signal.raise_signal(signal.SIGINT)
