"""rustinfer-serve, rustinfer-engine, rustinfer-server.

    rustinfer-serve [--model M] [--port 8000]   both processes: the engine as a child
    rustinfer-engine [--model M]                the engine alone (binds a private ipc socket)
    rustinfer-server [--port 8000]              the HTTP side alone, attached to that engine

Run apart, the HTTP side can be restarted without reloading the model. Under
rustinfer-serve the engine exits when the HTTP process dies: PR_SET_PDEATHSIG
delivers SIGTERM the moment its parent goes, even after a SIGKILL, and the
engine also exits once its only client stops pinging. The engine child runs
in its own session, so a Ctrl-C reaches only rustinfer-serve, which drains
in-flight HTTP requests first and then stops the engine: no process is left.
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys

from .ipc import address_for, default_socket_dir, make_private_tempdir, private_dir

log = logging.getLogger("rustinfer.server")


def _engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", help="Hugging Face folder, .gguf file or alias "
                   "(default: smollm2-135m-instruct, fetched once into $RUSTINFER_CACHE)")
    g.add_argument("--target", default="auto",
                   help="where the model runs: auto (default: cuda with a GPU, else cpu = ONNX "
                        "Runtime), cpu, cpu-torch, cuda or reference")
    g.add_argument("--quant", choices=["none", "int4", "int8"],
                   help="cpu target: weight quantization (default: none = float32, or int4 "
                        "when float32 weights would take over half the available memory; int4 "
                        "keeps a GGUF's blocks exactly)")
    g.add_argument("--threads", type=int, help="cpu target: ONNX Runtime threads "
                   "(default: physical cores)")
    g.add_argument("--max-model-len", type=int, help="context length to size the KV cache for")
    g.add_argument("--max-num-seqs", type=int, default=16, help="sequences batched per step")
    g.add_argument("--max-num-batched-tokens", type=int, default=512, help="tokens per step")
    g.add_argument("--block-size", type=int, default=16, help="KV-cache block size in tokens")
    g.add_argument("--num-kv-blocks", type=int, help="KV-cache blocks (default: sized by the engine)")


def _http_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HTTP")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; "
                        "0.0.0.0 opens it to the network)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--api-key", default=os.environ.get("RUSTINFER_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' (default: $RUSTINFER_API_KEY)")
    g.add_argument("--served-model-name", help="the model's name in the API (default: the engine's)")
    g.add_argument("--max-pending-requests", type=int, default=256,
                   help="requests in flight before new ones get 429 (default 256)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM / Ctrl-C, seconds running requests may take to finish; "
                        "those still running then end with a 503 error (default 30)")
    g.add_argument("--max-request-bytes", type=int, default=32 * 1024 * 1024,
                   help="largest request body accepted (default 32 MiB)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ------------------------------------------------------------------ engine ---
def engine_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rustinfer-engine", description="The rustinfer engine process.")
    _engine_args(p)
    p.add_argument("--socket-dir", help=f"private directory for the ipc socket "
                   f"(default {default_socket_dir()})")
    p.add_argument("--exit-when-orphaned", action="store_true",
                   help="exit when the HTTP process is gone (rustinfer-serve sets this)")
    _common(p)
    args = p.parse_args(argv)
    _logging(args.log_level)
    from rustinfer.runtime.checkpoint import CheckpointError
    from rustinfer.runtime.engine import Engine
    from rustinfer.runtime.model_resolver import resolve_model

    from .engine_process import EngineServer, install_signal_handlers

    directory = private_dir(args.socket_dir or default_socket_dir())
    try:
        _check_target(args)
        model_path = resolve_model(args.model)
        _check_tokenizer(model_path)
        log.info("engine: loading %s", model_path)
        # The name as given (an alias, or None for the default) lets the engine name the
        # model as people know it; the resolved path is for the HTTP side's tokenizer.
        options = {k: v for k, v in (("quant", args.quant), ("threads", args.threads)) if v}
        engine = Engine.from_model(model=args.model, target=args.target, **options,
                                   max_model_len=args.max_model_len,
                                   max_num_seqs=args.max_num_seqs,
                                   max_num_batched_tokens=args.max_num_batched_tokens,
                                   block_size=args.block_size, num_kv_blocks=args.num_kv_blocks)
    except (CheckpointError, OSError, ValueError) as e:  # a bad --model, spec, ...: the user's to fix
        log.error("engine: cannot load the model: %s", e)
        return 1
    from rustinfer.runtime.targets import describe

    log.info("engine: target %s", describe(engine.executor))
    server = EngineServer(engine, address_for(directory), model_path=str(model_path),
                          exit_when_orphaned=args.exit_when_orphaned)
    install_signal_handlers(server)
    server.serve()
    return 0


# -------------------------------------------------------------------- HTTP ---
def server_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rustinfer-server",
                                description="The OpenAI-compatible HTTP side, attached to a "
                                            "running rustinfer-engine.")
    _http_args(p)
    p.add_argument("--socket-dir", help=f"the engine's socket directory (default {default_socket_dir()})")
    _common(p)
    args = p.parse_args(argv)
    _logging(args.log_level)
    directory = private_dir(args.socket_dir or default_socket_dir())
    return _run_http(args, address_for(directory), process=None)


def _run_http(args, address: str, process: subprocess.Popen | None) -> int:
    # uvicorn drains on SIGTERM / SIGINT, then re-raises the signal against the
    # handler that was there before it. Python's defaults would then kill us
    # before our cleanup runs (stopping the engine): make them harmless.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        return asyncio.run(_serve_http(args, address, process))
    except KeyboardInterrupt:
        return 130


async def _serve_http(args, address: str, process: subprocess.Popen | None) -> int:
    import uvicorn

    from .app import create_app
    from .engine_client import EngineClient
    from .state import ServerState

    client = EngineClient(address, process=process)
    state = ServerState(client, served_model_name=args.served_model_name,
                        max_pending=args.max_pending_requests, api_key=args.api_key)
    failed = False

    def engine_lost():
        # rustinfer-serve's own engine died after it was ready: fail the in-flight
        # requests (the app does), then exit non-zero so a supervisor restarts us
        nonlocal failed
        if not server.should_exit:                  # not already stopping on SIGTERM
            failed = True
            server.should_exit = True

    app = create_app(state, max_body_bytes=args.max_request_bytes,
                     on_engine_lost=engine_lost if process is not None else None)
    config = uvicorn.Config(app, host=args.host, port=args.port, loop="asyncio", http="h11",
                            log_level=args.log_level,
                            # uvicorn cancels what is left after this (a truncated stream, a
                            # plain-text 500): end_at_deadline ends them properly before it
                            timeout_graceful_shutdown=args.shutdown_timeout + 5,
                            lifespan="on")
    server = uvicorn.Server(config)

    async def watch_startup():
        # An engine that dies while loading makes this server useless: stop it. Once the
        # engine and the tokenizer are up and uvicorn listens, say that it is ready.
        nonlocal failed
        while not (state.ready and server.started):
            if process is not None and not client.ever_ready and process.poll() is not None:
                log.error("the engine exited while starting (code %s)", process.returncode)
                failed = True
                server.should_exit = True
                return
            await asyncio.sleep(0.2)
        log.info("ready on http://%s:%d", args.host, args.port)

    async def end_at_deadline():
        # Shutting down (SIGTERM, Ctrl-C): running requests have --shutdown-timeout seconds
        # to finish; then each ends with a 503 (an SSE error event and [DONE] for a stream)
        # and is aborted in the engine, so that every client learns why its answer stopped.
        while not server.should_exit:
            await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.shutdown_timeout
        while client.num_in_flight and loop.time() < deadline and not server.force_exit:
            await asyncio.sleep(0.1)
        if client.num_in_flight:
            n = await client.end_all(f"{args.shutdown_timeout:g} s after it was asked to stop")
            log.warning("shutdown: ended %d request(s) still running after %g s", n,
                        args.shutdown_timeout)

    watcher = asyncio.create_task(watch_startup())
    ender = asyncio.create_task(end_at_deadline())
    # Not ready yet: the engine (under rustinfer-serve, a child still loading the model)
    # answers later, and then this side loads the tokenizer; until then /health and the
    # API say 503. watch_startup logs "ready on ..." once requests can be served.
    # (this line must not contain "ready on": scripts wait for that phrase)
    log.info("starting on http://%s:%d (engine: %s); %s: the server answers 503 until it "
             "logs that it is ready", args.host, args.port, address,
             "loading the model" if process is not None else "waiting for the engine")
    await server.serve()
    watcher.cancel()
    ender.cancel()
    return 1 if failed or not server.started else 0


# ------------------------------------------------------------------- serve ---
def _die_with_parent() -> None:
    """Runs in the engine child before exec: SIGTERM it when its parent dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the engine's orphan checks still stop it


