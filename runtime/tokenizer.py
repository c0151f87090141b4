"""The tokenizer the engine and server use: text <-> ids, chat prompts, stop ids.

One class over two sources:
- a Hugging Face checkpoint folder (tokenizer.json + tokenizer_config.json,
  optional generation_config.json / config.json), read as transformers reads it;
- a GGUF file, whose `tokenizer.ggml.*` metadata is rebuilt into the same kind
  of `tokenizers.Tokenizer` (see gguf_tokenizer.py).
transformers itself is never imported here: it is the tests' oracle only.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as _Backend

from .chat_template import (LLAMA3_FORMAT_TOKENS, SPECIAL_TOKEN_NAMES, NoChatTemplateError,
                            normalize_templates, render_chat_template, select_template,
                            token_text)
from .checkpoint import CheckpointError
from .detokenizer import IncrementalDetokenizer


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); re-download it") from None
    return data if isinstance(data, dict) else {}


def _ids(value) -> list[int]:
    """An `eos_token_id` field: an int, a list of ints, or absent."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, int)]
    return []


class Tokenizer:
    """Encode/decode, chat templates, and the ids that end generation.

    Build it with `from_hf_dir`, `from_gguf` or `load`.
    """

    def __init__(self, backend: _Backend, *, bos_token_id: int | None, eos_token_ids: list[int],
                 special_tokens: dict[str, str] | None = None, chat_template=None):
        self._backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_ids = list(dict.fromkeys(eos_token_ids))  # ordered, no duplicates
        # Named special tokens' text (bos_token, eos_token, ...): chat template variables.
        self.special_tokens = dict(special_tokens or {})
        # A template string, a {name: template} dict, or None (built-in Llama 3 format).
        self.chat_template = normalize_templates(chat_template)
        self.special_token_ids: set[int] = {
            i for i, t in backend.get_added_tokens_decoder().items() if t.special}

    # ------------------------------------------------------------ loading ---

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """A checkpoint folder or a .gguf file."""
        path = Path(path)
        return cls.from_gguf(path) if path.is_file() else cls.from_hf_dir(path)

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json (slow sentencepiece/tiktoken "
                                    "tokenizers are not supported; convert with transformers first)")
        # tokenizer.json's post-processor decides BOS/EOS: transformers 5 ignores
        # tokenizer_config's add_bos_token whenever tokenizer.json exists.
        try:
            backend = _Backend.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception for a bad file
            raise CheckpointError(f"{path / 'tokenizer.json'}: not a readable tokenizer ({e}); "
                                  "re-download it (an interrupted download leaves a truncated "
                                  "file)") from None
        config = _read_json(path / "tokenizer_config.json")
        if "added_tokens_decoder" not in config:  # legacy layout: special tokens in their own file
            config.update(_read_json(path / "special_tokens_map.json"))
        special = {name: token_text(config.get(name)) for name in SPECIAL_TOKEN_NAMES}
        special = {k: v for k, v in special.items() if v is not None}
        # transformers registers every named special token as a special added
        # token, so that e.g. "<|im_end|>" in text is one token even if
        # tokenizer.json only has it in the base vocabulary.
        added = {t.content for t in backend.get_added_tokens_decoder().values()}
        missing = [AddedToken(t, special=True, normalized=False) for t in special.values() if t not in added]
        if missing:
            backend.add_special_tokens(missing)

        gen = _read_json(path / "generation_config.json")
        model = _read_json(path / "config.json")
        eos_text_id = backend.token_to_id(special["eos_token"]) if "eos_token" in special else None
        eos = _ids(gen.get("eos_token_id")) + _ids(model.get("eos_token_id")) + _ids(eos_text_id)
        bos = backend.token_to_id(special["bos_token"]) if "bos_token" in special else None
        if bos is None:
            bos = next(iter(_ids(gen.get("bos_token_id")) + _ids(model.get("bos_token_id"))), None)
        return cls(backend, bos_token_id=bos, eos_token_ids=eos, special_tokens=special,
                   chat_template=cls._hf_templates(path, config))

    @staticmethod
    def _hf_templates(path: Path, config: dict):
        # As transformers 5: chat_template.jinja and additional_chat_templates/*.jinja
        # win over tokenizer_config.json's "chat_template".
        files = {}
        if (path / "chat_template.jinja").is_file():
            files["default"] = (path / "chat_template.jinja").read_text(encoding="utf-8")
        extra = path / "additional_chat_templates"
        if extra.is_dir():
            for f in sorted(extra.glob("*.jinja")):
                files[f.stem] = f.read_text(encoding="utf-8")
        if files:
            return files["default"] if list(files) == ["default"] else files
        return config.get("chat_template")

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        from .gguf_tokenizer import build_gguf_tokenizer

        g = build_gguf_tokenizer(path)
        return cls(g.backend, bos_token_id=g.bos_token_id, eos_token_ids=g.eos_token_ids,
                   special_tokens=g.special_tokens, chat_template=g.chat_template)

    # ------------------------------------------------------- text <-> ids ---

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids for `text`. Special-token strings in it become their ids (as in
        transformers); BOS is added when the checkpoint's post-processor says so."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        # No clean_up_tokenization_spaces: transformers 5 ignores it for BPE too.
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def new_detokenizer(self, prompt_ids: list[int] | None = None,
                        skip_special_tokens: bool = False) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt_ids, skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """All ids the tokenizer knows, added tokens included (transformers' len(tok),
        not its `vocab_size`, which leaves out added tokens)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def id_to_token(self, i: int) -> str | None:
        """The vocabulary entry (byte-level spelling, e.g. "Ġhello"), not its text."""
        return self._backend.id_to_token(i)

    def token_to_id(self, s: str) -> int | None:
        return self._backend.token_to_id(s)

    @property
    def eos_token_id(self) -> int | None:
        """The first end-of-generation id (for APIs that want just one)."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def backend(self) -> _Backend:
        """The underlying `tokenizers.Tokenizer`."""
        return self._backend

    # -------------------------------------------------------------- chat ---

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list | None = None, **template_kwargs) -> str:
        """The prompt text for `messages`, as transformers' apply_chat_template(tokenize=False).

        Extra kwargs become template variables (e.g. enable_thinking=False), and
        `documents=` / `continue_final_message=` work as in transformers.
        """
        if self.chat_template is None and any(
                self._backend.token_to_id(t) is None for t in LLAMA3_FORMAT_TOKENS):
            # The built-in Llama 3 format would spell its headers as plain text here:
            # a prompt the model never saw, answered with garbage (transformers refuses too).
            raise NoChatTemplateError(
                "this model has no chat template (tokenizer_config.json has no chat_template "
                "and there is no chat_template.jinja, or the GGUF has no "
                "tokenizer.chat_template), and its vocabulary is not Llama 3's; complete plain "
                "text instead (rustinfer generate --raw, /v1/completions) or add the model's "
                "chat template to tokenizer_config.json")
        template = select_template(self.chat_template, tools)
        variables = {**self.special_tokens, **template_kwargs}
        return render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                    tools=tools, **variables)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list | None = None, **template_kwargs) -> list[int]:
        """Render, then encode without adding special tokens: the template already
        writes BOS, and adding it again would double it (transformers does the same)."""
        text = self.apply_chat_template(messages, add_generation_prompt, tools, **template_kwargs)
        return self.encode(text, add_special_tokens=False)
