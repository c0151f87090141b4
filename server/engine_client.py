"""The HTTP process's side of the engine link: an asyncio ZeroMQ DEALER.

One reader task dispatches every message from the engine: `accepted` /
`rejected` resolve the future that `generate()` awaits, `events` go into the
request's queue, `stats` update the metrics. A heartbeat task pings twice a
second. The engine is declared dead when its process exits (when we started
it), when the socket reports a disconnect, or when no message came for
`dead_after` seconds; every in-flight request then gets an error and new ones
are refused with 503 until the engine says `ready` again (a restarted
standalone engine is picked up by ZeroMQ's automatic reconnect).

An engine we started ourselves (`process`, under rustinfer-serve) cannot come
back: when it exits, or stops answering, `lost` is set as well, and the app
shuts the HTTP server down (app.py) so that a supervisor restarts the service.
"""
from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import uuid

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from . import protocol
from .errors import OpenAIError

log = logging.getLogger("rustinfer.server")

PING_INTERVAL_S = 0.5


class EngineDead(Exception):
    pass


class ServerShuttingDown(EngineDead):
    """The HTTP server's shutdown deadline came before the request finished."""


class RequestStream:
    """Events of one request, in order; the last item is None (done) or an EngineDead."""

    def __init__(self, request_id: str, n: int):
        self.request_id = request_id
        self.queue: asyncio.Queue = asyncio.Queue()
        self.open_choices = n
        self.finished = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        if self.finished:
            raise StopAsyncIteration
        item = await self.queue.get()
        if isinstance(item, Exception):
            self.finished = True
            raise item
        if item["finished"]:
            self.open_choices -= 1
            if self.open_choices <= 0 or item.get("finish_reason") in ("abort", "error"):
                self.finished = True
        return item


