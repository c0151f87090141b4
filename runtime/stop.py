"""Deciding when a sequence stops, and which text the user sees.

Stops on any EOS id of the checkpoint (unless ignore_eos), on stop_token_ids,
and on stop strings matched in the detokenized text across token boundaries.
Text that might be the start of a stop string is held back until it is known
not to be one, so a stop string is never shown (unless
include_stop_str_in_output). Nothing stops before min_tokens tokens.
"""
from __future__ import annotations

from .sampling import SamplingParams


class StopChecker:
    def __init__(self, tokenizer, params: SamplingParams):
        self.params = params
        self.detok = (tokenizer.new_detokenizer(skip_special_tokens=params.skip_special_tokens)
                      if tokenizer is not None else None)
        eos = set(tokenizer.eos_token_ids) if tokenizer is not None else set()
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else eos)
        self.pending = ""       # decoded text not yet released
        self.count = 0
        self.stop_reason: int | str | None = None

    def push(self, token: int) -> tuple[str, str | None]:
        """Feed one generated token; returns (text to release, finish reason or None)."""
        self.count += 1
        armed = self.count > self.params.min_tokens
        if armed and token in self.stop_ids:
            self.stop_reason = token if token in self.params.stop_token_ids else None
            return self.flush(), "stop"
        if self.detok is None:
            return "", None
        self.pending += self.detok.push(token)
        if armed:
            for s in self.params.stop:
                at = self.pending.find(s)
                if at >= 0:
                    end = at + len(s) if self.params.include_stop_str_in_output else at
                    text, self.pending = self.pending[:end], ""
                    self.stop_reason = s
                    return text, "stop"
        keep = self._held_back()
        release = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return release, None

    def flush(self) -> str:
        text = self.pending + (self.detok.flush() if self.detok is not None else "")
        self.pending = ""
        return text

    def _held_back(self) -> int:
        """Length of the longest suffix of pending text that starts some stop string."""
        best = 0
        for s in self.params.stop:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:n]):
                    best = n
                    break
        return best
