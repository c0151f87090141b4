"""Tool calls in Llama 3.x's JSON format: into the prompt, and back out as `tool_calls`.

Llama 3.1+ answers a tool request with one JSON object (optionally after the
`<|python_tag|>` special token, several separated by ";"):

    {"name": "get_weather", "parameters": {"city": "Paris"}}

Into the prompt: a checkpoint whose chat template knows `tools` (Llama 3.x's
does) gets them through the template. A template that ignores them (SmolLM2's)
would silently drop them, so we add the system prompt Llama 3.1's own template
writes for JSON tool calling.

Forcing a call (tool_choice "required" or a named function): the start of the
call is written into the prompt, after the generation prompt, so that the model
only generates the arguments. That start names the function and opens its
arguments with a declared key (and its value, by the key's type):
`{"name": "get_weather", "parameters": {"city": "`. (Without them a small
model tends to copy the JSON schema from the tool list as "arguments".) When
several starts are possible ("required" with several tools, or several keys
that may come first), `pick_start` lets the model choose among them token by
token, each step one engine request of one token whose
logit_bias allows only the tokens that continue some start: the model picks a
declared name and key with its own probabilities, under the request's sampling
settings, and can never invent one. Past the start, `close_forced_call` ends
the call where the model leaves its shape (an undeclared argument, a key added
to the call), as a JSON-schema grammar would have.

Out of the output: text made of such objects, each naming a declared tool with
an object as arguments, becomes OpenAI tool_calls (arguments as a JSON string)
with finish_reason "tool_calls"; anything else stays content. `scan_calls`
reads a partial output, so a call is recognized (and generation stopped) as
soon as it is complete, rather than after whatever the model rambles next.
"""
from __future__ import annotations

import json
import uuid
from typing import Awaitable, Callable

from .errors import invalid

PYTHON_TAG = "<|python_tag|>"
# Past this many forced starts (tools x first keys), only the name is chosen.
MAX_STARTS = 64

_TOOL_SYSTEM_PROMPT = (
    "You have access to the following functions. To call a function, respond with a JSON for "
    "a function call with its proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}. Do not use variables.\n\n")

# scan_calls states
MORE = "more"              # calls so far, and maybe more to come: wait for more text
DONE = "done"              # complete calls; what follows is not a call (or no more are allowed)
NOT_A_CALL = "not_a_call"  # the output does not start with a valid call: it is content


def template_knows_tools(template) -> bool:
    if isinstance(template, dict):
        return "tool_use" in template or any("tools" in t for t in template.values())
    return isinstance(template, str) and "tools" in template


def check_tools(tools: list[dict]) -> None:
    names = [t["function"]["name"] for t in tools]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise invalid(f"tools declares the function name(s) {dup} more than once", "tools")


def forced_names(tools: list[dict] | None, tool_choice) -> list[str] | None:
    """The functions the answer must call one of (tool_choice "required" or named),
    or None when the model is free to answer in text."""
    if not tools or tool_choice in (None, "auto", "none"):
        return None
    if tool_choice == "required":
        return [t["function"]["name"] for t in tools]
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise invalid('tool_choice must be "none", "auto", "required" or '
                          '{"type": "function", "function": {"name": ...}}', "tool_choice")
        if name not in {t["function"]["name"] for t in tools}:
            raise invalid(f"tool_choice names {name!r}, which is not among the tools",
                          "tool_choice")
        return [name]
    raise invalid(f"unknown tool_choice {tool_choice!r}", "tool_choice")


def call_starts(tools: list[dict], names: list[str]) -> list[tuple[str, str]]:
    """(name, text) for every text a forced answer may start with:
    `{"name": "<name>", "parameters":` and the first argument key (a required one, or
    any declared one or none when nothing is required), with the opening `"`, `{` or
    `[` of its value when the schema gives its type as string, object or array; the
    whole call when the function takes no arguments. No trailing space: after `":`
    the model writes the space with the value's first token."""
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    heads = [(n, json.dumps({"name": n}, ensure_ascii=False)[:-1] + ', "parameters":')
             for n in names]
    starts = [(n, head + rest) for n, head in heads
              for rest in _argument_starts(by_name[n].get("parameters"))]
    return starts if len(starts) <= MAX_STARTS else heads


