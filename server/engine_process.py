"""The engine process: owns the Engine, serves HTTP processes over a ZeroMQ ROUTER.

One loop, one thread: read every waiting message, then run one engine step if
anything is unfinished, and route each step's events to the client that asked.
The engine is never touched from another thread, so it needs no locks.

Clients (HTTP processes) say hello, ping every half second, and say bye when
they stop. A client is gone when its connection closes and it stops pinging
(2 s), or after `client_timeout` seconds of silence: its requests are then
aborted so their KV blocks come back. Started by `rustinfer-serve`
the engine runs with exit_when_orphaned: once its client is gone (or its parent
process died), it exits. Run on its own (`rustinfer-engine`) it outlives HTTP
processes, so the HTTP side can restart without reloading the model.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
import traceback

import zmq

from rustinfer.runtime.engine_api import RequestError, RequestEvent
from rustinfer.runtime.sampling import SamplingParams, SamplingParamsError

from . import protocol
from .ipc import socket_in_use, socket_path

log = logging.getLogger("rustinfer.engine")

_PARAM_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}
STATS_INTERVAL_S = 1.0
DISCONNECT_GRACE_S = 2.0


@dataclasses.dataclass
class _Client:
    identity: bytes
    last_seen: float
    requests: set = dataclasses.field(default_factory=set)


class EngineServer:
    def __init__(self, engine, address: str, *, model_path: str, exit_when_orphaned: bool = False,
                 client_timeout: float = 30.0, drain_timeout: float = 30.0):
        self.engine = engine
        self.address = address
        self.model_path = str(model_path)
        self.exit_when_orphaned = exit_when_orphaned
        self.client_timeout = client_timeout
        self.drain_timeout = drain_timeout
        self.clients: dict[bytes, _Client] = {}
        self.owner: dict[str, bytes] = {}        # request id -> client identity
        self.remaining: dict[str, int] = {}      # request id -> choices not finished yet (n)
        self.stop_requested = threading.Event()  # set by a signal or by a test
        self._had_client = False
        self._parent = os.getppid()
        self._last_stats = 0.0
        self._disconnect_at: float | None = None

    # ------------------------------------------------------------------ loop ---
    def serve(self) -> None:
        path = socket_path(self.address)
        if socket_in_use(path):
            raise RuntimeError(f"another engine is already listening on {path}")
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        # A client that vanished must not make send() block or raise.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        # No high-water mark: at the default (1000) a ROUTER silently drops messages
        # to a slow reader, and a dropped `events` message would lose tokens or a
        # finish. A client that stops reading altogether is dropped by its heartbeat.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        old_umask = os.umask(0o077)  # the socket file itself: owner only, like its directory
        try:
            sock.bind(self.address)
        finally:
            os.umask(old_umask)
        self.sock = sock
        # A peer's socket closing (an HTTP process exiting or killed) shows here at
        # once; which client it was shows by who keeps pinging (see _check_clients).
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        log.info("engine listening on %s", self.address)
        drain_deadline = None
        try:
            while True:
                busy = self.engine.has_unfinished()
                if sock.poll(0 if busy else 100):
                    self._read_all()
                self._check_clients()
                if self.stop_requested.is_set():
                    if drain_deadline is None:
                        drain_deadline = time.monotonic() + self.drain_timeout
                        if not self.clients:  # nobody to drain for
                            self._abort_all("engine shutting down")
                    if not self.engine.has_unfinished() or time.monotonic() > drain_deadline:
                        break
                if self.engine.has_unfinished():
                    self._step()
                if time.monotonic() - self._last_stats > STATS_INTERVAL_S:
                    self._broadcast_stats()
                if self.exit_when_orphaned and self._orphaned():
                    log.info("engine: the HTTP process is gone; exiting")
                    self._abort_all("the HTTP process is gone")
                    break
        finally:
            sock.disable_monitor()
            self.monitor.close(linger=0)
            sock.close(linger=0)
            ctx.term()
            try:
                path.unlink()
                if self.exit_when_orphaned:  # rustinfer-serve's own temporary directory
                    path.parent.rmdir()
            except OSError:
                pass

    def _orphaned(self) -> bool:
        return (self._had_client and not self.clients) or os.getppid() != self._parent

    # -------------------------------------------------------------- messages ---
    def _read_all(self) -> None:
        while True:
            try:
                identity, frame = self.sock.recv_multipart(zmq.NOBLOCK)[:2]
            except zmq.Again:
                return
            except ValueError:   # a frame count we never send
                continue
            try:
                msg = protocol.unpack(frame)
            except protocol.ProtocolError as e:
                log.warning("engine: dropped a bad message: %s", e)
                continue
            client = self.clients.get(identity)
            if client is None:
                client = self.clients[identity] = _Client(identity, time.monotonic())
                self._had_client = True
            client.last_seen = time.monotonic()
            getattr(self, "_on_" + msg["type"], self._on_other)(client, msg)

    def _send(self, identity: bytes, type_: str, **fields) -> None:
        try:
            self.sock.send_multipart([identity, protocol.pack(type_, **fields)], zmq.NOBLOCK)
        except zmq.Again:
            log.warning("engine: client queue full; dropped a %s message", type_)

    def _on_hello(self, client: _Client, msg: dict) -> None:
        tok = self.engine.tokenizer
        self._send(client.identity, "ready", model_name=self.engine.model_name,
                   model_path=self.model_path, max_model_len=int(self.engine.max_model_len),
                   vocab_size=int(getattr(tok, "vocab_size", 0) or 0), pid=os.getpid())

    def _on_ping(self, client: _Client, msg: dict) -> None:
        self._send(client.identity, "pong")

    def _on_bye(self, client: _Client, msg: dict) -> None:
        self._drop_client(client, "client said bye")

    def _on_stats(self, client: _Client, msg: dict) -> None:
        self._broadcast_stats()

    def _on_other(self, client: _Client, msg: dict) -> None:
        log.warning("engine: unexpected %s message", msg["type"])

    def _on_generate(self, client: _Client, msg: dict) -> None:
        rid = msg["request_id"]
        if self.stop_requested.is_set():
            return self._reject(client, rid, "engine_shutting_down", "the engine is shutting down")
        if rid in self.owner:
            return self._reject(client, rid, "invalid_request", f"duplicate request id {rid!r}")
        raw = msg["params"]
        unknown = sorted(set(map(str, raw)) - _PARAM_FIELDS)
        if unknown:
            return self._reject(client, rid, "invalid_request", f"unknown sampling fields {unknown}")
        try:
            params = SamplingParams(**raw)
            self.engine.add_request(rid, list(msg["prompt_token_ids"]), params)
        except SamplingParamsError as e:
            return self._reject(client, rid, "invalid_request", str(e), e.param)
        except RequestError as e:
            return self._reject(client, rid, e.code, str(e), e.param)
        except (TypeError, ValueError) as e:
            return self._reject(client, rid, "invalid_request", str(e))
        except Exception as e:  # an engine bug must not take the loop down
            log.error("engine: add_request failed:\n%s", traceback.format_exc())
            return self._reject(client, rid, "internal_error", f"{type(e).__name__}: {e}")
        self.owner[rid] = client.identity
        self.remaining[rid] = params.n
        client.requests.add(rid)
        self._send(client.identity, "accepted", request_id=rid)

    def _reject(self, client, rid, code, message, param=None) -> None:
        self._send(client.identity, "rejected", request_id=rid, code=code, message=message,
                   param=param)

    def _on_abort(self, client: _Client, msg: dict) -> None:
        # The client has given up on it: forget it now, so that however many
        # "abort" events the engine emits for it, none is routed or counted.
        rid = msg["request_id"]
        if self.owner.get(rid) == client.identity:
            self._forget(rid)
            self.engine.abort(rid)

    def _forget(self, rid: str) -> None:
        identity = self.owner.pop(rid, None)
        self.remaining.pop(rid, None)
        client = self.clients.get(identity)
        if client is not None:
            client.requests.discard(rid)

    # ---------------------------------------------------------------- engine ---
    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception:  # a bug in the engine: fail every request, keep serving
            log.error("engine step failed:\n%s", traceback.format_exc())
            self._abort_all("internal engine error", error=True)
            return
        by_client: dict[bytes, list] = {}
        for ev in events:
            identity = self.owner.get(ev.request_id)
            if identity is None:
                continue  # aborted by its client, or its client is gone
            if identity in self.clients:
                by_client.setdefault(identity, []).append(protocol.event_to_wire(ev))
            if ev.finished:
                # With n > 1 each choice finishes on its own event.
                self.remaining[ev.request_id] -= 1
                if self.remaining[ev.request_id] <= 0 or ev.finish_reason in ("abort", "error"):
                    self._forget(ev.request_id)
        for identity, evs in by_client.items():
            self._send(identity, "events", events=evs)

    def _abort_all(self, reason: str, error: bool = False) -> None:
        for rid, identity in list(self.owner.items()):
            try:
                self.engine.abort(rid)
            except Exception:
                log.warning("engine: abort of %s failed", rid)
            if identity in self.clients:
                ev = RequestEvent(rid, finished=True, finish_reason="error" if error else "abort",
                                  error=reason)
                self._send(identity, "events", events=[protocol.event_to_wire(ev)])
        self.owner.clear()
        self.remaining.clear()
        for client in self.clients.values():
            client.requests.clear()
        # The engine's own abort events for these ids have no owner any more: drain them.
        for _ in range(4):
            if not self.engine.has_unfinished():
                break
            try:
                self.engine.step()
            except Exception:
                break

    def _check_clients(self) -> None:
        now = time.monotonic()
        while self.monitor.poll(0):
            self.monitor.recv_multipart()
            self._disconnect_at = self._disconnect_at or now
        # Live clients ping every 0.5 s: after a disconnect, whoever has been silent
        # since is the one that went away. Otherwise only a long silence counts.
        if self._disconnect_at is not None and now - self._disconnect_at > DISCONNECT_GRACE_S:
            for client in list(self.clients.values()):
                if client.last_seen < self._disconnect_at:
                    self._drop_client(client, "its connection closed")
            self._disconnect_at = None
        for client in list(self.clients.values()):
            if now - client.last_seen > self.client_timeout:
                self._drop_client(client, "no heartbeat")

    def _drop_client(self, client: _Client, why: str) -> None:
        log.info("engine: client %s gone (%s); aborting %d request(s)", client.identity.hex(), why,
                 len(client.requests))
        for rid in list(client.requests):
            self._forget(rid)
            self.engine.abort(rid)
        self.clients.pop(client.identity, None)

    def _broadcast_stats(self) -> None:
        self._last_stats = time.monotonic()
        if not self.clients:
            return  # keep the histogram samples for whoever connects next
        stats = dataclasses.asdict(self.engine.stats())
        for identity in self.clients:
            self._send(identity, "stats", stats=stats)


def install_signal_handlers(server: EngineServer) -> None:
    """SIGTERM / SIGINT: finish what is running (bounded by drain_timeout), then exit."""
    def handler(signum, frame):
        if server.stop_requested.is_set():  # a second signal: stop now
            raise SystemExit(1)
        server.stop_requested.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
