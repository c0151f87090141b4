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

