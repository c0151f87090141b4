"""Render a checkpoint's Jinja chat template exactly as transformers does.

Prompts must be byte-identical to what `tokenizer.apply_chat_template` gives,
or the model sees a conversation format it was not trained on. So we copy the
environment transformers builds (transformers/utils/chat_template_utils.py):
a sandbox, trim_blocks + lstrip_blocks, loop controls, its own `tojson`, the
`raise_exception` / `strftime_now` globals, and the same variables (every
special token's text, `tools`/`documents` always defined even when None).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a checkpoint ships no template: the standard Llama 3 format.
DEFAULT_LLAMA3_TEMPLATE = (
    "{{- bos_token if bos_token is defined else '<|begin_of_text|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

# The named special tokens transformers passes to every template.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# Message fields a model's reasoning may come under; templates read the first.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatTemplateError(jinja2.TemplateError, ValueError):
    """The template refused the conversation (its `raise_exception`), or the
    conversation cannot be rendered; the message says why. A ValueError too, so
    that a server maps it to a 400."""


class NoChatTemplateError(ChatTemplateError):
    """The checkpoint has no chat template, and the built-in Llama 3 one does not fit its
    vocabulary; the message says to complete plain text or add a template."""


# The built-in template writes these; a vocabulary without them is not Llama 3's.
LLAMA3_FORMAT_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def token_text(value) -> str | None:
    """A special token's text, given as a string or as an AddedToken dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def normalize_templates(value) -> str | dict[str, str] | None:
    """tokenizer_config's `chat_template`: a string, or a list of {name, template}."""
    if isinstance(value, (list, tuple)):
        return {t["name"]: t["template"] for t in value}
    return value


def select_template(templates: str | dict[str, str] | None, tools=None) -> str:
    """The template to render: "tool_use" when tools are given and it exists, else "default"."""
    if templates is None:
        return DEFAULT_LLAMA3_TEMPLATE
    if isinstance(templates, str):
        return templates
    if tools is not None and "tool_use" in templates:
        return templates["tool_use"]
    if "default" in templates:
        return templates["default"]
    raise ChatTemplateError(f"the checkpoint has several chat templates and none named 'default': "
                            f"{sorted(templates)}")


class _GenerationTag(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (transformers uses it to
    mark assistant tokens for training masks): here it just renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message):
    raise ChatTemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes <, >, & and ' for HTML; templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names, like transformers' (no sandbox escapes)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set namespace attribute {name!r}")


class _Dict:
    """`dict(...)` without dict's class attributes (no type hacking from a template)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Compile once per template text (a server renders the same one per request)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env.from_string(source)


def _plain(value):
    """A deep copy made of JSON types only: the sandbox then sees no object with
    methods of its own (and the caller's messages are never modified)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # str subclasses, enums
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):  # numpy scalars
        return _plain(value.item())
    if callable(getattr(value, "model_dump", None)):  # pydantic models (OpenAI SDK messages)
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _normalize_messages(messages) -> list[dict]:
    out = []
    for message in _plain(list(messages)):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"chat messages must be dicts, got {message!r}")
        # Drop None values: OpenAI clients send content=None / tool_calls=None,
        # and templates handle a missing key but print "None" for a None one.
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:  # every name templates read it under
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render_chat_template(template: str, messages, *, add_generation_prompt: bool = True, tools=None,
                         documents=None, continue_final_message: bool = False, **variables) -> str:
    """Render `template` for `messages`, as transformers' apply_chat_template(tokenize=False).

    `variables` are the special tokens (bos_token, ...) and any template
    kwargs (e.g. enable_thinking); kwargs win over special tokens. With
    `continue_final_message`, the last message is left open for the model to
    continue instead of starting a new assistant turn.
    """
    if not messages:
        raise ChatTemplateError("cannot apply a chat template to an empty conversation")
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be set")
    if tools is not None and any(not isinstance(t, Mapping) for t in tools):
        raise ChatTemplateError("tools must be JSON schemas (dicts)")
    chat = _normalize_messages(messages)
    final = None
    if continue_final_message:
        final = chat[-1].get("content")
        if not isinstance(final, str):
            raise ChatTemplateError("continue_final_message needs a final message with string content")
        chat[-1]["content"] = final + _CONTINUE_TAG
    try:
        rendered = compile_template(template).render(
            messages=chat, tools=_plain(tools), documents=_plain(documents),
            add_generation_prompt=add_generation_prompt, **_plain(variables))
    except ChatTemplateError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError) as e:
        # e.g. a template concatenating a string with list-of-parts content
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e
    if continue_final_message:
        tag = _CONTINUE_TAG.strip()
        if final.strip() not in rendered or tag not in rendered:
            raise ChatTemplateError("continue_final_message: the template dropped part of the final message")
        at = rendered.rindex(tag)
        # Cut at the tag; if the template trimmed the message, trim what is left too.
        rendered = rendered[:at] if rendered[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else rendered[:at].rstrip()
    return rendered
