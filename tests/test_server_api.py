"""The HTTP API over the real engine link, with a fake engine (fast, deterministic).

Response shapes, SSE framing, tools, errors, limits and disconnects. The same
server code runs against the real model in test_server_openai.py.
"""
import json
import shutil
import time

import httpx
import pytest
from test_server_support import Browser, FakeStack

MODEL = "fake-model"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, smollm2_gguf):
    s = FakeStack(tmp_path_factory.mktemp("fake"), smollm2_gguf, max_model_len=512)
    yield s
    s.close()


@pytest.fixture(scope="module")
def url(stack):
    return stack.http()


def chat(url, content="hi", **kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **kw}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def sse(response) -> list:
    """The data payloads of an SSE body; the last one must be [DONE]."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == "" and blocks[-2] == "data: [DONE]"
    return [json.loads(b[len("data: "):]) for b in blocks[:-2]]


def running(url) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            return float(line.split()[-1])
    raise AssertionError("no vllm:num_requests_running")


def wait_idle(url, timeout=5.0) -> None:
    deadline = time.monotonic() + timeout
    while running(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(url) == 0


def test_completion_shapes_and_usage(url):
    r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": ["Hello", "Bye"],
                                                  "max_tokens": 4, "n": 2})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["text"] == "The quick brown fox" and c["finish_reason"] == "length"
               for c in body["choices"])
    n_prompt = sum(httpx.post(url + "/tokenize", json={"prompt": p}).json()["count"]
                   for p in ("Hello", "Bye"))
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 16,
                             "total_tokens": n_prompt + 16}
    ids = httpx.post(url + "/v1/completions", json={"prompt": [504, 28, 1], "max_tokens": 2}).json()
    assert ids["usage"]["prompt_tokens"] == 3 and ids["choices"][0]["text"] == "The quick"


def test_echo_logprobs_scoring(url):
    prompt = "The capital of France is Paris"
    n_tokens = httpx.post(url + "/tokenize", json={"prompt": prompt}).json()["count"]
    body = httpx.post(url + "/v1/completions", json={
        "model": MODEL, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1}).json()
    choice = body["choices"][0]
    assert choice["text"] == prompt
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == n_tokens and "".join(lp["tokens"]) == prompt
    assert lp["token_logprobs"][0] is None and all(x < 0 for x in lp["token_logprobs"][1:])
    assert lp["text_offset"][0] == 0 and lp["top_logprobs"][1]
    assert body["usage"]["completion_tokens"] == 0


def test_completion_stream_matches_non_stream(url):
    req = {"model": MODEL, "prompt": "Hi", "max_tokens": 6, "temperature": 0, "logprobs": 2}
    plain = httpx.post(url + "/v1/completions", json=req).json()
    chunks = sse(httpx.post(url + "/v1/completions", json={
        **req, "stream": True, "stream_options": {"include_usage": True}}))
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == \
        plain["choices"][0]["text"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length" and finishes.count("length") == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    tokens = sum((c["choices"][0]["logprobs"]["tokens"] for c in chunks if c["choices"]), [])
    assert tokens == plain["choices"][0]["logprobs"]["tokens"]


def test_chat_stream_is_openai_shaped(url):
    plain = chat(url, max_completion_tokens=5, n=2).json()
    assert plain["object"] == "chat.completion"
    chunks = sse(chat(url, max_completion_tokens=5, n=2, stream=True,
                      stream_options={"include_usage": True}))
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"]
               for c in chunks)
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert [m["finish_reason"] for m in mine].count("length") == 1
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "length"
        text = "".join(m["delta"].get("content", "") for m in mine)
        assert text == plain["choices"][i]["message"]["content"]
    assert chunks[-1]["usage"] == plain["usage"]
    assert plain["usage"]["completion_tokens"] == 10


def test_chat_logprobs_and_stop(url):
    body = chat(url, max_tokens=3, logprobs=True, top_logprobs=2).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["The", " quick", " brown"]
    assert content[1]["bytes"] == list(b" quick") and len(content[1]["top_logprobs"]) == 2
    stopped = chat(url, max_tokens=50, stop=["fox"]).json()["choices"][0]
    assert stopped["message"]["content"] == "The quick brown " and stopped["finish_reason"] == "stop"
    assert stopped["stop_reason"] == "fox"


def test_tool_calls(url):
    body = chat(url, "[[tool]] weather in Paris?", tools=TOOLS).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    chunks = sse(chat(url, "[[tool]] weather?", tools=TOOLS, stream=True))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert not any(d.get("content") for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # Plain text with tools on is still content, streamed.
    text = chat(url, "[[short]]", tools=TOOLS).json()["choices"][0]
    assert text["message"]["content"] == "Hi there!" and text["finish_reason"] == "stop"


def test_named_tool_choice_and_template_prompt(url):
    forced = {"type": "function", "function": {"name": "get_weather"}}
    ids = httpx.post(url + "/tokenize", json={"messages": [{"role": "user", "content": "x"}]}).json()
    assert ids["count"] > 0
    bad = chat(url, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tool_choice"
    # city is optional: the (fake) model may choose no arguments, a complete call at once.
    # More in test_server_tools.py.
    r = chat(url, "[[short]]", tools=TOOLS, tool_choice=forced)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    if choice["finish_reason"] == "tool_calls":
        assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_weather"]
    else:  # the fake's "Hi there!" as the city's value, then EOS: not a complete call
        assert choice["message"]["content"].startswith('{"name": "get_weather"')


BAD_REQUESTS = [
    (b"{not json", "/v1/chat/completions", None),
    (b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
     "/v1/chat/completions", None),
    ({"messages": []}, "/v1/chat/completions", "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "/v1/chat/completions", "messages"),
    ({"messages": "hi"}, "/v1/chat/completions", "messages"),
    ({"n": 0}, "/v1/chat/completions", "n"),
    ({"n": 500}, "/v1/chat/completions", "n"),
    ({"max_tokens": -1}, "/v1/chat/completions", "max_tokens"),
    ({"max_tokens": 0}, "/v1/chat/completions", "max_tokens"),
    ({"temperature": -0.5}, "/v1/chat/completions", "temperature"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
     "/v1/chat/completions", "temperature"),
    ({"top_p": 0}, "/v1/chat/completions", "top_p"),
    ({"logprobs": True, "top_logprobs": 21}, "/v1/chat/completions", "top_logprobs"),
    ({"top_logprobs": 2}, "/v1/chat/completions", "top_logprobs"),
    ({"logit_bias": {"999999": 1}}, "/v1/chat/completions", "logit_bias"),
    ({"logit_bias": {"5": 500}}, "/v1/chat/completions", "logit_bias"),
    ({"prompt": [1, -5]}, "/v1/completions", "prompt"),
    ({"prompt": [1, 10 ** 9]}, "/v1/completions", "prompt"),
    ({"prompt": []}, "/v1/completions", "prompt"),
    ({"prompt": "x", "logprobs": 30}, "/v1/completions", "logprobs"),
    # integers MessagePack cannot carry to the engine (they were 500s)
    ({"prompt": "x", "seed": 2 ** 64}, "/v1/completions", "seed"),
    ({"seed": -(2 ** 63) - 1}, "/v1/chat/completions", "seed"),
    ({"prompt": "x", "top_k": 10 ** 20}, "/v1/completions", "top_k"),
    ({}, "/v1/completions", "prompt"),
    ([1, 2], "/v1/completions", None),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "/v1/completions", None),
    (b'{"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": '
     + b'{"a": ' * 500 + b"1" + b"}" * 501, "/v1/chat/completions", None),
]


@pytest.mark.parametrize("body, path, param", BAD_REQUESTS)
def test_invalid_requests_are_openai_400s(url, body, path, param):
    if isinstance(body, dict) and path.endswith("chat/completions"):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], **body}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert "detail" not in r.json()


def test_not_found_and_method_errors(url):
    r = chat(url, model="gpt-9")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(url + "/v1/models/gpt-9").status_code == 404
    assert httpx.get(url + "/v1/models/" + MODEL).json()["id"] == MODEL
    r = httpx.get(url + "/v1/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_context_length_exceeded_before_any_sse_byte(url):
    r = httpx.post(url + "/v1/completions", json={"prompt": [1] * 600, "stream": True})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = chat(url, "word " * 700, stream=True)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_failure_mid_stream(url):
    chunks = sse(chat(url, "[[fail]]", stream=True))
    assert "error" in chunks[-1] and chunks[-1]["error"]["message"]
    assert chat(url, "[[fail]]").status_code == 500


def test_tokenizer_endpoints(url):
    tok = httpx.post(url + "/tokenize", json={"prompt": "Hello world"}).json()
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 512
    assert httpx.post(url + "/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"] == \
        "Hello world"
    info = httpx.get(url + "/tokenizer_info").json()
    assert info["vocab_size"] == 49152 and "im_start" in info["chat_template"]
    assert httpx.post(url + "/detokenize", json={"tokens": [-1]}).status_code == 400


def test_metrics_names(url):
    chat(url, max_tokens=2)
    text = httpx.get(url + "/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_count",
                 'vllm:request_success_total{finished_reason="length"'):
        assert name in text, name


def test_disconnect_aborts_stream_and_non_stream(url):
    with httpx.stream("POST", url + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "[[slow]]"}], "max_tokens": 400,
            "stream": True}) as r:
        lines = r.iter_lines()
        next(lines), next(lines), next(lines)
        assert running(url) == 1
    wait_idle(url)
    # Non-streaming: the client gives up (times out and closes the connection).
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json={"prompt": "[[slow]]", "max_tokens": 400},
                   timeout=0.5)
    wait_idle(url)


def test_abort_after_close_is_quiet(stack):
    """A forced shutdown (a second Ctrl-C) closes the engine link while responses still
    clean up: their aborts must not fail on the closed socket."""
    import asyncio

    from rustinfer.server.engine_client import EngineClient, RequestStream

    async def run():
        client = EngineClient(stack.address)
        await client.start()
        await asyncio.wait_for(client.ready.wait(), 10)
        client._streams["r1"] = RequestStream("r1", 1)
        await client.close()
        await client.abort("r1")
        assert not client.alive

    asyncio.run(run())


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="Debian chromium + chromium-driver not installed (test.sh installs them)")
def test_web_page_keeps_only_answered_turns(url, tmp_path):
    """The chat page's conversation: a message the server refused (too long) is not sent
    again with the next one, and Clear during an answer leaves nothing of it behind."""
    browser = Browser(tmp_path)
    answered = ("const m = document.querySelectorAll('.msg.assistant');"
                "return m.length === arguments[0] && m[m.length - 1].dataset.state === 'done';")
    try:
        browser.get(url + "/")
        browser.wait_for(f"return document.getElementById('model').textContent === '{MODEL}'", 30)
        browser.js("document.getElementById('max_tokens').value = '4';")
        browser.type("#prompt", "word " * 700)
        browser.click("#send")
        browser.wait_for("const m = document.querySelector('.msg.assistant');"
                         "return m && m.dataset.state === 'error' && "
                         "!document.getElementById('send').disabled;", 30)
        assert "maximum context length" in browser.js(
            "return document.querySelector('.msg.assistant').textContent")
        assert browser.js("return history.length") == 0
        browser.type("#prompt", "hi")
        browser.click("#send")
        browser.wait_for(answered, 30, 2)
        assert browser.js("return history.map(m => m.role)") == ["user", "assistant"]
        # Clear while an answer streams: the answer is stopped and not kept.
        browser.js("document.getElementById('max_tokens').value = '400';")
        browser.type("#prompt", "[[slow]]")
        browser.click("#send")
        browser.wait_for("const m = document.querySelectorAll('.msg.assistant');"
                         "return m.length === 3 && m[2].textContent.length > 10;", 30)
        browser.click("#clear")
        browser.wait_for("return !document.getElementById('send').disabled;", 20)
        assert browser.js("return history.length") == 0
        wait_idle(url)
        browser.js("document.getElementById('max_tokens').value = '4';")
        browser.type("#prompt", "hi")
        browser.click("#send")
        browser.wait_for(answered, 30, 1)
        assert browser.js("return history.map(m => m.role)") == ["user", "assistant"]
    finally:
        browser.close()


def test_shutdown_deadline_ends_requests_with_an_error(stack, url, tmp_path):
    """SIGTERM with answers still running past --shutdown-timeout: a stream ends with an
    error event and [DONE], a plain request with a 503 in OpenAI's shape (uvicorn used to
    cancel them: a stream cut without either, a plain-text 500), and the engine frees them."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from test_server_support import free_port, wait_healthy

    port = free_port()
    mine = f"http://127.0.0.1:{port}"
    sock_dir = Path(stack.address[len("ipc://"):]).parent
    proc = subprocess.Popen([sys.executable, "-m", "rustinfer.server.cli", "server",
                             "--socket-dir", str(sock_dir), "--port", str(port),
                             "--shutdown-timeout", "1"],
                            stdout=(tmp_path / "log").open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ})
    got = {}

    def stream():
        with httpx.stream("POST", mine + "/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": "[[slow]]"}], "max_tokens": 2000,
                "stream": True}) as r:
            got["stream"] = [line for line in r.iter_lines() if line]

    def plain():
        got["plain"] = httpx.post(mine + "/v1/completions", timeout=60, json={
            "prompt": "[[slow]]", "max_tokens": 2000})

    try:
        wait_healthy(mine, 60, proc)
        threads = [threading.Thread(target=f) for f in (stream, plain)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while running(mine) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = got["stream"]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][len("data: "):])["error"]
    assert error["code"] == "server_shutting_down" and "shutting down" in error["message"]
    r = got["plain"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutting_down"
    wait_idle(url)                       # aborted in the engine too
    assert "Traceback" not in (tmp_path / "log").read_text()


def test_api_key(stack, monkeypatch):
    url = stack.http(api_key="s3cret")
    assert httpx.get(url + "/health").status_code == 200
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/tokenize"),
                         ("POST", "/v1/chat/completions"), ("GET", "/tokenizer_info")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.request(method, url + path, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    ok = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    from rustinfer.server import cli
    monkeypatch.setenv("RUSTINFER_API_KEY", "from-env")
    import argparse
    p = argparse.ArgumentParser()
    cli._http_args(p)
    args = p.parse_args([])
    assert args.api_key == "from-env" and args.host == "127.0.0.1"


def test_body_limit(stack):
    url = stack.http(max_body_bytes=2000)
    r = chat(url, "x" * 5000)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the cap applies while reading
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'
    r = httpx.post(url + "/v1/completions", content=chunked())
    assert r.status_code == 413
    assert chat(url, "[[short]]").status_code == 200


def test_queue_full_is_429(stack):
    url = stack.http(max_pending=1)
    with httpx.stream("POST", url + "/v1/completions", json={
            "prompt": "[[slow]]", "max_tokens": 400, "stream": True}) as r:
        lines = r.iter_lines()  # kept: dropping the iterator closes the connection
        next(lines)
        second = chat(url, "[[short]]")
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert second.json()["error"]["type"] == "rate_limit_error"
    deadline = time.monotonic() + 5
    while chat(url, "[[short]]").status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chat(url, "[[short]]").status_code == 200


def test_requests_before_the_engine_is_up_are_503_not_404(stack, tmp_path):
    """While the engine loads the server does not know the model's name yet: a request
    must hear "not available, retry" rather than "no such model"."""
    from rustinfer.server.ipc import address_for, private_dir

    url = stack.http(address=address_for(private_dir(tmp_path / "no-engine")), wait=False)
    for r in (chat(url), httpx.get(f"{url}/v1/models/{MODEL}"),
              httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi"})):
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "engine_unavailable" and r.headers["Retry-After"]
    assert httpx.get(url + "/health").status_code == 503


def test_engine_gone(tmp_path, smollm2_gguf):
    s = FakeStack(tmp_path, smollm2_gguf)
    try:
        url = s.http()
        with httpx.stream("POST", url + "/v1/completions", json={
                "prompt": "[[slow]]", "max_tokens": 400, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
            s.engine_server.drain_timeout = 0  # die now, not after draining
            s.engine_server.stop_requested.set()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and "error" in json.loads(rest[-2][6:])
        assert httpx.get(url + "/health").status_code == 503
        r = chat(url)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
    finally:
        s.close()
