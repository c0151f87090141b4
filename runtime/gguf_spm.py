"""SentencePiece vocabularies in a GGUF (`tokenizer.ggml.model == "llama"`) as `tokenizers` BPE.

Llama 2, TinyLlama, Mistral v0.1-0.3 and their fine-tunes store a SentencePiece
BPE model: tokens, one score each, and token types, but no merges. llama.cpp
(src/llama-vocab.cpp, `llm_tokenizer_spm`) tokenizes such a vocabulary like this:

1. Each run of text between special tokens gets one leading space when the file
   says `add_space_prefix` (the default), and every space becomes "▁".
2. Starting from single characters, it repeatedly merges the adjacent pair whose
   concatenation is a token with the highest score (the leftmost on a tie).
3. A character that is in no token is spelled as its UTF-8 bytes, `<0xE4>`, ...

That is byte-fallback BPE whose merges are every split (a, b) of every token t
into two tokens, ranked by t's score: the highest score merges first. So the
merges are derived here and `tokenizers` does the work (transformers' GGUF
loader rebuilds these files the same way). Decoding undoes step 1: "▁" back to a
space, byte tokens back to bytes, and the first space of the text dropped.
"""
from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from .gguf_tokenizer import CONTROL, NORMAL, UNKNOWN, USER_DEFINED, rstripped_tokens

SPACE = "\u2581"          # "▁", SentencePiece's visible space


def derive_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every split of a normal or user-defined token into two vocabulary entries, best score
    first. A split whose halves are not both tokens can never be reached from characters
    by merging tokens, so it is left out."""
    ids = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty not in (NORMAL, USER_DEFINED) or len(t) < 2:
            continue
        for cut in range(1, len(t)):
            a, b = t[:cut], t[cut:]
            if a in ids and b in ids:
                # best score first. Equal scores of different tokens (a file without scores)
                # rank by id here, where llama.cpp takes the leftmost pair of the text.
                ranked.append((-scores[i], i, ids[a], (a, b)))
    ranked.sort()
    return [pair for *_, pair in ranked]


def build_spm(meta: dict, tokens: list[str], types: list[int]) -> Tokenizer:
    """The `tokenizers.Tokenizer` llama.cpp's SentencePiece tokenizer amounts to (see above).

    BOS/EOS are added by the caller's post-processor; control tokens (<s>, </s>, [INST] in
    Mistral v0.3) are matched whole in text and are special; user-defined ones are matched
    whole and kept."""
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    if len(scores) != len(tokens):
        raise ValueError(f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} "
                         "tokens; the file is damaged: re-convert or re-download it")
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else None
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        # A duplicate spelling would make two ids one entry; we keep the first (llama.cpp's
        # text-to-id map keeps the last, but decodes both).
        vocab = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=derive_merges(tokens, scores, types),
                              unk_token=unk, fuse_unk=True, byte_fallback=True))
    space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    # `tokenizers` normalizes each run of text between added tokens on its own, so the
    # Prepend gives every run after a special token its space, as llama.cpp does.
    steps = [normalizers.Prepend(SPACE)] if space_prefix else []
    tk.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", SPACE)])
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tk.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))

    rstrip = rstripped_tokens(meta, tokens, types)          # Phi-3's special tokens
    control = [AddedToken(t, special=True, normalized=False, rstrip=t in rstrip)
               for t, ty in zip(tokens, types) if ty in (CONTROL, UNKNOWN)]
    user = [AddedToken(t, special=False, normalized=False, rstrip=t in rstrip)
            for t, ty in zip(tokens, types) if ty == USER_DEFINED]
    tk.add_special_tokens(control)
    tk.add_tokens(user)
    return tk
