"""The real server (rustinfer-serve, default model) driven by the official openai
client (sync, async, streaming), raw HTTP, and headless Chromium on the web page.

One server for the module; every request is short (a few tokens) so the module
stays quick on a 2-core CPU.
"""
import asyncio
import json
import shutil
import threading
import time

import httpx
import openai
import pytest
from test_server_support import Browser, start_serve, stop

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_gguf):
    # 32 sequences per step: the concurrency test's streams all run in one batch.
    proc, url, log = start_serve(tmp_path_factory.mktemp("serve"), "--max-num-seqs", "32")
    # Warm up: the first steps of a fresh engine are slow.
    httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
               timeout=120)
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


def test_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_stream_equals_non_stream(client):
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                           max_completion_tokens=8)
    text = plain.choices[0].message.content
    assert "Paris" in text
    u = plain.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and u.completion_tokens <= 8
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_completion_tokens=8, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.model_dump() == u.model_dump()


def test_completions_text_ids_and_scoring(client, server):
    prompt = "The capital of France is"
    by_text = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
    ids = httpx.post(server + "/tokenize", json={"prompt": prompt}).json()["tokens"]
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    assert by_text.choices[0].text == by_ids.choices[0].text != ""
    assert by_ids.usage.prompt_tokens == len(ids)
    scored = client.completions.create(model=MODEL, prompt=prompt + " Paris", max_tokens=0,
                                       echo=True, logprobs=1, temperature=0)
    choice = scored.choices[0]
    assert choice.text == prompt + " Paris"
    lps = choice.logprobs.token_logprobs
    assert lps[0] is None and all(x <= 0 for x in lps[1:]) and len(lps) == len(ids) + 1
    assert "".join(choice.logprobs.tokens) == prompt + " Paris"


def test_chat_logprobs_and_sampling_params(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=3,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:  # greedy: the chosen token is the best one
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)
    seeded = [client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, temperature=1.0, top_p=0.9, seed=7,
        presence_penalty=0.5, frequency_penalty=0.5,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1}).choices[0].message.content
        for _ in range(2)]
    assert seeded[0] == seeded[1]
    n2 = client.chat.completions.create(model=MODEL, messages=QUESTION, n=2, max_tokens=2,
                                        stop=["\n"], extra_body={"ignore_eos": True})
    assert [c.index for c in n2.choices] == [0, 1]


def test_async_client(server):
    async def run():
        aclient = openai.AsyncOpenAI(base_url=server + "/v1", api_key="x", max_retries=0)
        questions = ["What is 2+2?", "Name a color.", "Say hi.", "What is the capital of Italy?"]
        replies = await asyncio.gather(*(aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=4, temperature=0)
            for q in questions))
        stream = await aclient.completions.create(model=MODEL, prompt="One, two,", max_tokens=3,
                                                  temperature=0, stream=True)
        pieces = [c.choices[0].text async for c in stream]
        await aclient.close()
        return replies, pieces
    replies, pieces = asyncio.run(run())
    assert all(r.choices[0].message.content for r in replies)
    assert "".join(pieces)


def test_32_concurrent_streams_no_cross_talk(server):
    """Each stream is forced (logit_bias) onto its own word: any mixing shows."""
    words = [" cat", " dog", " sun", " tree", " red", " blue", " car", " book", " fish", " rain",
             " king", " milk", " door", " bird", " gold", " star", " ship", " moon", " salt",
             " lake", " wind", " fire", " snow", " rock", " leaf", " bell", " rose", " wolf",
             " corn", " iron", " silk", " bear"]
    ids = [httpx.post(server + "/tokenize", json={"prompt": w}).json()["tokens"] for w in words]
    assert all(len(i) == 1 for i in ids)

    async def one(aclient, word, token):
        stream = await aclient.completions.create(
            model=MODEL, prompt=f"Word:{word}.", max_tokens=4, temperature=0, stream=True,
            logit_bias={str(token): 100})
        chunks = [c async for c in stream]
        assert len({c.id for c in chunks}) == 1
        return "".join(c.choices[0].text for c in chunks), [c.choices[0].finish_reason for c in chunks]

    async def run():
        aclient = openai.AsyncOpenAI(base_url=server + "/v1", api_key="x", max_retries=0,
                                     timeout=120)
        out = await asyncio.gather(*(one(aclient, w, i[0]) for w, i in zip(words, ids)))
        await aclient.close()
        return out
    for word, (text, finishes) in zip(words, asyncio.run(run())):
        assert text == word * 4
        assert [f for f in finishes if f] == ["length"]