def _check_target(args) -> None:
    """Refuse, before any model loads, a --target that does not exist or that this machine
    cannot run, and --quant / --threads with a target other than cpu (as `rustinfer
    generate` does). "auto" is left to the engine: resolving it would initialize CUDA here."""
    from rustinfer.runtime.targets import resolve_target

    if args.target == "auto":
        return
    target = resolve_target(args.target)            # unknown names raise ValueError
    if target != "cpu" and (args.quant not in (None, "none") or args.threads):
        raise ValueError(f"--quant and --threads apply to --target cpu (this run: {target})")
    if target == "cuda":
        from rustinfer.runtime.cli import cuda_problem

        if problem := cuda_problem():
            raise ValueError(problem)


def _preflight(args) -> None:
    """What the engine child would fail on first, checked here so that rustinfer-serve
    stops with one line before it starts anything: the target and a --model path (opened,
    which reads only its header). An alias, or no --model, is left to the engine, which
    fetches it once (with progress) into $RUSTINFER_CACHE."""
    from rustinfer.runtime.model_resolver import ALIASES, resolve_model

    _check_target(args)
    if args.model is not None and args.model.lower() not in ALIASES:
        _check_tokenizer(resolve_model(args.model))


def _check_tokenizer(model_path) -> None:
    """The server speaks text: a checkpoint without a tokenizer is refused at start (the
    HTTP side would otherwise answer 503 'loading the tokenizer' forever)."""
    from rustinfer.runtime.checkpoint import CheckpointError, open_checkpoint
    from rustinfer.runtime.llm import no_tokenizer_message

    with open_checkpoint(model_path) as ckpt:
        problem = no_tokenizer_message(ckpt)
    if problem is not None:
        raise CheckpointError(f"{problem}; the server needs one to read and write text")


