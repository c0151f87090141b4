"""Each token's bytes: what it adds to the output text, exactly, even half a character.

A token's text alone can be wrong in two ways: a byte-level BPE token may hold part of a
UTF-8 character (its text is U+FFFD), and a SentencePiece token's leading "▁" is a space
that decoding it alone drops. The vocabulary entry has the exact bytes:

- byte-level BPE (Llama 3, Qwen, SmolLM2): each character of the entry stands for one
  byte through GPT-2's byte-to-unicode table ("Ġhello" is b" hello");
- SentencePiece (Llama 2, Mistral, Phi-3): "▁" is a space, and a byte-fallback token
  "<0xE4>" is that byte;
- other vocabularies: the token's decoded text.

Special tokens (<|eot_id|>, </s>) have no bytes of text: None. Used by JSON mode
(json_constraint.py) and by the server's logprobs (`bytes`).
"""
from __future__ import annotations

import re
from functools import lru_cache

SPACE = "\u2581"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, reversed: printable bytes map to themselves, the rest to 256+."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def vocabulary_kind(tokenizer) -> str:
    """"byte-level", "sentencepiece" or "other", from what the decoder does."""
    decoder = getattr(getattr(tokenizer, "backend", None), "decoder", None)
    try:
        state = decoder.__getstate__().decode("utf-8") if decoder is not None else ""
    except (AttributeError, UnicodeDecodeError):
        state = ""
    if '"ByteLevel"' in state:
        return "byte-level"
    return "sentencepiece" if SPACE in state else "other"


def bytes_of(tokenizer, i: int, added: dict | None = None) -> bytes | None:
    """One token's bytes (None: a special token). added: the backend's added tokens, when
    the caller asks for many ids (reading them is not cheap)."""
    kind = getattr(tokenizer, "_vocabulary_kind", None)
    if kind is None:
        kind = tokenizer._vocabulary_kind = vocabulary_kind(tokenizer)
    piece = tokenizer.id_to_token(i)
    if i in tokenizer.special_token_ids or piece is None:
        return None
    token = (added if added is not None else tokenizer.backend.get_added_tokens_decoder()).get(i)
    if token is not None:                              # user-defined: matched whole, as written
        return token.content.encode("utf-8")
    table = unicode_to_byte()
    if kind == "byte-level" and all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    if kind == "sentencepiece":
        byte = _BYTE_TOKEN.fullmatch(piece)
        return bytes([int(byte[1], 16)]) if byte else piece.replace(SPACE, " ").encode("utf-8")
    return tokenizer.decode([i]).encode("utf-8")


def token_bytes(tokenizer) -> list[bytes | None]:
    """bytes per token id (None: a special token), computed once per tokenizer."""
    cached = getattr(tokenizer, "_token_bytes", None)
    if cached is None:
        added = tokenizer.backend.get_added_tokens_decoder()
        cached = [bytes_of(tokenizer, i, added) for i in range(tokenizer.vocab_size)]
        tokenizer._token_bytes = cached
    return cached
