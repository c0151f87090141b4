"""Request bodies of the OpenAI API, validated, and turned into SamplingParams.

Bodies are decoded by hand (not by FastAPI) so that every failure is an
OpenAI-shaped 400 naming the offending field: malformed JSON, NaN / Infinity
(not JSON, though Python's json accepts them), wrong types, out-of-range values.
Unknown fields are ignored, as OpenAI and vLLM do: clients send `user`,
`metadata` and vLLM-only extras (top_k, min_p, ignore_eos, ...) in one body.
Known fields that would change the answer in a way this server cannot honour
are refused instead of ignored: the legacy `functions` / `function_call`,
`modalities` / `audio` other than text, non-text content parts.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rustinfer.runtime.sampling import MAX_LOGPROBS, SamplingParams, SamplingParamsError

from .errors import OpenAIError, invalid

class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(_Body):
    """What both /v1/completions and /v1/chat/completions accept."""
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    # Integers travel to the engine as MessagePack, which carries -2**63 .. 2**64-1.
    top_k: int | None = Field(default=None, ge=-1, le=2 ** 63 - 1)
    min_p: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    repetition_penalty: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(default=None, ge=-(2 ** 63), le=2 ** 64 - 1)
    n: int = Field(default=1, ge=1, le=128)
    stop: Union[str, list[str], None] = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value):
        for key, bias in (value or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias}")
        return value


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = None
    response_format: dict[str, Any] | None = None     # vLLM's extension: JSON mode here too

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("the prompt is empty")
        if isinstance(value, list) and any(isinstance(p, list) and not p for p in value):
            raise ValueError("a token-id prompt is empty")
        return value


class ChatMessage(_Body):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # templates may read extras
    role: Literal["system", "developer", "user", "assistant", "tool", "ipython", "function"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Body):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionDef


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    # >= 1, checked by check_chat_request (one message for -1 and 0 alike); the
    # completions endpoint keeps max_tokens >= 0 (0 scores the prompt).
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None
    parallel_tool_calls: bool = True
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    # Refused when given (see check_chat_request), not silently ignored.
    functions: Any = None
    function_call: Any = None
    modalities: list[str] | None = None
    audio: Any = None


TEXT_PART_TYPES = ("text", "input_text", "output_text")


def check_stream_options(req: SamplingFields) -> None:
    if req.stream_options is not None and not req.stream:
        raise invalid("stream_options can only be given with stream: true", "stream_options")


def check_messages(messages: list[ChatMessage]) -> None:
    """Content the chat template can render: text (a string, or text parts) for every
    message; only an assistant message that carries tool_calls may have no content."""
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                kind = part.get("type")
                if kind not in TEXT_PART_TYPES:
                    raise invalid(f"{where}.content[{j}] has type {kind!r}: this model accepts "
                                  "only text content parts (type 'text')", "messages")
                if not isinstance(part.get("text"), str):
                    raise invalid(f"{where}.content[{j}].text must be a string", "messages")
        elif m.content is None and not (m.role == "assistant" and m.tool_calls):
            needs = "content or tool_calls" if m.role == "assistant" else "content"
            raise invalid(f"{where}.content is missing or null: a {m.role!r} message needs {needs}",
                          "messages")


def check_chat_request(req: "ChatCompletionRequest") -> None:
    """What the field types alone do not say about a chat request."""
    if req.functions is not None:
        raise invalid("functions is deprecated and not supported: declare them in tools "
                      '([{"type": "function", "function": {...}}]) instead', "functions")
    if req.function_call is not None:
        raise invalid("function_call is deprecated and not supported: use tool_choice "
                      '("none", "auto", "required" or {"type": "function", "function": '
                      '{"name": ...}}) instead', "function_call")
    if req.modalities is not None and any(m != "text" for m in req.modalities):
        raise invalid(f"modalities {req.modalities} are not supported: this model outputs only "
                      'text (["text"])', "modalities")
    if req.audio is not None:
        raise invalid("audio output is not supported: this model outputs only text", "audio")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name)
        if value is not None and value < 1:
            raise invalid(f"{name} must be at least 1, got {value}", name)
    check_stream_options(req)
    check_messages(req.messages)


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]


def parse_body(raw: bytes, cls: type[BaseModel]) -> BaseModel:
    """JSON bytes -> a validated model, or an OpenAIError 400 naming the field."""
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise invalid("the request body is not valid JSON: it is nested too deeply") from None
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object")
    if _depth_over(data, MAX_JSON_DEPTH):
        # Validation, templates and msgpack recurse: refuse it here, not with a 500 there.
        raise invalid(f"the request body is not valid JSON here: it nests deeper than "
                      f"{MAX_JSON_DEPTH} levels")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = first["msg"]
        if first.get("type") == "value_error" and "error" in first.get("ctx", {}):
            msg = str(first["ctx"]["error"])  # our own validators' words, no "Value error, "
        return _raise(invalid(f"{loc or 'body'}: {msg}", loc.split(".")[0] or None))


MAX_JSON_DEPTH = 64


def _depth_over(data, limit: int) -> bool:
    """Whether lists / objects nest deeper than `limit` (iteratively: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return False


def _raise(err: OpenAIError):
    raise err


def _no_constants(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def build_params(req: SamplingFields, *, max_tokens: int, vocab_size: int, logprobs: int | None,
                 prompt_logprobs: int | None = None, response_format: dict | None = None) -> dict:
    """The SamplingParams for the engine, validated here so that errors are 400s
    with the field's name (the engine would refuse them too, less helpfully)."""
    bias = {int(k): v for k, v in (req.logit_bias or {}).items()}
    bad = [t for t in list(bias) + list(req.stop_token_ids or []) if not 0 <= t < vocab_size]
    if bad:
        raise invalid(f"token ids out of range [0, {vocab_size}): {bad[:5]}",
                      "logit_bias" if bad[0] in bias else "stop_token_ids")
    fields = dict(max_tokens=max_tokens, logit_bias=bias, n=req.n, ignore_eos=req.ignore_eos,
                  min_tokens=min(req.min_tokens, max_tokens), seed=req.seed,
                  stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
                  stop_token_ids=list(req.stop_token_ids or []), logprobs=logprobs,
                  prompt_logprobs=prompt_logprobs, skip_special_tokens=req.skip_special_tokens,
                  include_stop_str_in_output=req.include_stop_str_in_output,
                  response_format=response_format)
    for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                 "frequency_penalty", "repetition_penalty"):
        if getattr(req, name) is not None:
            fields[name] = getattr(req, name)
    try:
        params = dataclasses.asdict(SamplingParams(**fields))
    except SamplingParamsError as e:
        raise invalid(str(e), e.param) from None
    if params["response_format"] is not None:
        # As JSON text to the engine: msgpack holds no integer past 64 bits, and a schema
        # may have one (a bound of 10**400).
        params["response_format"] = json.dumps(params["response_format"])
    return params


def pick_params(req: SamplingFields, allowed: set[int]) -> dict:
    """SamplingParams for one token restricted to `allowed` (tools.pick_start): the
    request's temperature / top_p / top_k / min_p / seed, a +100 logit_bias on the
    allowed tokens (nothing else can win), no stop rules."""
    fields = dict(max_tokens=1, n=1, ignore_eos=True, seed=req.seed,
                  logit_bias={t: 100.0 for t in allowed})
    for name in ("temperature", "top_p", "top_k", "min_p"):
        if getattr(req, name) is not None:
            fields[name] = getattr(req, name)
    return dataclasses.asdict(SamplingParams(**fields))


def context_error(prompt_len: int, max_model_len: int, param: str) -> OpenAIError:
    return invalid(f"This model's maximum context length is {max_model_len} tokens. However, "
                   f"your {param} resulted in {prompt_len} tokens. Please reduce the length of "
                   f"the {param}.", param, "context_length_exceeded")
