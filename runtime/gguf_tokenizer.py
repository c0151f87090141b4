"""Build a Hugging Face `tokenizers.Tokenizer` from a GGUF file's metadata.

A GGUF carries no tokenizer.json: llama.cpp stores the vocabulary, the merges,
each token's type and the special ids as `tokenizer.ggml.*` metadata, and names
the pre-tokenizer (`tokenizer.ggml.pre`) instead of spelling it out. We rebuild
the tokenizer the checkpoint was trained with, following llama.cpp (the format's
owner) where it and transformers' GGUF loader disagree.

The metadata is read by our own header parser (gguf_file.py): `gguf.GGUFReader`
builds a numpy view per array element and takes seconds on a 49k vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .gguf_file import read_gguf_header

# llama.cpp token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# ---------------------------------------------------------------- metadata ---


def read_gguf_metadata(path: str | Path, prefixes: tuple[str, ...] = ("tokenizer.", "general.")) -> dict:
    """The key/value metadata of a GGUF file whose key starts with one of `prefixes`.

    Tensor data is never read. Handles both byte orders (big-endian GGUFs exist for s390x).
    """
    return read_gguf_header(path, prefixes, errors="replace").metadata


# ---------------------------------------------------------- pre-tokenizers ---

# The split regexes llama.cpp applies for each `tokenizer.ggml.pre` value, as
# `tokenizers` pre-tokenizers. Byte-level vocabularies then map bytes to the
# GPT-2 alphabet (`ByteLevel(use_regex=False)` once a Split did the splitting).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# GPT-4o's (tiktoken o200k: Phi-4 mini, Llama 4) and Mistral's Tekken (Mistral Nemo,
# Ministral, Mistral Small 3): cased words split apart, numbers by 3 (Tekken: by 1).
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split_then_bytes(regex: str):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _gpt2():
    # ByteLevel's built-in regex is GPT-2's: 's|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2():
    # llama.cpp's "smollm" (and StarCoder's) is two regexes: `\p{N}` first, which
    # isolates every numeric character, then GPT-2's. That is exactly the
    # Digits(individual_digits=True) + ByteLevel pair of SmolLM2's tokenizer.json.
    # transformers' GGUF loader knows no "smollm" and falls back to plain GPT-2,
    # which differs on text like " ²" (it glues the space to the numeral's bytes).
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


@dataclass(frozen=True)
class _Pre:
    make: object               # () -> pre-tokenizer
    ignore_merges: bool = False
    add_bos: bool = False      # llama.cpp's default when the file has no add_bos_token


# llama.cpp sets ignore_merges and add_bos for the Llama 3 family: a whole
# pre-token found in the vocabulary is taken as is, like tokenizer.json's
# `"ignore_merges": true` (without it ~6% of random texts encode differently).
_LLAMA3 = _Pre(lambda: _split_then_bytes(_LLAMA3_SPLIT), ignore_merges=True, add_bos=True)
_DIGITS = _Pre(_digits_then_gpt2)
_QWEN2 = _Pre(lambda: _split_then_bytes(_QWEN2_SPLIT))
_GPT2 = _Pre(_gpt2)
_GPT4O = _Pre(lambda: _split_then_bytes(_GPT4O_SPLIT))
_TEKKEN = _Pre(lambda: _split_then_bytes(_TEKKEN_SPLIT), ignore_merges=True)
_PRE_TOKENIZERS = {
    "llama-bpe": _LLAMA3, "llama3": _LLAMA3, "llama-v3": _LLAMA3, "smaug-bpe": _LLAMA3,
    "falcon3": _LLAMA3, "dbrx": _LLAMA3, "pixtral": _LLAMA3,
    "gpt-4o": _GPT4O, "llama4": _GPT4O, "tekken": _TEKKEN,
    "smollm": _DIGITS, "starcoder": _DIGITS, "refact": _DIGITS, "codeshell": _DIGITS,
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2,
    "gpt-2": _GPT2, "gpt2": _GPT2, "default": _GPT2, "mpt": _GPT2, "olmo": _GPT2,
}


# ------------------------------------------------------- stripped tokens ---


def rstripped_tokens(meta: dict, tokens: list[str], types: list[int]) -> set[str]:
    """The special tokens that swallow the whitespace after them (llama.cpp's
    LLAMA_TOKEN_ATTR_RSTRIP; `AddedToken(rstrip=True)` in `tokenizers`).

    The GGUF does not store this: llama.cpp (src/llama-vocab.cpp) sets it by model name.
    For a `general.name` containing "phi-3" or "phi3", every control, user-defined and
    unknown token and "</s>" strips, except <unk>, <s> and <|endoftext|>; that is Phi-3's
    Hugging Face tokenizer, whose added tokens say rstrip=True. So Phi-3's chat prompt
    "<|user|>\nHi<|end|>\n<|assistant|>\n" is <|user|> ▁Hi <|end|> <|assistant|>,
    without the newlines."""
    name = str(meta.get("general.name") or "").lower()
    # Also by architecture: a Phi-3 file named "Phi 3 Mini" is still Phi-3's tokenizer
    # (llama.cpp would not strip there; Phi-3's own tokenizer does).
    if "phi-3" not in name and "phi3" not in name and meta.get("general.architecture") != "phi3":
        return set()
    special = {t for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED, UNKNOWN)}
    return (special | {"</s>"}) - {"<unk>", "<s>", "<|endoftext|>"}


# ------------------------------------------------------ end of generation ---

# The token texts llama.cpp (src/llama-vocab.cpp) treats as end-of-generation
# whatever the metadata says: it decides EOG by token text, not by a flag.
_EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
)
# Texts that make a token the EOT id when the metadata names none (it then joins EOG).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
# Fill-in-the-middle pad / repo / file-separator tokens are EOG too in llama.cpp:
# a code model emitting one has finished the snippet.
_FIM_TEXTS = {
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}


def eog_token_ids(meta: dict, tokens: list[str]) -> list[int]:
    """The ids that end generation, as llama.cpp decides them; the EOS id first."""
    index = {t: i for i, t in enumerate(tokens)}

    def meta_id(name):
        i = meta.get(f"tokenizer.ggml.{name}_token_id")
        return i if isinstance(i, int) and 0 <= i < len(tokens) else None

    def by_text(texts):
        return next((index[t] for t in texts if t in index), None)

    eos = meta_id("eos")
    eot = meta_id("eot") if meta_id("eot") is not None else by_text(_EOT_TEXTS)
    eom = meta_id("eom") if meta_id("eom") is not None else by_text(("<|eom_id|>",))
    fim = [meta_id(k) if meta_id(k) is not None else by_text(texts) for k, texts in _FIM_TEXTS.items()]
    eog = {i for i in (eos, eot, eom, *fim) if i is not None}
    eog |= {index[t] for t in _EOG_TEXTS if t in index}
    # gpt-oss (harmony): <|end|> only closes a message there; <|return|>/<|call|> end the turn.
    if all(t in index for t in ("<|return|>", "<|call|>", "<|end|>")):
        eog.discard(index["<|end|>"])
    return ([eos] if eos is not None else []) + sorted(eog - {eos})


# ----------------------------------------------------------------- builder ---


@dataclass
class GGUFTokenizer:
    """What `Tokenizer.from_gguf` needs: the backend plus the ids and template."""

    backend: Tokenizer
    tokens: list[str]
    bos_token_id: int | None
    eos_token_ids: list[int]
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token -> "<|im_start|>", ...
    chat_template: str | dict[str, str] | None = None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the byte-level alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _chat_templates(meta: dict) -> str | dict[str, str] | None:
    """`tokenizer.chat_template`, plus named ones (`tokenizer.chat_template.<name>`)."""
    named = {k.removeprefix("tokenizer.chat_template."): v for k, v in meta.items()
             if k.startswith("tokenizer.chat_template.") and isinstance(v, str)}
    default = meta.get("tokenizer.chat_template")
    if not named:
        return default
    if default is not None:
        named["default"] = default
    return named


def build_gguf_tokenizer(path: str | Path) -> GGUFTokenizer:
    """Rebuild the tokenizer a GGUF file describes: byte-level BPE (`tokenizer.ggml.model ==
    "gpt2"`) or SentencePiece BPE (`"llama"`, see gguf_spm.py)."""
    meta = read_gguf_metadata(path)
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise ValueError(f"{path}: no tokenizer.ggml.tokens metadata")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if meta.get("tokenizer.ggml.model") == "llama":
        # llama.cpp's ids for a SentencePiece vocabulary whose file names none: <unk>=0,
        # <s>=1, </s>=2 (without them no BOS would be added and </s> would not stop)
        meta = {f"tokenizer.ggml.{k}_token_id": i for k, i in (("unknown", 0), ("bos", 1), ("eos", 2))
                if i < len(tokens)} | meta

    if "tokenizer.huggingface.json" in meta:
        # Some converters embed the original tokenizer.json: nothing to rebuild.
        backend = Tokenizer.from_str(meta["tokenizer.huggingface.json"])
    elif meta.get("tokenizer.ggml.model") == "llama":
        # SentencePiece (Llama 2, TinyLlama, Mistral v0.1-0.3): llama.cpp adds BOS unless
        # the file says otherwise
        from .gguf_spm import build_spm

        backend = _with_bos_eos(build_spm(meta, tokens, types), meta, tokens, default_bos=True)
    else:
        backend = _build_bpe(path, meta, tokens, types)

    def text_of(name):
        i = meta.get(f"tokenizer.ggml.{name}_token_id")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    special = {name: text_of(key) for name, key in (
        ("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
        ("pad_token", "padding"), ("sep_token", "seperator"), ("mask_token", "mask"))}
    special = {k: v for k, v in special.items() if v is not None}
    bos = meta.get("tokenizer.ggml.bos_token_id")
    return GGUFTokenizer(
        backend=backend,
        tokens=tokens,
        bos_token_id=bos if isinstance(bos, int) and 0 <= bos < len(tokens) else None,
        eos_token_ids=eog_token_ids(meta, tokens),
        special_tokens=special,
        chat_template=_chat_templates(meta),
    )


def _build_bpe(path, meta: dict, tokens: list[str], types: list[int]) -> Tokenizer:
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        # A ValueError, like the other tokenizer problems: the CLI and server show it as one line.
        raise ValueError(
            f"{path}: tokenizer.ggml.model={model!r} is not supported; rustinfer rebuilds "
            "byte-level BPE ('gpt2': Llama 3, SmolLM2, Qwen) and SentencePiece BPE ('llama': "
            "Llama 2, Mistral, TinyLlama) tokenizers from a GGUF. Use the model's Hugging Face "
            "folder (config.json, *.safetensors, tokenizer.json) instead")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        # Guessing would silently give wrong token ids, as llama.cpp also refuses.
        raise ValueError(f"{path}: unknown pre-tokenizer tokenizer.ggml.pre={pre!r} "
                         f"(known: {', '.join(sorted(_PRE_TOKENIZERS))}). Use the model's Hugging "
                         "Face folder (config.json, *.safetensors, tokenizer.json) instead")
    spec = _PRE_TOKENIZERS[pre]

    # Vocab entries are spelled in the byte-level alphabet; the rare normal one
    # that is not (a converter wrote raw UTF-8) is respelled so BPE can reach it.
    # Control / user-defined tokens keep their raw text ("<｜end▁of▁sentence｜>"):
    # they are matched as added tokens, which must find them at their own id.
    alphabet = _bytes_to_unicode()
    letters = set(alphabet.values())
    whole = (CONTROL, USER_DEFINED)
    spelled = [t if ty in whole or set(t) <= letters else "".join(alphabet[b] for b in t.encode("utf-8"))
               for t, ty in zip(tokens, types)]
    vocab = {t: i for i, t in enumerate(spelled)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]

    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=spec.ignore_merges,
                              fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = spec.make()
    tk.decoder = decoders.ByteLevel()

    # Control tokens (<|im_end|>, <|eot_id|>) are matched whole in text and are
    # "special" (dropped by skip_special_tokens); user-defined ones (<think>) are
    # matched whole but kept. llama.cpp tokenizes with the same two sets.
    rstrip = rstripped_tokens(meta, tokens, types)
    control = [AddedToken(t, special=True, normalized=False, rstrip=t in rstrip)
               for t, ty in zip(tokens, types) if ty == CONTROL]
    user = [AddedToken(t, special=False, normalized=False, rstrip=t in rstrip)
            for t, ty in zip(tokens, types) if ty == USER_DEFINED]
    tk.add_special_tokens(control)
    tk.add_tokens(user)
    # llama.cpp's default BOS follows the pre-tokenizer: Llama 3 adds it, GPT-2's family not
    return _with_bos_eos(tk, meta, tokens, default_bos=spec.add_bos)


def _with_bos_eos(tk: Tokenizer, meta: dict, tokens: list[str], default_bos: bool) -> Tokenizer:
    """BOS/EOS as llama.cpp adds them: the file's flags, else llama.cpp's default."""
    add_bos = meta.get("tokenizer.ggml.add_bos_token", default_bos)
    add_eos = meta.get("tokenizer.ggml.add_eos_token", False)
    pieces, specials = ["$A:0"], []
    for flag, key, where in ((add_bos, "bos", 0), (add_eos, "eos", None)):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if flag and isinstance(i, int) and 0 <= i < len(tokens):
            pieces.insert(0 if where == 0 else len(pieces), f"{tokens[i]}:0")
            specials.append((tokens[i], i))
    tk.post_processor = processors.TemplateProcessing(single=" ".join(pieces), special_tokens=specials)
    return tk
