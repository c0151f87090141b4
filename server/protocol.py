"""The wire protocol between the HTTP process and the engine process.

Every ZeroMQ message is one frame holding one MessagePack map with a `type`
and the protocol version `v`. MessagePack, never pickle: a peer that can write
to the socket must not be able to run code in the other process. Each map is
checked against SCHEMA on receipt (required fields and their types), and frames
above MAX_MESSAGE_BYTES are refused before they are decoded.

HTTP side -> engine:
    hello     {client}                         -> ready {model_name, model_path, max_model_len, ...}
    ping      {}                               -> pong {}
    generate  {request_id, prompt_token_ids, params} -> accepted {request_id}
                                                  | rejected {request_id, code, message, param}
    abort     {request_id}                     (the engine then sends the request's final event)
    stats     {}                               -> stats {stats}
    bye       {}                               (this client is going away: abort its requests)
engine -> HTTP side, unasked:
    events    {events: [RequestEvent as a map, ...]}   one message per client per engine step
    stats     {stats}                          every second or so, with histogram samples
"""
from __future__ import annotations

import dataclasses

import msgpack

PROTOCOL_VERSION = 1
# Large enough for a 128k-token prompt with top-20 prompt logprobs; small enough
# that a broken or hostile peer cannot make us allocate without bound.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol version."""


_STR, _INT, _LIST, _DICT = (str,), (int,), (list,), (dict,)
_OPT_STR = (str, type(None))

# type -> {field: accepted Python types}. Extra fields are allowed (a newer peer
# may add optional ones); missing or mistyped required ones are not.
SCHEMA: dict[str, dict[str, tuple]] = {
    "hello": {"client": _STR},
    "ready": {"model_name": _STR, "model_path": _STR, "max_model_len": _INT},
    "ping": {},
    "pong": {},
    "generate": {"request_id": _STR, "prompt_token_ids": _LIST, "params": _DICT},
    "accepted": {"request_id": _STR},
    "rejected": {"request_id": _STR, "code": _STR, "message": _STR, "param": _OPT_STR},
    "abort": {"request_id": _STR},
    "events": {"events": _LIST},
    "stats": {},
    "bye": {},
}

# Fields every event map must carry (the rest of RequestEvent is optional).
_EVENT_FIELDS = {"request_id": _STR, "index": _INT, "new_token_ids": _LIST, "finished": (bool,)}


def pack(type_: str, **fields) -> bytes:
    if type_ not in SCHEMA:
        raise ProtocolError(f"unknown message type {type_!r}")
    data = msgpack.packb({"v": PROTOCOL_VERSION, "type": type_, **fields}, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{type_} message of {len(data)} bytes is over the "
                            f"{MAX_MESSAGE_BYTES}-byte cap")
    return data


def unpack(frame: bytes) -> dict:
    """Decode and check one frame; raises ProtocolError for anything off-schema."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(frame)} bytes is over the {MAX_MESSAGE_BYTES}-byte cap")
    try:
        # strict_map_key=False: logit_bias maps token ids (ints) to floats.
        # ext_hook refuses extension types: we never send any.
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=False, ext_hook=_no_ext)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable message: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a map")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {msg.get('v')!r}; this side speaks {PROTOCOL_VERSION}")
    fields = SCHEMA.get(msg.get("type"))
    if fields is None:
        raise ProtocolError(f"unknown message type {msg.get('type')!r}")
    _check_fields(msg, fields, msg["type"])
    if msg["type"] == "generate" and not all(_is_int(t) for t in msg["prompt_token_ids"]):
        raise ProtocolError("generate: prompt_token_ids must be a list of integers")
    if msg["type"] == "events":
        for event in msg["events"]:
            if not isinstance(event, dict):
                raise ProtocolError("events: each event must be a map")
            _check_fields(event, _EVENT_FIELDS, "event")
    return msg


def event_to_wire(event) -> dict:
    """A RequestEvent as a plain map (TokenLogprob.top tuples become lists)."""
    return dataclasses.asdict(event)


def _check_fields(msg: dict, fields: dict, where: str) -> None:
    for name, types in fields.items():
        value = msg.get(name)
        if not isinstance(value, types) or (types == _INT and isinstance(value, bool)):
            raise ProtocolError(f"{where}: field {name!r} must be "
                                f"{' or '.join(t.__name__ for t in types)}, got {type(value).__name__}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _no_ext(code, data):
    raise ProtocolError(f"MessagePack extension type {code} is not allowed")
