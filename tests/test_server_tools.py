"""Forced tool calls, request validation and the engine-death exit, on the fake engine
(fast, deterministic), plus unit tests of server/tools.py.

The fake engine's [[args]] marker plays the small model of the bug report: asked to
go on from `{"name": "` it writes `Paris", "parameters": <the JSON schema>}`; from
`"parameters":` it copies the schema; only after a forced key does it write a value.
"""
import asyncio
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fake_engine import ARGS_SCRIPTS
from test_server_api import MODEL, chat, sse
from test_server_support import FakeStack

from rustinfer.server import tools
from rustinfer.server.errors import OpenAIError

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}
NO_ARGS = {"type": "function", "function": {"name": "ping", "description": "Ping"}}
SCHEMA = WEATHER["function"]["parameters"]
DECLARED = {t["function"]["name"]: t["function"].get("parameters") for t in (WEATHER, TIME, NO_ARGS)}


# ------------------------------------------------------------------ unit tests ---
def starts(tool_list, names) -> list[str]:
    pairs = tools.call_starts(tool_list, names)
    assert all(text.startswith(json.dumps({"name": n})[:-1]) for n, text in pairs)
    return [text for _, text in pairs]


def test_scan_and_parse_calls():
    text = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; ' \
           '{"name": "get_time", "arguments": "{\\"timezone\\": \\"UTC\\"}"}'
    calls = tools.parse_tool_calls(text, DECLARED)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"},
                                                                      {"timezone": "UTC"}]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert tools.parse_tool_calls("The answer is 4.", DECLARED) is None
    assert tools.parse_tool_calls('{"name": "get_weather", "parameters": {', DECLARED) is None
    # The bug report's answer: an undeclared name, the schema as arguments.
    reported = '{"name": "Paris", "parameters": ' + json.dumps(SCHEMA) + "}"
    assert tools.parse_tool_calls(reported, DECLARED) is None
    assert tools.parse_tool_calls(reported) is not None          # any name, without tools
    for args in (json.dumps(SCHEMA), '{"type": "object", "properties": {"x": {}}}', '"Paris"',
                 "[1, 2]", "3"):
        text = '{"name": "get_weather", "parameters": ' + args + "}"
        assert tools.parse_tool_calls(text, DECLARED) is None, args
    no_args = tools.parse_tool_calls('{"name": "ping"}', DECLARED)
    assert no_args[0]["function"]["arguments"] == "{}"


def test_scan_states_for_streaming():
    call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert tools.scan_calls(call[:-3], DECLARED) == ([], tools.MORE)
    assert tools.scan_calls(call, DECLARED) == ([("get_weather", '{"city": "Paris"}')], tools.MORE)
    # Chatter after a complete call ends the answer; so does a second call past max_calls.
    calls, state = tools.scan_calls(call + "\n\nThe weather is", DECLARED)
    assert state == tools.DONE and len(calls) == 1
    assert tools.scan_calls(call, DECLARED, max_calls=1)[1] == tools.MORE
    assert tools.scan_calls(call + "; {", DECLARED, max_calls=1)[1] == tools.DONE
    assert tools.scan_calls(call + "; {", DECLARED)[1] == tools.MORE
    assert tools.scan_calls("Sure, here", DECLARED) == ([], tools.NOT_A_CALL)
    calls, state = tools.scan_calls(call + '; {"name": "nope", "parameters": {}}', DECLARED)
    assert state == tools.DONE and [c[0] for c in calls] == ["get_weather"]


