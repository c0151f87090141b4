"""Process separation with real processes and the default model: the engine and the
HTTP side apart, either one dying, SIGTERM draining, nothing left behind."""
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_server_support import REPO, alive, children, free_port, start_serve, stop, wait_healthy

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 400, "ignore_eos": True, "stream": True}


def cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    log = tmp_path / f"{args[0]}-{time.monotonic_ns()}.log"
    return subprocess.Popen([sys.executable, "-m", "rustinfer.server.cli", *args],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO)


def metric(url: str, name: str) -> float:
    line = next(x for x in httpx.get(url + "/metrics").text.splitlines() if x.startswith(name + "{"))
    return float(line.split()[-1])


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_engine_and_server_apart(tmp_path, smollm2_gguf):
    sock = tmp_path / "sock"
    engine = cli(tmp_path, "engine", "--socket-dir", str(sock))
    servers = []
    try:
        port = free_port()
        servers.append(cli(tmp_path, "server", "--socket-dir", str(sock), "--port", str(port)))
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 240, servers[0])
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o700
        assert (sock / "engine.sock").is_socket()
        # The HTTP side dies mid-stream and comes back: the engine (and its model)
        # stays, and aborts the dead side's request.
        with httpx.stream("POST", url + "/v1/chat/completions", json=LONG, timeout=60) as r:
            lines = (line for line in r.iter_lines() if line)
            next(lines), next(lines)
            servers[0].kill()
            servers[0].wait()
        port = free_port()
        servers.append(cli(tmp_path, "server", "--socket-dir", str(sock), "--port", str(port)))
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        wait_healthy(url, 60, servers[1])
        assert time.monotonic() - started < 30 and engine.poll() is None
        deadline = time.monotonic() + 15
        while metric(url, "vllm:num_requests_running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(url, "vllm:num_requests_running") == 0
        assert metric(url, "vllm:kv_cache_usage_perc") == 0
        # The engine dies mid-stream: the client gets an error event, then [DONE].
        with httpx.stream("POST", url + "/v1/chat/completions", json=LONG, timeout=60) as r:
            lines = (line for line in r.iter_lines() if line)
            next(lines), next(lines)
            engine.kill()
            rest = list(lines)
        assert rest[-1] == "data: [DONE]" and "error" in json.loads(rest[-2][len("data: "):])
        assert httpx.get(url + "/health").status_code == 503
        r = httpx.post(url + "/v1/chat/completions", json={**LONG, "stream": False})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        servers[1].send_signal(signal.SIGTERM)
        assert servers[1].wait(30) == 0
    finally:
        for p in [engine, *servers]:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_sigterm_drains_and_leaves_no_children(tmp_path, smollm2_gguf):
    proc, url, log = start_serve(tmp_path, env={"RUSTINFER_API_KEY": "k3y"})
    try:
        (engine_pid,) = children(proc.pid)
        cmdline = Path(f"/proc/{engine_pid}/cmdline").read_bytes().split(b"\0")
        sock_dir = Path(cmdline[cmdline.index(b"--socket-dir") + 1].decode())
        assert httpx.get(url + "/health").status_code == 200          # open without the key
        assert httpx.get(url + "/v1/models").status_code == 401
        auth = {"Authorization": "Bearer k3y"}
        body = {**LONG, "max_tokens": 12}
        got = {}

        def stream():
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=auth,
                              timeout=120) as r:
                got["lines"] = []
                for line in r.iter_lines():
                    if line:
                        got["lines"].append(line)
                        if len(got["lines"]) == 2:
                            got["started"] = True
        t = threading.Thread(target=stream)
        t.start()
        deadline = time.monotonic() + 60
        while "started" not in got and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t.join(120)
        lines = got["lines"]
        assert lines[-1] == "data: [DONE]"
        finish = json.loads(lines[-2][len("data: "):])["choices"][0]["finish_reason"]
        assert finish == "length"        # drained: the answer ran to its end
        assert proc.wait(60) == 0
        assert wait_gone(engine_pid, 10) and children(proc.pid) == []
        assert not sock_dir.exists()
    finally:
        stop(proc)


def test_engine_exits_when_the_http_process_dies(tmp_path, smollm2_gguf):
    proc, url, log = start_serve(tmp_path)
    try:
        (engine_pid,) = children(proc.pid)
        cmdline = Path(f"/proc/{engine_pid}/cmdline").read_bytes().split(b"\0")
        sock_dir = Path(cmdline[cmdline.index(b"--socket-dir") + 1].decode())
        proc.kill()                       # no chance to clean up
        proc.wait()
        assert wait_gone(engine_pid, 10), "the engine outlived its HTTP process"
        assert not sock_dir.exists()      # the engine removed it on its way out
    finally:
        stop(proc)


def test_serve_exits_non_zero_when_its_engine_dies(tmp_path, smollm2_gguf):
    """As vLLM does: a dead engine is not coming back, so rustinfer-serve fails the
    in-flight request, shuts down and exits non-zero for its supervisor to restart it."""
    proc, url, log = start_serve(tmp_path)
    try:
        (engine_pid,) = children(proc.pid)
        cmdline = Path(f"/proc/{engine_pid}/cmdline").read_bytes().split(b"\0")
        sock_dir = Path(cmdline[cmdline.index(b"--socket-dir") + 1].decode())
        with httpx.stream("POST", url + "/v1/chat/completions", json=LONG, timeout=60) as r:
            lines = (line for line in r.iter_lines() if line)
            next(lines), next(lines)
            os.kill(engine_pid, signal.SIGKILL)
            rest = list(lines)
        assert rest[-1] == "data: [DONE]" and "error" in json.loads(rest[-2][len("data: "):])
        code = proc.wait(30)
        assert code == 1, log.read_text()[-3000:]      # failed, not interrupted (130)
        assert "engine process is gone" in log.read_text()
        assert children(proc.pid) == [] and not sock_dir.exists()
    finally:
        stop(proc)
