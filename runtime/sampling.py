"""Sampling parameters and a per-request sampler (greedy, temperature, top-k, top-p, min-p)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


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


class Sampler:
    """Turns one row of logits into a token id, with a per-request random stream."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution actually sampled from (after temperature and the filters)."""
        p = self.params
        logits = logits.float() / p.temperature
        if p.top_k and p.top_k > 0 and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            before = torch.cumsum(sorted_probs, 0) - sorted_probs
            sorted_probs = sorted_probs.masked_fill(before >= p.top_p * sorted_probs.sum(), 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return probs / probs.sum()

    def __call__(self, logits: torch.Tensor) -> int:
        if self.params.greedy:
            return int(torch.argmax(logits))
        probs = self.probabilities(logits)
        return int(torch.multinomial(probs, 1, generator=self.generator))
