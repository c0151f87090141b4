"""SamplingParams: one request's sampling and stopping options, checked when made.

What each option does is the sampler's business (sampling.py); here they are only named,
given vLLM's / OpenAI's defaults and checked, so that a bad value is an error naming its
field (SamplingParamsError, a 400 in the server) before anything runs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .json_schema import JSON_OBJECT, Schema, SchemaError, compile_schema

MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    """Per-request sampling and stopping options (vLLM / OpenAI semantics)."""
    max_tokens: int = 16
    min_tokens: int = 0                  # EOS / stop tokens are ignored before this many
    temperature: float = 1.0             # 0: greedy
    top_p: float = 1.0
    top_k: int = 0                       # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0      # > 1 discourages tokens seen in prompt or output
    presence_penalty: float = 0.0        # OpenAI: -2..2, once per token seen in the output
    frequency_penalty: float = 0.0       # OpenAI: -2..2, per occurrence in the output
    logit_bias: dict[int, float] = field(default_factory=dict)   # token id -> added to logit
    seed: int | None = None
    n: int = 1                           # choices per prompt
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None          # None: off; k: the sampled token's + top-k (k <= 20)
    prompt_logprobs: int | None = None   # None: off; k: per prompt token (echo scoring)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # OpenAI's response_format: None or {"type": "text"}; {"type": "json_object"} holds the
    # output to one JSON object, {"type": "json_schema", "json_schema": {"schema": {...}}} to
    # one value of that schema (json_constraint.py, json_schema.py)
    response_format: dict | str | None = None   # or its JSON text; compiled into .schema

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        self.logit_bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1,
               f"max_tokens must be an integer >= 1, got {self.max_tokens}", "max_tokens")
        _check(0 <= self.min_tokens <= self.max_tokens,
               f"min_tokens must be in [0, max_tokens], got {self.min_tokens}", "min_tokens")
        _check(_finite(self.temperature) and self.temperature >= 0,
               f"temperature must be a finite number >= 0, got {self.temperature}", "temperature")
        _check(_finite(self.top_p) and 0 < self.top_p <= 1,
               f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        _check(_finite(self.min_p) and 0 <= self.min_p <= 1,
               f"min_p must be in [0, 1], got {self.min_p}", "min_p")
        _check(isinstance(self.top_k, int) and self.top_k >= -1,
               f"top_k must be -1, 0 (off) or a positive integer, got {self.top_k}", "top_k")
        _check(_finite(self.repetition_penalty) and self.repetition_penalty > 0,
               f"repetition_penalty must be > 0, got {self.repetition_penalty}",
               "repetition_penalty")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_finite(value) and -2 <= value <= 2, f"{name} must be in [-2, 2], got {value}",
                   name)
        _check(isinstance(self.n, int) and 1 <= self.n <= 128, f"n must be in [1, 128], got {self.n}",
               "n")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int) and 0 <= value <= MAX_LOGPROBS),
                   f"{name} must be between 0 and {MAX_LOGPROBS}, got {value}", name)
        _check(all(_finite(v) for v in self.logit_bias.values()),
               "logit_bias values must be finite numbers", "logit_bias")
        if isinstance(self.response_format, str):      # its JSON text (the server's wire)
            try:
                self.response_format = json.loads(self.response_format)
            except ValueError:
                raise SamplingParamsError("response_format must be a JSON object",
                                          "response_format") from None
        try:
            self.schema = schema_of(self.response_format)
        except SchemaError as e:
            raise SamplingParamsError(str(e), "response_format") from None

    @property
    def json_mode(self) -> bool:
        """Whether the output is held to JSON (response_format json_object / json_schema)."""
        return self.schema is not None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class SamplingParamsError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise SamplingParamsError(message, param)


def schema_of(response_format: dict | None) -> Schema | None:
    """The Schema an OpenAI response_format asks for: None for text, JSON_OBJECT for
    json_object, the compiled json_schema.schema for json_schema (SchemaError otherwise)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise SchemaError(f"response_format must be an object, got {response_format!r}")
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise SchemaError("response_format json_schema needs json_schema.schema, the JSON "
                              'Schema: {"type": "json_schema", "json_schema": {"name": ..., '
                              '"schema": {...}}}')
        return compile_schema(spec["schema"])
    raise SchemaError(f"response_format type {kind!r} is not supported: 'text', 'json_object' "
                      "or 'json_schema'")
