"""Request bodies of the OpenAI API, validated, and turned into SamplingParams.

Bodies are decoded by hand (not by FastAPI) so that every failure is an
OpenAI-shaped 400 naming the offending field: malformed JSON, NaN / Infinity
(not JSON, though Python's json accepts them), wrong types, out-of-range values.
Unknown fields are ignored, as OpenAI and vLLM do: clients send `user`,
`metadata` and vLLM-only extras (top_k, min_p, ignore_eos, ...) in one body.
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
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    repetition_penalty: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
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
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None
    parallel_tool_calls: bool = True
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None


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
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        return _raise(invalid(f"{loc or 'body'}: {first['msg']}", loc.split(".")[0] or None))


def _raise(err: OpenAIError):
    raise err


def _no_constants(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def build_params(req: SamplingFields, *, max_tokens: int, vocab_size: int, logprobs: int | None,
                 prompt_logprobs: int | None = None) -> dict:
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
                  include_stop_str_in_output=req.include_stop_str_in_output)
    for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                 "frequency_penalty", "repetition_penalty"):
        if getattr(req, name) is not None:
            fields[name] = getattr(req, name)
    try:
        return dataclasses.asdict(SamplingParams(**fields))
    except SamplingParamsError as e:
        raise invalid(str(e), e.param) from None


def context_error(prompt_len: int, max_model_len: int, param: str) -> OpenAIError:
    return invalid(f"This model's maximum context length is {max_model_len} tokens. However, "
                   f"your {param} resulted in {prompt_len} tokens. Please reduce the length of "
                   f"the {param}.", param, "context_length_exceeded")
