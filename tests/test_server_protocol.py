"""The engine link's wire format and socket placement, without any process."""
import os
import stat

import msgpack
import pytest

from rustinfer.runtime.engine_api import RequestEvent, TokenLogprob
from rustinfer.server import protocol
from rustinfer.server.ipc import address_for, private_dir, socket_in_use, socket_path


def test_round_trip_generate_and_events():
    frame = protocol.pack("generate", request_id="r1", prompt_token_ids=[1, 2, 3],
                          params={"max_tokens": 4, "logit_bias": {5: -1.0}})
    msg = protocol.unpack(frame)
    assert msg["type"] == "generate" and msg["prompt_token_ids"] == [1, 2, 3]
    assert msg["params"]["logit_bias"] == {5: -1.0}  # int keys survive
    ev = RequestEvent("r1", new_token_ids=[7], new_text="hi",
                      logprobs=[TokenLogprob(7, -0.5, [(7, -0.5), (8, -1.5)])])
    back = protocol.unpack(protocol.pack("events", events=[protocol.event_to_wire(ev)]))
    assert back["events"][0]["logprobs"][0]["top"] == [[7, -0.5], [8, -1.5]]


@pytest.mark.parametrize("frame, why", [
    (b"\xc1", "undecodable"),
    (msgpack.packb([1, 2]), "must be a map"),
    (msgpack.packb({"v": 99, "type": "ping"}), "protocol version"),
    (msgpack.packb({"v": protocol.PROTOCOL_VERSION, "type": "exec"}), "unknown message type"),
    (msgpack.packb({"v": protocol.PROTOCOL_VERSION, "type": "abort"}), "request_id"),
    (msgpack.packb({"v": protocol.PROTOCOL_VERSION, "type": "generate", "request_id": "x",
                    "prompt_token_ids": ["a"], "params": {}}), "list of integers"),
    (msgpack.packb({"v": protocol.PROTOCOL_VERSION, "type": "events", "events": [{"x": 1}]}),
     "request_id"),
    (msgpack.packb({"v": 1, "type": "ping", "x": msgpack.ExtType(1, b"")}), "extension"),
])
def test_bad_frames_are_refused(frame, why):
    with pytest.raises(protocol.ProtocolError, match=why):
        protocol.unpack(frame)


def test_size_cap(monkeypatch):
    monkeypatch.setattr(protocol, "MAX_MESSAGE_BYTES", 100)
    with pytest.raises(protocol.ProtocolError, match="cap"):
        protocol.pack("generate", request_id="r", prompt_token_ids=list(range(200)), params={})
    with pytest.raises(protocol.ProtocolError, match="cap"):
        protocol.unpack(b"\x00" * 101)


def test_private_dir(tmp_path):
    d = private_dir(tmp_path / "s")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o755)
    private_dir(d)  # ours but too open: tightened
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    (tmp_path / "link").symlink_to(d)
    with pytest.raises(PermissionError, match="symlink"):
        private_dir(tmp_path / "link")
    assert socket_path(address_for(d)) == d / "engine.sock"
    assert not socket_in_use(d / "engine.sock")
    with pytest.raises(ValueError, match="ipc"):
        socket_path("tcp://0.0.0.0:5555")



def test_a_schema_with_integers_past_64_bits_crosses_to_the_engine():
    """msgpack holds no integer past 64 bits; a JSON schema may (a bound of 10**400), so
    the server sends response_format as JSON text and SamplingParams reads it back. It was
    a 500 (OverflowError in the hand-off)."""
    from types import SimpleNamespace

    from rustinfer.runtime.sampling import SamplingParams
    from rustinfer.server.openai_types import build_params

    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 10**400}},
              "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}
    req = SimpleNamespace(logit_bias=None, stop_token_ids=None, n=1, ignore_eos=False,
                          min_tokens=0, seed=None, stop=None, skip_special_tokens=True,
                          include_stop_str_in_output=False, temperature=None, top_p=None,
                          top_k=None, min_p=None, presence_penalty=None,
                          frequency_penalty=None, repetition_penalty=None)
    params = build_params(req, max_tokens=8, vocab_size=100, logprobs=None, response_format=fmt)
    frame = protocol.pack("generate", request_id="r", prompt_token_ids=[1], params=params)
    back = SamplingParams(**protocol.unpack(frame)["params"])
    assert back.response_format == fmt and back.json_mode