def _check_port(host: str, port: int) -> None:
    """Refuse at once a port that is taken (or not ours to take): uvicorn would say so
    only after the engine child had started loading the model, among startup lines."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: {e.strerror}") from None
    family, type_, proto, _, address = infos[0]
    with socket.socket(family, type_, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as e:
            why = ("is already in use (another server running?); pick another with --port"
                   if e.errno == errno.EADDRINUSE else f"cannot be used: {e.strerror}")
            raise ValueError(f"port {port} on {host} {why}") from None


def serve_main(argv: list[str] | None = None, prog: str = "rustinfer-serve") -> int:
    p = argparse.ArgumentParser(prog=prog,
                                description="Serve a model over the OpenAI API: starts the "
                                            "engine process and the HTTP server.")
    _engine_args(p)
    _http_args(p)
    _common(p)
    args = p.parse_args(argv)
    from rustinfer.runtime.checkpoint import CheckpointError

    try:
        _preflight(args)
        _check_port(args.host, args.port)
    except (CheckpointError, OSError, ValueError) as e:   # the user's to fix: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    _logging(args.log_level)
    directory = make_private_tempdir()
    cmd = [sys.executable, "-m", "rustinfer.server.cli", "engine", "--socket-dir", str(directory),
           "--exit-when-orphaned", "--log-level", args.log_level, "--target", args.target,
           "--max-num-seqs", str(args.max_num_seqs), "--block-size", str(args.block_size),
           "--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    for flag, value in (("--model", args.model), ("--max-model-len", args.max_model_len),
                        ("--num-kv-blocks", args.num_kv_blocks), ("--quant", args.quant),
                        ("--threads", args.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    engine = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent)
    code = 1
    try:
        code = _run_http(args, address_for(directory), process=engine)
    finally:
        _stop_engine(engine)
        shutil.rmtree(directory, ignore_errors=True)
    return code


def _stop_engine(engine: subprocess.Popen) -> None:
    # The HTTP side said bye on shutdown, so an orphan-aware engine is already exiting.
    for sig, wait in ((None, 5), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if sig is not None and engine.poll() is None:
            engine.send_signal(sig)
        try:
            engine.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    """`python -m rustinfer.server.cli engine|server|serve ARGS`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"engine": engine_main, "server": server_main, "serve": serve_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m rustinfer.server.cli {engine,server,serve} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
