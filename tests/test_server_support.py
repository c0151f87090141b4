"""Helpers for the server tests (no tests here): servers on free loopback ports.

- `FakeStack`: the engine loop serving a FakeEngine in a thread, and any number
  of HTTP apps (each its own uvicorn in a thread) attached to it. Fast: no model.
- `start_serve`: the real `rustinfer-serve` as a subprocess, on the default model.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


class FakeStack:
    def __init__(self, tmp_path: Path, model_path: Path, **engine_kw):
        from fake_engine import FakeEngine

        from rustinfer.runtime.tokenizer import Tokenizer
        from rustinfer.server.engine_process import EngineServer
        from rustinfer.server.ipc import address_for, private_dir

        self.engine = FakeEngine(Tokenizer.load(model_path), **engine_kw)
        self.address = address_for(private_dir(tmp_path / "sock"))
        self.engine_server = EngineServer(self.engine, self.address, model_path=str(model_path))
        self.thread = threading.Thread(target=self.engine_server.serve, daemon=True)
        self.thread.start()
        self.servers = []

    def http(self, address: str | None = None, wait: bool = True, **kw) -> str:
        """Start an HTTP app on this engine (or on `address`, where maybe none listens);
        returns its base URL, once /health says 200 unless wait is False. `kw`: the
        ServerState's, create_app's max_body_bytes / on_engine_lost, and `process`
        (a Popen the client watches as if it were the engine's)."""
        import uvicorn

        from rustinfer.server.app import create_app
        from rustinfer.server.engine_client import EngineClient
        from rustinfer.server.state import ServerState

        app_kw = {k: kw.pop(k) for k in ("max_body_bytes", "on_engine_lost") if k in kw}
        client = EngineClient(address or self.address, process=kw.pop("process", None))
        state = ServerState(client, **kw)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(state, **app_kw), host="127.0.0.1",
                                               port=port, log_level="warning", loop="asyncio",
                                               http="h11"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        self.servers.append((server, thread))
        url = f"http://127.0.0.1:{port}"
        if wait:
            wait_healthy(url, 30)
        else:
            while not server.started:
                time.sleep(0.05)
        return url

    def close(self) -> None:
        for server, thread in self.servers:
            server.should_exit = True
        for server, thread in self.servers:
            thread.join(10)
        self.engine_server.stop_requested.set()
        self.thread.join(10)


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rustinfer.server.cli", "serve", *args]


def start_serve(tmp_path: Path, *args: str, timeout: float = 240,
                env: dict | None = None) -> tuple[subprocess.Popen, str, Path]:
    """rustinfer-serve (the default model unless args say --model) on a free port;
    returns (process, base URL, log file)."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    proc = subprocess.Popen(
        serve_command("--port", str(port), "--log-level", "warning", *args),
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
        env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout, proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"rustinfer-serve did not start; log:\n{log.read_text()[-4000:]}")
    return proc, url, log


def children(pid: int) -> list[int]:
    """Direct children of `pid` still alive (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Browser:
    """Headless Chromium through chromedriver's W3C WebDriver HTTP API (no selenium).

    Flags as this machine needs them: no sandbox (root), no GPU, and no
    background networking, whose connections a closed network refuses."""

    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

    def __init__(self, tmp_path: Path, chromium="/usr/bin/chromium", driver="/usr/bin/chromedriver"):
        port = free_port()
        self.driver = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError("chromedriver did not start")
            time.sleep(0.1)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1200,800",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium, "args": args}}}}
        reply = self.http.post("/session", json=caps).json()["value"]
        if "sessionId" not in reply:
            self.close()
            raise RuntimeError(f"no browser session: {reply}")
        self.session = f"/session/{reply['sessionId']}"

    def _call(self, method: str, path: str, body=None):
        r = self.http.request(method, self.session + path, json=body)
        value = r.json().get("value")
        if r.status_code != 200:
            raise RuntimeError(f"webdriver {path}: {value}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        return self._call("POST", "/element", {"using": "css selector", "value": css})[self.ELEMENT]

    def click(self, css: str) -> None:
        self._call("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        self._call("POST", f"/element/{self.find(css)}/value", {"text": text})

    def js(self, script: str, *args):
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_for(self, script: str, timeout: float = 60.0, *args):
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"browser: {script!r} still false after {timeout} s")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        import base64
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))

    def close(self) -> None:
        try:
            if hasattr(self, "session"):
                self.http.delete(self.session)
        finally:
            self.driver.terminate()
            self.driver.wait(10)
