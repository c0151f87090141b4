"""Incremental detokenizer: property tests on byte-level BPE (Llama 3).

The oracle is the tokenizer's full decode (checked against transformers in
test_tokenizer.py). Two properties, after every single push:
- emitted text == decode(ids so far) with trailing U+FFFD removed: nothing is
  emitted before its character is complete, and nothing is held back longer;
- after flush(), emitted text == decode(all ids), exactly.
"""
import random

import pytest

from rustinfer.runtime.tokenizer import Tokenizer

FFFD = "\ufffd"

TEXTS = [
    "Hello, world! 🤗🤗 done.",
    "中文测试，日本語のテキスト、한국어",
    "👨‍👩‍👧‍👦 family 🇫🇷 flag 👍🏽",
    "e\u0301 combining, ﬁ ligature, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math",
    "def f():\n    return '✓'\n",
    "\ufffd literal replacement char",
]


@pytest.fixture(scope="module")
def tok(llama_dir):
    return Tokenizer.from_hf_dir(llama_dir)


@pytest.fixture(scope="module")
def byte_ids(tok):
    """byte value -> id of the vocabulary's single-byte token."""
    from rustinfer.runtime.gguf_tokenizer import _bytes_to_unicode

    return {b: tok.token_to_id(ch) for b, ch in _bytes_to_unicode().items()}


def _check_stream(tok, ids, prompt_ids=None, skip=False):
    det = tok.new_detokenizer(prompt_ids=prompt_ids, skip_special_tokens=skip)
    emitted = ""
    for k, i in enumerate(ids, 1):
        chunk = det.push(i)
        emitted += chunk
        assert emitted == tok.decode(ids[:k], skip_special_tokens=skip).rstrip(FFFD), (ids[:k], chunk)
    emitted += det.flush()
    assert emitted == det.text == tok.decode(ids, skip_special_tokens=skip)
    return det


def test_encoded_texts(tok):
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        _check_stream(tok, ids)


def test_emoji_split_over_tokens_comes_out_whole(tok):
    ids = tok.encode("🤗", add_special_tokens=False)
    assert len(ids) > 1  # byte-level BPE cuts it: the case that matters
    det = tok.new_detokenizer()
    assert [det.push(i) for i in ids] == [""] * (len(ids) - 1) + ["🤗"]


def test_every_character_split_into_single_bytes(tok, byte_ids):
    """Each byte its own token: every multi-byte character arrives in pieces."""
    rng = random.Random(0)
    alphabet = "aé中🤗👍🏽\n ́ßЖ" + FFFD
    for _ in range(60):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        _check_stream(tok, [byte_ids[b] for b in text.encode()])


def test_invalid_and_truncated_utf8(tok, byte_ids):
    """Stray continuation bytes, lone lead bytes, truncated sequences: U+FFFD
    appears exactly where the full decode has it, never early."""
    rng = random.Random(1)
    pieces = [b"\x80", b"\xbf", b"\xe4", b"\xe4\xb8", b"\xf0\x9f\xa4", b"\xff", b"a", " 中".encode(), "🤗".encode()]
    for _ in range(150):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        _check_stream(tok, [byte_ids[b] for b in data])
    det = tok.new_detokenizer()
    assert det.push(byte_ids[0xE4]) == "" and det.flush() == FFFD  # end of stream mid-character


@pytest.mark.parametrize("skip", [False, True])
def test_random_ids_with_special_tokens(tok, skip):
    rng = random.Random(2)
    specials = sorted(tok.special_token_ids)
    for _ in range(60):
        ids = [rng.choice(specials) if rng.random() < 0.1 else rng.randrange(tok.vocab_size)
               for _ in range(rng.randint(1, 30))]
        _check_stream(tok, ids, skip=skip)


def test_prompt_context_does_not_change_the_text(tok):
    prompt = tok.encode_chat([{"role": "user", "content": "Say hi 🤗"}])
    ids = tok.encode(" Hi! 🤗 中文", add_special_tokens=False) + [tok.eos_token_ids[0]]
    for skip in (False, True):
        _check_stream(tok, ids, prompt_ids=prompt, skip=skip)
    # a prompt cut inside a character is not used as context
    half_emoji = tok.encode("🤗", add_special_tokens=False)[:1]
    _check_stream(tok, ids, prompt_ids=prompt + half_emoji)


def test_window_stays_small(tok):
    """Each push decodes a few ids, not the whole stream (no quadratic cost)."""
    sizes = []

    class Spy:
        def decode(self, ids, skip_special_tokens=False):
            sizes.append(len(ids))
            return tok.decode(ids, skip_special_tokens)

    ids = tok.encode(" ".join(TEXTS) * 20, add_special_tokens=False)
    det = tok.new_detokenizer()
    det._tok = Spy()
    text = "".join(det.push(i) for i in ids) + det.flush()
    assert text == tok.decode(ids)
    assert max(sizes) <= 8, max(sizes)