def test_forced_names_and_call_starts():
    both = [WEATHER, TIME]
    assert tools.forced_names(both, "auto") is None and tools.forced_names(both, None) is None
    assert tools.forced_names(both, "required") == ["get_weather", "get_time"]
    named = {"type": "function", "function": {"name": "get_time"}}
    assert tools.forced_names(both, named) == ["get_time"]
    for bad in ({"type": "function", "function": {"name": "nope"}}, {"type": "x"}, "sometimes"):
        with pytest.raises(OpenAIError) as e:
            tools.forced_names(both, bad)
        assert e.value.status == 400 and e.value.param == "tool_choice"
    # A required key is forced; optional keys (or no arguments) are the model's choice;
    # a function without parameters is called whole; no trailing space.
    assert starts(both, ["get_weather"]) == \
        ['{"name": "get_weather", "parameters": {"city": "']
    assert starts(both, ["get_time"]) == [
        '{"name": "get_time", "parameters": {"timezone": "', '{"name": "get_time", "parameters": {}}']
    typed = {"type": "function", "function": {"name": "f", "parameters": {"properties": {
        "n": {"type": "integer"}, "xs": {"type": "array"}, "o": {"type": "object"}, "any": {}}}}}
    assert starts([typed], ["f"]) == ['{"name": "f", "parameters": {"n":',
                                                 '{"name": "f", "parameters": {"xs": [',
                                                 '{"name": "f", "parameters": {"o": {',
                                                 '{"name": "f", "parameters": {"any":',
                                                 '{"name": "f", "parameters": {}}']
    assert starts([NO_ARGS], ["ping"]) == ['{"name": "ping", "parameters": {}}']
    free = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert starts([free], ["f"]) == ['{"name": "f", "parameters":']
    many = [{"type": "function", "function": {"name": f"f{i}", "parameters": {
        "type": "object", "properties": {f"k{j}": {} for j in range(10)}}}} for i in range(10)]
    assert starts(many, [f"f{i}" for i in range(10)]) == \
        [f'{{"name": "f{i}", "parameters":' for i in range(10)]
    with pytest.raises(OpenAIError, match="more than once"):
        tools.check_tools([WEATHER, WEATHER])


def test_close_forced_call_holds_the_model_to_the_call_shape():
    head = '{"name": "get_weather", "parameters": {"city": "'
    closed = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    # The real model's answers: the schema's "type" after the value; an undeclared key;
    # a key added to the call itself. Each is cut where it leaves the shape.
    for rest in ('Paris", "type": "string"}}', 'Paris", "temperature": 25, "temp',
                 'Paris", "temperature"', 'Paris"}, "type": "object"', 'Paris", "city": "x"'):
        text = tools.close_forced_call(head + rest, SCHEMA)
        assert text in (None, closed), rest
    assert tools.close_forced_call(head + 'Paris", "type": "string"}}', SCHEMA) == closed
    assert tools.close_forced_call(head + 'Paris"}, "type"', SCHEMA) == closed
    # Still in shape (or complete): nothing to do; strings may hold anything.
    for rest in ('Par', 'Paris"', 'Paris"}', 'Paris"}}', 'Paris\\", \\"type\\": 1, {]"'):
        assert tools.close_forced_call(head + rest, SCHEMA) is None, rest
    two = {"type": "object", "properties": {"a": {"type": "object"}, "b": {}}}
    text = '{"name": "f", "parameters": {"a": {"x": [1, {"y": "}"}]}, "b": 2, "c": 3}'
    assert tools.close_forced_call(text, two) == \
        '{"name": "f", "parameters": {"a": {"x": [1, {"y": "}"}]}, "b": 2}}'
    # A free-form object takes any keys, but the call still ends after it.
    free = '{"name": "f", "parameters": {"x": 1, "y": 2}'
    assert tools.close_forced_call(free, {"type": "object"}) is None
    assert tools.close_forced_call(free + ', "z"', {"type": "object"}) == free + "}"


def test_pick_start_follows_the_sampler():
    candidates = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7, 8]]
    seen = []

    def run(choices):
        seen.clear()

        async def sample(prefix, allowed):
            seen.append((list(prefix), set(allowed)))
            return choices[len(seen) - 1]
        return asyncio.run(tools.pick_start(candidates, sample))

    assert run([3, 5]) == 1
    assert seen == [([1, 2], {3, 7}), ([1, 2, 3], {4, 5})]
    assert run([7]) == 2 and len(seen) == 1
    assert asyncio.run(tools.pick_start([[1, 2]], None)) == 0   # one candidate: no step
    with pytest.raises(RuntimeError, match="outside"):
        run([9])


