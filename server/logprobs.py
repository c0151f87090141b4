"""Logprobs in the two shapes OpenAI uses, and the text / bytes of single tokens.

Chat:        {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}
Completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}

A byte-level BPE token may be part of a UTF-8 character, so its text alone
can be U+FFFD; `bytes` gives the exact bytes (what OpenAI's field is for),
recovered from the vocabulary entry through GPT-2's byte-to-unicode table.
JSON has no -inf, so a masked token's logprob is sent as -9999.0 (as vLLM does).
"""
from __future__ import annotations

import math

from rustinfer.runtime.token_bytes import bytes_of, vocabulary_kind

NEG_INF_LOGPROB = -9999.0


class TokenText:
    """Cached per-token text and bytes for one tokenizer."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._text: dict[int, str] = {}
        self._bytes: dict[int, bytes] = {}
        self._sentencepiece = vocabulary_kind(tokenizer) == "sentencepiece"

    def text(self, token_id: int) -> str:
        t = self._text.get(token_id)
        if t is None:
            if self._sentencepiece and token_id not in self.tok.special_token_ids:
                # decode([id]) drops the space a SentencePiece text starts with: "▁Paris"
                # alone decodes to "Paris", but as a token of a text it is " Paris"
                t = self.bytes(token_id).decode("utf-8", errors="replace")
            else:
                t = self.tok.decode([token_id])
            self._text[token_id] = t
        return t

    def bytes(self, token_id: int) -> bytes:
        b = self._bytes.get(token_id)
        if b is None:
            b = bytes_of(self.tok, token_id)
            if b is None:                    # a special token: its text
                b = self.tok.decode([token_id]).encode("utf-8")
            self._bytes[token_id] = b
        return b


def finite(x: float) -> float:
    return x if math.isfinite(x) else NEG_INF_LOGPROB


def chat_logprobs(tt: TokenText, entries: list[dict], top_n: int) -> list[dict]:
    """Entries are TokenLogprob maps {token_id, logprob, top: [[id, lp], ...]}."""
    out = []
    for e in entries:
        out.append({**_chat_entry(tt, e["token_id"], e["logprob"]),
                    "top_logprobs": [_chat_entry(tt, t, lp) for t, lp in e.get("top", [])[:top_n]]})
    return out


def _chat_entry(tt: TokenText, token_id: int, logprob: float) -> dict:
    return {"token": tt.text(token_id), "logprob": finite(logprob),
            "bytes": list(tt.bytes(token_id))}


class CompletionLogprobs:
    """Accumulates the completions-API logprobs object for one choice."""

    def __init__(self, tt: TokenText, top_n: int, offset: int = 0):
        self.tt, self.top_n, self.offset = tt, top_n, offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict | None] = []
        self.text_offset: list[int] = []

    def add(self, token_id: int, entry: dict | None) -> None:
        text = self.tt.text(token_id)
        self.tokens.append(text)
        self.text_offset.append(self.offset)
        self.offset += len(text)
        if entry is None:  # the first prompt token has no logprob
            self.token_logprobs.append(None)
            self.top_logprobs.append(None)
            return
        self.token_logprobs.append(finite(entry["logprob"]))
        top = {}
        for t, lp in entry.get("top", [])[:self.top_n]:
            top.setdefault(self.tt.text(t), finite(lp))
        # As OpenAI and vLLM: the sampled token is always among its own top entries.
        top.setdefault(text, finite(entry["logprob"]))
        self.top_logprobs.append(top)

    def take(self) -> dict:
        """The entries added since the last take() (a streaming chunk's worth)."""
        out = {"tokens": self.tokens, "token_logprobs": self.token_logprobs,
               "top_logprobs": self.top_logprobs, "text_offset": self.text_offset}
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return out

    @staticmethod
    def merge(parts: list[dict]) -> dict:
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for p in parts:
            for k in out:
                out[k].extend(p[k])
        return out
