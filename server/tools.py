"""Tool calls in Llama 3.x's JSON format: into the prompt, and back out as `tool_calls`.

Llama 3.1+ answers a tool request with one JSON object (optionally after the
`<|python_tag|>` special token, several separated by ";"):

    {"name": "get_weather", "parameters": {"city": "Paris"}}

Into the prompt: a checkpoint whose chat template knows `tools` (Llama 3.x's
does) gets them through the template. A template that ignores them (SmolLM2's)
would silently drop them, so we add the system prompt Llama 3.1's own template
writes for JSON tool calling. tool_choice "required" or a named function is
enforced by starting the assistant's answer for the model (`{"name": "` or
`{"name": "f", "parameters": `): cheap, and it cannot be ignored.

Out of the output: text that parses as such objects becomes OpenAI tool_calls
(arguments as a JSON string) with finish_reason "tool_calls"; anything else
stays content.
"""
from __future__ import annotations

import json
import uuid

from .errors import invalid

PYTHON_TAG = "<|python_tag|>"

_TOOL_SYSTEM_PROMPT = (
    "You have access to the following functions. To call a function, respond with a JSON for "
    "a function call with its proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}. Do not use variables.\n\n")


def template_knows_tools(template) -> bool:
    if isinstance(template, dict):
        return "tool_use" in template or any("tools" in t for t in template.values())
    return isinstance(template, str) and "tools" in template


def tool_prefix(tools: list[dict] | None, tool_choice) -> str:
    """Text that starts the assistant's answer, forcing a (named) call; "" for none."""
    if not tools or tool_choice in (None, "auto", "none"):
        return ""
    if tool_choice == "required":
        return '{"name": "'
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise invalid('tool_choice must be "none", "auto", "required" or '
                          '{"type": "function", "function": {"name": ...}}', "tool_choice")
        if name not in {t["function"]["name"] for t in tools}:
            raise invalid(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
        return json.dumps({"name": name})[:-1] + ', "parameters": '
    raise invalid(f"unknown tool_choice {tool_choice!r}", "tool_choice")


def prepare_messages(messages: list[dict], tools: list[dict] | None, template) -> tuple[list, list | None]:
    """(messages, tools) to render. Assistant tool_calls become their JSON text and
    tool results plain messages when the template would not understand them."""
    knows = template_knows_tools(template)
    out = []
    for m in messages:
        m = dict(m)
        if isinstance(m.get("content"), list):  # OpenAI content parts: keep the text ones
            m["content"] = "".join(p.get("text", "") for p in m["content"]
                                   if p.get("type") in ("text", "input_text"))
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


def parse_tool_calls(text: str) -> list[dict] | None:
    """OpenAI tool_calls for text made only of Llama JSON calls; None otherwise."""
    s = text.strip()
    if s.startswith(PYTHON_TAG):
        s = s[len(PYTHON_TAG):].lstrip()
    decoder = json.JSONDecoder()
    calls, pos = [], 0
    while pos < len(s):
        try:
            obj, end = decoder.raw_decode(s, pos)
        except ValueError:
            return None
        if not (isinstance(obj, dict) and isinstance(obj.get("name"), str)):
            return None
        args = obj.get("parameters", obj.get("arguments", {}))
        if isinstance(args, str):
            arguments = args
        else:
            arguments = json.dumps(args if args is not None else {}, ensure_ascii=False)
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": obj["name"], "arguments": arguments}})
        pos = end
        while pos < len(s) and s[pos] in " \t\r\n;":
            pos += 1
    return calls or None
