"""Incremental detokenization: token ids in, finished text out, one id at a time.

Decoding each token on its own is wrong: byte-level BPE splits one character
over several tokens ("🤗" is three), so a token alone may decode to U+FFFD, and
some decoders change a token's text depending on its neighbours. Decoding the
whole sequence at every step is right but quadratic. We decode a small sliding
window instead (the scheme vLLM uses):

    ids:  ... [prefix ........ read) [read ...... end)
                 already emitted        not yet emitted

`decode(ids[prefix:end])` minus `decode(ids[prefix:read])` is the new text. If
it ends in U+FFFD the last character may be incomplete, so it is held back
until a later token completes it (or `flush()` gives up). Text before the
trailing U+FFFD run is final and goes out at once.
"""
from __future__ import annotations

from typing import Protocol

_REPLACEMENT = "\ufffd"
# Prompt tokens kept as left context: enough for any decoder that looks at the
# previous token (SentencePiece's leading-space rule), cheap to re-decode.
_CONTEXT = 6


class _Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...


class IncrementalDetokenizer:
    """Turn generated ids into text chunks that never split a UTF-8 character.

    The chunks from `push()` plus `flush()` concatenate to the decode of all
    pushed ids (decoded after the prompt's last tokens, which for byte-level
    BPE is exactly `tokenizer.decode(generated_ids)`).
    """

    def __init__(self, tokenizer: _Decoder, prompt_ids: list[int] | None = None,
                 skip_special_tokens: bool = False):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        context = list(prompt_ids or [])[-_CONTEXT:]
        # A prompt that ends inside a character (ids given by hand) would leave
        # the window misaligned; start without context then.
        if context and self._decode(context).endswith(_REPLACEMENT):
            context = []
        self._ids: list[int] = context
        self._prefix = 0                # window start
        self._read = len(context)       # first id whose text is not final yet
        self._prefix_text: str | None = None   # decode(ids[prefix:read]), cached
        self._sent = 0                  # chars of the held-back text already emitted
        self._n_generated = 0
        self.text = ""                  # everything emitted so far

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def _window(self) -> tuple[str, str]:
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._ids[self._prefix:self._read])
        return self._prefix_text, self._decode(self._ids[self._prefix:])

    def _emit(self, chunk: str) -> str:
        self.text += chunk
        return chunk

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text it completes (often "", never half a character)."""
        self._ids.append(int(token_id))
        self._n_generated += 1
        before, full = self._window()
        if not full.startswith(before):
            # A decoder rewrote earlier text (not byte-level BPE); wait for more context.
            return ""
        new = full[len(before):]
        if new.endswith(_REPLACEMENT):
            # Possibly a character still missing bytes: emit only what precedes it.
            safe = new.rstrip(_REPLACEMENT)
            chunk, self._sent = safe[self._sent:], max(self._sent, len(safe))
            return self._emit(chunk)
        return self._advance(new)

    def _advance(self, new: str) -> str:
        chunk = new[self._sent:]
        # The window slides: what was pending becomes left context. Pending ids that decode
        # to nothing (a special token skipped by skip_special_tokens) join the old context
        # instead: as the only context they would decode to "", and a SentencePiece decoder
        # would then drop the next token's leading space ("Hello", [INST], "▁world" must
        # stream as "Hello world", not "Helloworld").
        if new:
            self._prefix = self._read
        self._read = len(self._ids)
        self._prefix_text, self._sent = None, 0
        return self._emit(chunk)

    def flush(self) -> str:
        """Emit whatever is held back (an unfinished character decodes to U+FFFD), e.g. at end of stream."""
        if self._read == len(self._ids):
            return ""
        before, full = self._window()
        return self._advance(full[len(before):])

    @property
    def generated_ids(self) -> list[int]:
        """The ids pushed so far (without the prompt context)."""
        return self._ids[len(self._ids) - self._n_generated:]