# ---------------------------------------------------------- over HTTP, fake engine ---
@pytest.fixture(scope="module")
def stack(tmp_path_factory, smollm2_gguf):
    s = FakeStack(tmp_path_factory.mktemp("tools"), smollm2_gguf, max_model_len=1024)
    yield s
    s.close()


@pytest.fixture(scope="module")
def url(stack):
    return stack.http()


def only_call(body) -> tuple[str, dict]:
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    return call["function"]["name"], json.loads(call["function"]["arguments"])


def test_required_with_one_tool_is_a_call_to_it(url):
    """The bug report: required + one tool gave {"name": "Paris", "arguments": <schema>}."""
    r = chat(url, "[[args]] What is the weather in Paris?", tools=[WEATHER],
             tool_choice="required", temperature=0)
    assert only_call(r.json()) == ("get_weather", {"city": "Paris"})
    # The call ends where the model leaves its shape (the schema's "type" added as an
    # argument): what follows is neither returned nor generated.
    count = lambda text: httpx.post(url + "/tokenize", json={"prompt": text}).json()["count"]
    assert r.json()["usage"]["completion_tokens"] <= count('Paris", "type"') + 1
    assert count('Paris", "type"') + 1 < count(ARGS_SCRIPTS[2][1])


def test_named_tool_choice_forces_that_function(url):
    named = {"type": "function", "function": {"name": "get_weather"}}
    body = chat(url, "[[args]] Paris?", tools=[TIME, WEATHER], tool_choice=named).json()
    assert only_call(body) == ("get_weather", {"city": "Paris"})
    # Even when the model would talk instead (the default script), it is not content
    # posing as a call: no call can be made of it, so it is content, finish "length".
    plain = chat(url, "Paris?", tools=[WEATHER], tool_choice=named, max_tokens=5).json()
    choice = plain["choices"][0]
    assert choice["finish_reason"] == "length" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"].startswith('{"name": "get_weather", "parameters": {"city":')


def test_required_with_several_tools_lets_the_model_pick_a_declared_one(url):
    for expected in ("get_time", "get_weather"):
        body = chat(url, f"[[args]] [[prefer:{expected}]]", tools=[WEATHER, TIME],
                    tool_choice="required", parallel_tool_calls=False).json()
        name, args = only_call(body)
        assert name == expected and isinstance(args, dict)
    # No preference: still a declared name (the fake picks the lowest allowed token).
    # With parallel calls allowed, the fake's answer after get_time({}) is a second call.
    body = chat(url, "[[args]]", tools=[WEATHER, TIME], tool_choice="required").json()
    calls = body["choices"][0]["message"]["tool_calls"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert {c["function"]["name"] for c in calls} <= {"get_weather", "get_time"}
    assert all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in calls)


def test_forced_call_of_a_function_without_arguments(url):
    body = chat(url, "ping it", tools=[NO_ARGS], tool_choice="required").json()
    assert only_call(body) == ("ping", {})


def test_forced_call_streamed_and_with_n(url):
    chunks = sse(chat(url, "[[args]] Paris", tools=[WEATHER], tool_choice="required", n=2,
                      stream=True, stream_options={"include_usage": True}))
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        calls = [d["delta"]["tool_calls"][0] for d in mine if "tool_calls" in d["delta"]]
        assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
        assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
        assert not any(d["delta"].get("content") for d in mine)
        assert [d["finish_reason"] for d in mine if d["finish_reason"]] == ["tool_calls"]
    script = httpx.post(url + "/tokenize", json={"prompt": ARGS_SCRIPTS[2][1]}).json()["count"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] < 2 * script