_OPENERS = {"string": ' "', "object": " {", "array": " ["}


def _open(params: dict) -> bool:
    """Whether the arguments may hold keys beyond the declared properties: only when
    the schema says so (additionalProperties true or a schema), as in OpenAI's strict
    mode and grammar-constrained decoding, though JSON Schema's default is open."""
    extra = params.get("additionalProperties")
    return extra is True or isinstance(extra, dict)


def _type(schema) -> str | None:
    """The one JSON type a property's schema allows, if it says so plainly."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    return kind if isinstance(kind, str) else None


def _argument_starts(params) -> list[str]:
    props = params.get("properties") if isinstance(params, dict) else None
    if not params or (props == {} and not _open(params)):
        return [" {}}"]                        # no arguments: the call is complete
    if not isinstance(props, dict) or not props:
        return [""]                            # a free-form object: nothing to force
    required = params.get("required")
    required = [k for k in required if isinstance(k, str) and k in props] \
        if isinstance(required, list) else []
    starts = [" " + json.dumps({k: 0}, ensure_ascii=False)[:-3] + _OPENERS.get(_type(props[k]), "")
              for k in required or props]
    if not required:
        starts.append(" {}}")
    return starts


async def pick_start(candidates: list[list[int]],
                     sample: Callable[[list[int], set[int]], Awaitable[int]]) -> int:
    """Index of the candidate token sequence the model chooses.

    From the candidates' common prefix, `sample(prefix_ids, allowed)` draws one token
    restricted to `allowed` (the next tokens of the candidates still in the running);
    candidates that do not continue with it drop out, until one is left."""
    alive = list(range(len(candidates)))
    while len(alive) > 1:
        seqs = [candidates[i] for i in alive]
        pos = _common_prefix_len(seqs)
        ended = [i for i in alive if len(candidates[i]) == pos]
        if ended:                              # a duplicate, or a prefix of the others
            return ended[0]
        allowed = {candidates[i][pos] for i in alive}
        token = await sample(candidates[alive[0]][:pos], allowed)
        alive = [i for i in alive if candidates[i][pos] == token]
        if not alive:
            raise RuntimeError(f"the engine sampled token {token}, outside the allowed "
                               f"{sorted(allowed)[:10]}")
    return alive[0]


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = seqs[0][i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def close_forced_call(text: str, params) -> str | None:
    """The call in `text` (a forced answer: it starts with one of call_starts), closed
    where the model leaves the call's shape; None while it keeps to it.

    The shape is what a JSON-schema grammar would allow: arguments made of the declared
    keys (each once; any keys for a free-form object or with additionalProperties),
    then the call's closing brace. Small models go on with undeclared keys ("temperature", or the schema's own "type")
    or add keys to the call itself; the call then ends before them, as if the model
    had been held to the grammar at that point. Nothing else is changed."""
    at = text.find('"parameters":')
    if at < 0:
        return None
    i = at + len('"parameters":')
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    if i == len(text) or text[i] != "{":
        return None
    props = params.get("properties") if isinstance(params, dict) else None
    keys = set(props) if isinstance(props, dict) and props and not _open(params) else None
    depth, in_str, esc, key_start, expect_key = 0, False, False, None, False
    cut, seen, j = i + 1, set(), i
    while j < len(text):
        ch = text[j]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
                if key_start is not None:
                    try:
                        key = json.loads(text[key_start:j + 1])
                    except ValueError:
                        return None
                    if keys is not None and (key not in keys or key in seen):
                        return text[:cut].rstrip() + "}}"
                    seen.add(key)
                    key_start = None
        elif ch == '"':
            in_str = True
            if depth == 1 and expect_key:
                key_start, expect_key = j, False
        elif ch in "{[":
            depth += 1
            expect_key = depth == 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                rest = text[j + 1:].lstrip()
                if not rest or rest[0] == "}":
                    return None        # complete, or about to be: scan_calls reads it
                return text[:j + 1] + "}"
        elif ch == "," and depth == 1:
            cut, expect_key = j, True
        j += 1
    return None


def prepare_messages(messages: list[dict], tools: list[dict] | None, template) -> tuple[list, list | None]:
    """(messages, tools) to render. Assistant tool_calls become their JSON text and
    tool results plain messages when the template would not understand them.
    Content parts must be text by now (openai_types.check_messages)."""
    knows = template_knows_tools(template)
    out = []
    for m in messages:
        m = dict(m)
        if isinstance(m.get("content"), list):  # OpenAI content parts, all text
            m["content"] = "".join(p.get("text", "") for p in m["content"])
        if m.get("content") is None:
            m["content"] = ""
        if not knows:
            if m["role"] == "assistant" and m.get("tool_calls"):
                m["content"] = (m["content"] + "; ".join(_call_text(c) for c in m["tool_calls"]))
                m.pop("tool_calls")
        out.append(m)
    if not tools:
        return out, None
    if knows:
        return out, tools
    described = "\n\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    preamble = _TOOL_SYSTEM_PROMPT + described
    if out and out[0]["role"] in ("system", "developer"):
        out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + preamble}
    else:
        out.insert(0, {"role": "system", "content": preamble})
    return out, None


def _call_text(call: dict) -> str:
    fn = call.get("function") or {}
    args = fn.get("arguments") or "{}"
    try:
        params = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        params = args
    return json.dumps({"name": fn.get("name"), "parameters": params}, ensure_ascii=False)


def looks_like_call(text: str) -> bool | None:
    """True / False once the start of the output decides it, None while it cannot
    tell yet (only whitespace, or a prefix of the python tag so far)."""
    s = text.lstrip()
    if not s:
        return None
    if s.startswith("{") or s.startswith(PYTHON_TAG):
        return True
    if PYTHON_TAG.startswith(s):
        return None
    return False


def scan_calls(text: str, tools: dict[str, dict] | None = None,
               max_calls: int | None = None) -> tuple[list[tuple[str, str]], str]:
    """The Llama JSON calls at the start of `text` (complete or not) as (name,
    arguments JSON) pairs, and a state: MORE, DONE or NOT_A_CALL (see above).

    `tools` maps each declared name to its parameters schema: a call must name one of
    them and pass an object as arguments (not the schema itself, which small models
    copy from the tool list). None accepts any name. Calls past `max_calls`, and
    text after the calls that is not another call, are not part of the answer."""
    s = text.lstrip()
    if s.startswith(PYTHON_TAG):
        s = s[len(PYTHON_TAG):]
    decoder = json.JSONDecoder()
    calls: list[tuple[str, str]] = []
    pos = 0
    while True:
        while pos < len(s) and s[pos] in " \t\r\n;":
            pos += 1
        if pos == len(s):
            return calls, MORE
        if s[pos] != "{" or (max_calls is not None and len(calls) >= max_calls):
            return calls, DONE if calls else NOT_A_CALL
        try:
            obj, end = decoder.raw_decode(s, pos)
        except ValueError:                     # incomplete so far (or malformed)
            return calls, MORE
        call = _as_call(obj, tools)
        if call is None:
            return calls, DONE if calls else NOT_A_CALL
        calls.append(call)
        pos = end


def _as_call(obj, tools: dict[str, dict] | None) -> tuple[str, str] | None:
    if not (isinstance(obj, dict) and isinstance(obj.get("name"), str)):
        return None
    name = obj["name"]
    if tools is not None and name not in tools:
        return None
    args = obj.get("parameters", obj.get("arguments", {}))
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    if tools is not None and _is_schema(args, tools[name]):
        return None
    return name, json.dumps(args, ensure_ascii=False)


def _is_schema(args: dict, schema) -> bool:
    """Arguments that are the tool's JSON schema (or look like one) rather than values."""
    if args == schema:
        return True
    declared = (schema or {}).get("properties") if isinstance(schema, dict) else None
    declared = declared if isinstance(declared, dict) else {}
    return (args.get("type") == "object" and isinstance(args.get("properties"), dict)
            and "type" not in declared and "properties" not in declared)


def openai_calls(calls: list[tuple[str, str]]) -> list[dict]:
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": name, "arguments": arguments}} for name, arguments in calls]


def parse_tool_calls(text: str, tools: dict[str, dict] | None = None,
                     max_calls: int | None = None) -> list[dict] | None:
    """OpenAI tool_calls for a finished output that is made of calls; None otherwise
    (a call cut short, or text that is not a call)."""
    calls, state = scan_calls(text, tools, max_calls)
    return openai_calls(calls) if calls and state in (MORE, DONE) else None