def test_abandoned_streams_free_the_kv_cache(server):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 400, "stream": True,
            "ignore_eos": True}
    with httpx.Client(timeout=60) as http:
        for _ in range(4):
            with http.stream("POST", server + "/v1/chat/completions", json=body) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")  # the role chunk
                next(lines), next(lines)                   # ... and one token
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (metric(server, "vllm:num_requests_running") == 0
                and metric(server, "vllm:num_requests_waiting") == 0
                and metric(server, "vllm:kv_cache_usage_perc") == 0):
            break
        time.sleep(0.2)
    assert metric(server, "vllm:kv_cache_usage_perc") == 0
    assert metric(server, "vllm:num_requests_running") == 0
    assert metric(server, "vllm:generation_tokens_total") > 0


def test_raw_http_errors(server):
    r = httpx.post(server + "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "hello " * 9000}], "stream": True})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(server + "/v1/chat/completions", json={"model": "nope", "messages": QUESTION})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = httpx.post(server + "/v1/completions", content=b'{"prompt": "x", "n": 0}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model=MODEL, messages=[], max_tokens=2)


def test_json_mode(client, server):
    """response_format json_object / json_schema: the answer is one JSON object (of the
    schema), streamed or not; what cannot be held to, and JSON mode with tools, are 400s
    that say why."""
    ask = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
    r = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=64, temperature=0,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    chunks = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=64, temperature=0,
                                            response_format={"type": "json_object"}, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        r.choices[0].message.content
    city = {"type": "object", "properties": {"city": {"type": "string"},
                                              "country": {"enum": ["France", "Spain"]}},
            "required": ["city", "country"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL, messages=ask, max_tokens=64, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": city,
                                                                "strict": True}})
    answer = json.loads(r.choices[0].message.content)
    assert list(answer) == ["city", "country"] and answer["country"] in ("France", "Spain")
    # /v1/completions takes it too (vLLM's extension)
    capital = {"type": "json_schema", "json_schema": {"name": "c", "schema": {"enum": ["Paris", "Rome"]}}}
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=16,
                                  temperature=0, extra_body={"response_format": capital})
    assert r.choices[0].finish_reason == "stop" and json.loads(r.choices[0].text) in ("Paris", "Rome")
    body = {"model": MODEL, "messages": ask, "response_format": {"type": "json_schema",
                                                                   "json_schema": {"name": "x"}}}
    r = httpx.post(server + "/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    assert "json_schema.schema" in r.json()["error"]["message"]
    body["response_format"]["json_schema"]["schema"] = {"type": "string", "format": "ipv4network"}
    r = httpx.post(server + "/v1/chat/completions", json=body)
    assert r.status_code == 400 and "format 'ipv4network'" in r.json()["error"]["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    r = httpx.post(server + "/v1/chat/completions", json={**body, "tools": [tool],
                                                         "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and "tools" in r.json()["error"]["message"]
    # a prefilled answer would be followed by a second, whole JSON value
    prefill = ask + [{"role": "assistant", "content": '{"city": '}]
    r = httpx.post(server + "/v1/chat/completions", json={
        "model": MODEL, "messages": prefill, "continue_final_message": True,
        "add_generation_prompt": False, "max_tokens": 8, "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and "continue_final_message" in r.json()["error"]["message"]


def test_health_stays_fast_while_tokenizing_a_huge_prompt(server):
    result = {}
    huge = "the quick brown fox jumps over the lazy dog " * 60000   # ~2.6 MB, ~540k tokens

    def post():
        result["r"] = httpx.post(server + "/v1/completions", json={"model": MODEL, "prompt": huge},
                                 timeout=120)
    t = threading.Thread(target=post)
    t.start()
    worst = 0.0
    while t.is_alive():
        start = time.monotonic()
        assert httpx.get(server + "/health", timeout=10).status_code == 200
        worst = max(worst, time.monotonic() - start)
        time.sleep(0.02)
    t.join()
    assert result["r"].status_code == 400
    assert result["r"].json()["error"]["code"] == "context_length_exceeded"
    assert worst < 0.5, f"/health took {worst:.2f} s during tokenization"


def test_tokenizer_endpoints(server):
    ids = httpx.post(server + "/tokenize", json={"prompt": "Hello, world!"}).json()["tokens"]
    assert httpx.post(server + "/detokenize", json={"tokens": ids}).json()["prompt"] == "Hello, world!"
    info = httpx.get(server + "/tokenizer_info").json()
    assert info["model_max_length"] > 0 and info["eos_token_ids"]


def test_forced_tool_calls(client):
    """tool_choice "required" / named: always a call to a declared function, with a JSON
    object as arguments (the bug report: {"name": "Paris", "arguments": <the schema>})."""
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}
    clock = {"type": "function", "function": {
        "name": "get_time", "description": "Get the current time in a timezone",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}
    asks = [([weather], "required", "What is the weather in Paris?"),
            ([clock, weather], {"type": "function", "function": {"name": "get_weather"}},
             "What is the weather in Paris?"),
            ([weather, clock], "required", "What time is it in Tokyo?")]
    for tools, choice, question in asks:
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], tools=tools,
            tool_choice=choice, temperature=0, max_tokens=40, parallel_tool_calls=False)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None, c
        (call,) = c.message.tool_calls
        declared = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
        assert call.function.name in declared
        if isinstance(choice, dict):
            assert call.function.name == choice["function"]["name"]
        args = json.loads(call.function.arguments)
        assert isinstance(args, dict) and set(args) <= set(declared[call.function.name]["properties"])


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="Debian chromium + chromium-driver not installed (test.sh installs them)")
def test_web_page_in_headless_chromium(server, tmp_path):
    browser = Browser(tmp_path)
    try:
        browser.get(server + "/")
        browser.wait_for(f"return document.getElementById('model').textContent === '{MODEL}'", 30)
        browser.js("document.getElementById('temperature').value = '0';"
                   "document.getElementById('max_tokens').value = '8';")
        browser.type("#prompt", "What is the capital of France?")
        browser.click("#send")
        browser.wait_for("const m = document.querySelectorAll('.msg.assistant');"
                         "return m.length === 1 && m[0].dataset.state === 'done';", 120)
        answer = browser.js("return document.querySelector('.msg.assistant').textContent")
        assert "Paris" in answer and "finish: " in answer
        # Stop: a long answer, stopped once it has started streaming.
        browser.js("document.getElementById('max_tokens').value = '400';")
        browser.type("#prompt", "Write a very long story about a dragon.")
        browser.click("#send")
        browser.wait_for("const m = document.querySelectorAll('.msg.assistant');"
                         "return m.length === 2 && m[1].textContent.length > 10;", 120)
        browser.click("#stop")
        browser.wait_for("return document.querySelectorAll('.msg.assistant')[1].dataset.state "
                         "=== 'stopped' && !document.getElementById('send').disabled;", 20)
        browser.screenshot(tmp_path / "chat.png")
        deadline = time.monotonic() + 20
        while metric(server, "vllm:num_requests_running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(server, "vllm:num_requests_running") == 0
    finally:
        browser.close()