def test_auto_keeps_undeclared_or_schema_calls_as_content(url):
    """With tool_choice auto the model may answer in JSON: only a call to a declared
    tool with object arguments is a call."""
    # [[args]] on a free prompt gives a proper call ...
    assert only_call(chat(url, "[[args]]", tools=[WEATHER]).json())[0] == "get_weather"
    # ... and the same answer with no such tool declared is content.
    body = chat(url, "[[args]]", tools=[TIME]).json()["choices"][0]
    assert body["finish_reason"] == "stop" and body["message"]["content"].startswith('{"name"')


# ------------------------------------------------------------------ validation ---
BAD = [
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "messages", "only text"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
     "messages", "only text"),
    ({"messages": [{"role": "user", "content": None}]}, "messages", "null"),
    ({"messages": [{"role": "user"}]}, "messages", "null"),
    ({"messages": [{"role": "system", "content": None}, {"role": "user", "content": "x"}]},
     "messages", "null"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}]},
     "messages", "tool_calls"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions", "tools"),
    ({"function_call": "auto"}, "function_call", "tool_choice"),
    ({"modalities": ["text", "audio"]}, "modalities", "text"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "text"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "stream"),
    ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options", "stream"),
    ({"max_tokens": -1}, "max_tokens", "at least 1"),
    ({"max_tokens": 0}, "max_tokens", "at least 1"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "at least 1"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "more than once"),
]


@pytest.mark.parametrize("body, param, words", BAD)
def test_refused_chat_requests(url, body, param, words):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], **body}
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert words in err["message"], err["message"]


def test_refused_elsewhere_and_accepted_neighbours(url):
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "stream_options": {
        "include_usage": True}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
    r = httpx.post(url + "/tokenize", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})
    assert r.status_code == 400 and "only text" in r.json()["error"]["message"]
    # max_tokens 0 still scores a prompt on /v1/completions.
    r = httpx.post(url + "/v1/completions", json={"prompt": "x y", "max_tokens": 0, "echo": True})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "x y"
    ok = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "[[short]] a"},
                                                   {"type": "text", "text": "b"}]}]},
        {"messages": [
            {"role": "user", "content": "[[short]] weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], "tools": [WEATHER]},
        {"modalities": ["text"], "stream_options": None, "metadata": {"x": "y"},
         "store": False, "service_tier": "auto"},
    ]
    for body in ok:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "[[short]]"}], **body}
        r = httpx.post(url + "/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------- engine death ---
def test_server_stops_when_its_engine_process_dies(tmp_path, smollm2_gguf):
    """A dead engine child is not coming back: after failing the in-flight stream with
    an error event, the app calls on_engine_lost (cli.py: stop uvicorn, exit non-zero)."""
    s = FakeStack(tmp_path, smollm2_gguf)
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    lost = threading.Event()
    try:
        url = s.http(process=stand_in, on_engine_lost=lost.set)
        assert not lost.wait(1.0)
        with httpx.stream("POST", url + "/v1/completions", json={
                "prompt": "[[slow]]", "max_tokens": 400, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
            stand_in.kill()
            s.engine_server.drain_timeout = 0
            s.engine_server.stop_requested.set()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and "error" in json.loads(rest[-2][6:])
        assert lost.wait(5), "on_engine_lost was not called"
        assert httpx.get(url + "/health").status_code == 503
    finally:
        if stand_in.poll() is None:
            stand_in.kill()
        stand_in.wait()
        s.close()


def test_standalone_server_keeps_waiting_for_its_engine(tmp_path, smollm2_gguf):
    """Without an engine process of its own (rustinfer-server), a lost engine may be
    restarted apart: the server stays up and answers 503 meanwhile."""
    s = FakeStack(tmp_path, smollm2_gguf)
    lost = threading.Event()
    try:
        url = s.http(on_engine_lost=lost.set)
        s.engine_server.drain_timeout = 0
        s.engine_server.stop_requested.set()
        deadline = time.monotonic() + 5
        while httpx.get(url + "/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(url + "/health").status_code == 503
        assert not lost.wait(1.0)
    finally:
        s.close()