class EngineClient:
    def __init__(self, address: str, *, process: subprocess.Popen | None = None,
                 dead_after: float = 60.0, on_stats=None):
        self.address = address
        self.process = process          # the engine child, when rustinfer-serve started it
        self.dead_after = dead_after
        self.on_stats = on_stats        # callback(stats dict)
        self.info: dict | None = None   # the engine's `ready` message
        self.ready = asyncio.Event()
        self.dead_reason: str | None = f"waiting for the engine at {address}"
        self.ever_ready = False
        self.lost = asyncio.Event()     # set when our own engine process is gone for good
        self._streams: dict[str, RequestStream] = {}
        self._pending: dict[str, asyncio.Future] = {}
        self._stats_waiters: list[asyncio.Future] = []
        self._last_heard = time.monotonic()
        self._tasks: list[asyncio.Task] = []

    # -------------------------------------------------------------- life cycle ---
    async def start(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # never drop the engine's events (see engine_process)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(self.address)
        self._client_id = uuid.uuid4().hex
        self._tasks = [asyncio.create_task(f()) for f in (self._reader, self._heartbeat, self._watch)]

    async def close(self) -> None:
        # Not alive from here on: an abort sent after the socket is closed (a response's
        # cleanup that runs during a forced shutdown) would raise ZMQError in its task.
        self.ready.clear()
        self.dead_reason = "the server is shutting down"
        try:
            await self._send("bye")
        except Exception:
            pass
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()

    @property
    def alive(self) -> bool:
        return self.ready.is_set()

    async def _send(self, type_: str, **fields) -> None:
        """Never waits: with no engine connected a DEALER would block until one is."""
        try:
            await self.sock.send(protocol.pack(type_, **fields), zmq.NOBLOCK)
        except zmq.Again:
            raise OpenAIError(503, "the engine is not connected", "service_unavailable",
                              code="engine_unavailable") from None

    # ---------------------------------------------------------------- requests ---
    async def generate(self, request_id: str, prompt_token_ids: list[int], params: dict,
                       n: int) -> RequestStream:
        """Queue a request; returns its event stream once the engine accepted it.
        Raises OpenAIError (the engine's refusal, or 503 when it is not there)."""
        if not self.alive:
            raise OpenAIError(503, f"the engine is not available ({self.dead_reason})",
                              "service_unavailable", code="engine_unavailable")
        fut = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        stream = self._streams[request_id] = RequestStream(request_id, n)
        try:
            await self._send("generate", request_id=request_id,
                             prompt_token_ids=prompt_token_ids, params=params)
            reply = await fut
        except BaseException:
            self._streams.pop(request_id, None)
            self._pending.pop(request_id, None)
            raise
        if reply["type"] == "rejected":
            self._streams.pop(request_id, None)
            status = 503 if reply["code"] == "engine_shutting_down" else 400
            raise OpenAIError(status, reply["message"], "invalid_request_error", reply["param"],
                              reply["code"])
        return stream

    async def abort(self, request_id: str) -> None:
        if self._streams.pop(request_id, None) is not None and self.alive:
            try:
                await self._send("abort", request_id=request_id)
            except OpenAIError:
                pass  # the engine is gone, and the request with it

    async def end_all(self, reason: str) -> int:
        """End every request in flight with ServerShuttingDown (its response then ends with
        a 503 error, an SSE error event for a stream) and abort it in the engine; returns
        how many there were."""
        streams, self._streams = self._streams, {}
        for rid, stream in streams.items():
            stream.queue.put_nowait(ServerShuttingDown(reason))
            if self.alive:
                try:
                    await self._send("abort", request_id=rid)
                except OpenAIError:
                    pass
        return len(streams)

    def release(self, request_id: str) -> None:
        """Forget a finished request (its stream has been read to the end)."""
        self._streams.pop(request_id, None)

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    async def fresh_stats(self, timeout: float = 2.0) -> bool:
        """Ask the engine for stats now and wait for them (False when it did not answer)."""
        if not self.alive:
            return False
        fut = asyncio.get_running_loop().create_future()
        self._stats_waiters.append(fut)
        try:
            await self._send("stats")
            await asyncio.wait_for(fut, timeout)
            return True
        except (asyncio.TimeoutError, OpenAIError):
            return False

    # ------------------------------------------------------------------ tasks ---
    async def _reader(self) -> None:
        while True:
            frame = await self.sock.recv()
            self._last_heard = time.monotonic()
            try:
                msg = protocol.unpack(frame)
            except protocol.ProtocolError as e:
                log.warning("dropped a bad message from the engine: %s", e)
                continue
            kind = msg["type"]
            if kind == "events":
                for ev in msg["events"]:
                    stream = self._streams.get(ev["request_id"])
                    if stream is not None:
                        stream.queue.put_nowait(ev)
            elif kind in ("accepted", "rejected"):
                fut = self._pending.pop(msg["request_id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif kind == "stats":
                if self.on_stats is not None:
                    self.on_stats(msg["stats"])
                waiters, self._stats_waiters = self._stats_waiters, []
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(True)
            elif kind == "ready":
                self.info = msg
                if not self.ready.is_set():
                    log.info("engine up: %s loaded (pid %s)", msg["model_name"], msg.get("pid"))
                self.dead_reason = None
                self.ever_ready = True
                self.ready.set()

    async def _heartbeat(self) -> None:
        while True:
            # Until the engine is ready, hello doubles as the ping.
            try:
                await self._send("ping" if self.ready.is_set() else "hello", client=self._client_id)
            except OpenAIError:
                pass  # not connected (yet, or any more): the checks below decide
            await asyncio.sleep(PING_INTERVAL_S)
            if self.process is not None and self.process.poll() is not None:
                self._declare_dead(f"the engine process exited with code {self.process.returncode}",
                                   permanent=True)
            elif self.ready.is_set() and time.monotonic() - self._last_heard > self.dead_after:
                self._declare_dead(f"no word from the engine for {self.dead_after:.0f} s",
                                   permanent=self.process is not None)

    async def _watch(self) -> None:
        """Socket events: a disconnect means the engine process closed its end (it died
        or stopped); a new connection means it may be back, so say hello again."""
        while True:
            event = parse_monitor_message(await self.monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self._declare_dead("the engine closed the connection")
            elif event["event"] == zmq.EVENT_CONNECTED and not self.ready.is_set():
                try:
                    await self._send("hello", client=self._client_id)
                except OpenAIError:
                    pass

    def _declare_dead(self, reason: str, permanent: bool = False) -> None:
        if self.ready.is_set() or self.dead_reason != reason:
            log.error("engine unavailable: %s", reason)
        self.ready.clear()
        self.dead_reason = reason
        if permanent:
            self.lost.set()
        error = EngineDead(reason)
        for stream in self._streams.values():
            stream.queue.put_nowait(error)
        self._streams.clear()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(OpenAIError(503, f"the engine is not available ({reason})",
                                              "service_unavailable", code="engine_unavailable"))
        self._pending.clear()
