"""SentencePiece GGUF tokenizers (Llama 2, TinyLlama, Mistral v0.1-0.3): runtime/gguf_spm.py.

The oracle is `spm_reference` below: llama.cpp's SentencePiece algorithm written out
directly (greedy merges of the best-scoring adjacent pair, byte fallback), not the
ranked-merges BPE rustinfer builds with `tokenizers`. transformers' GGUF loader is no
oracle here: it prepends the space only at the start of the text (Metaspace "first"),
where llama.cpp and the original SentencePiece tokenizer prepend it to every run of text
between special tokens. Checked by hand against llama.cpp itself (llama-cpp-python
0.3.36, `Llama(vocab_only=True)`): the same ids on 3,011 texts, both with and without
special tokens, and the same decoded text (llama_detokenize).

The vocabulary is a small SentencePiece-style BPE trained with `tokenizers` on this
repository's own text, stored as a Llama 2 converter stores one: <unk>, <s>, </s>, the
256 byte tokens, then pieces by descending score, single characters last.
"""
from __future__ import annotations

import heapq
import json
import pathlib
import random

import gguf
import pytest

from rustinfer.runtime import cli as rustinfer_cli
from rustinfer.runtime.tokenizer import Tokenizer
from rustinfer.server.logprobs import TokenText

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPACE = "\u2581"
UNKNOWN, CONTROL, USER_DEFINED, BYTE = 2, 3, 4, 6


def corpus() -> str:
    files = sorted(ROOT.glob("*.md")) + sorted((ROOT / "runtime").glob("*.py"))[:8]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def train_spm_vocab(size: int = 1200) -> tuple[list[str], list[float], list[int]]:
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    tk = Backend(models.BPE())
    tk.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never")
    tk.train_from_iterator(corpus().split("\n"), trainers.BpeTrainer(vocab_size=size, show_progress=False))
    model = json.loads(tk.to_str())["model"]
    merged = ["".join(m) if isinstance(m, list) else m.replace(" ", "") for m in model["merges"]]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(tokens)
    for rank, piece in enumerate(dict.fromkeys(merged)):
        tokens.append(piece), types.append(1), scores.append(-float(rank))
    for k, ch in enumerate(sorted(t for t in model["vocab"] if len(t) == 1)):
        tokens.append(ch), types.append(1), scores.append(-1e5 - k)
    return tokens, scores, types


def write_spm_gguf(path, tokens, scores, types, **meta) -> pathlib.Path:
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    if meta.pop("special_ids", True):
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    for key, value in meta.items():          # add_bos_token=False, add_space_prefix=False, ...
        getattr(w, f"add_{key}")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return pathlib.Path(path)


def spm_reference(text: str, tokens, scores, types, add_bos=True, space_prefix=True) -> list[int]:
    """llama.cpp's SentencePiece tokenization, directly: split out control / user-defined
    tokens; give each run of text after a split (or at the start) a leading space; spaces
    to "▁"; then merge the adjacent pair of symbols whose concatenation is the best-scoring
    token (leftmost on a tie) until no pair is a token; a symbol that is no token becomes
    its UTF-8 bytes' <0xXX> tokens."""
    ids = {t: i for i, t in enumerate(tokens)}
    whole = sorted((t for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED, UNKNOWN)),
                   key=len, reverse=True)
    out = [1] if add_bos else []
    runs, i, run = [], 0, ""
    while i < len(text):
        hit = next((t for t in whole if text.startswith(t, i)), None)
        if hit:
            runs += ([("text", run)] if run else []) + [("token", hit)]
            run, i = "", i + len(hit)
        else:
            run, i = run + text[i], i + 1
    runs += [("text", run)] if run else []
    after_special = True
    for kind, piece in runs:
        if kind == "token":
            out.append(ids[piece])
            after_special = True
            continue
        symbols = list(((" " if space_prefix and after_special else "") + piece).replace(" ", SPACE))
        after_special = False
        while True:
            best = None
            for k in range(len(symbols) - 1):
                t = symbols[k] + symbols[k + 1]
                if t in ids and (best is None or scores[ids[t]] > best[0]):
                    best = (scores[ids[t]], k)
            if best is None:
                break
            k = best[1]
            symbols[k:k + 2] = [symbols[k] + symbols[k + 1]]
        for s in symbols:
            out += [ids[s]] if s in ids else [ids[f"<0x{b:02X}>"] for b in s.encode("utf-8")]
    return out


@pytest.fixture(scope="module")
def vocab():
    return train_spm_vocab()


@pytest.fixture(scope="module")
def spm_file(vocab, tmp_path_factory):
    return write_spm_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", *vocab)


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """Slices of this repository's text, half of them with something awkward inserted:
    special tokens, runs of spaces, tabs, characters outside the vocabulary (bytes)."""
    rng = random.Random(seed)
    src = (ROOT / "README.md").read_text(encoding="utf-8") + (ROOT / "runtime" / "engine.py").read_text()
    awkward = ["<s>", "</s>", " ", "   ", "\n", "\t", "🤗", "中文", "é", "\u00a0", SPACE, "<unk>"]
    texts = ["Hello world", " Hello  world", "  leading", "trailing  ", "a\nb\n\n c", "", " ",
             "héllo wörld 🤗 中文", "<s>x</s> y", "def f(x):\n    return x**2"]
    for _ in range(n):
        i = rng.randrange(len(src) - 200)
        t = src[i:i + rng.randrange(1, 120)]
        if rng.random() < 0.5:
            k = rng.randrange(len(t) + 1)
            t = t[:k] + rng.choice(awkward) + t[k:]
        texts.append(t)
    return texts


def test_encode_matches_the_sentencepiece_algorithm(vocab, spm_file):
    tok = Tokenizer.from_gguf(spm_file)
    for text in sample_texts(1500):
        for add_special in (True, False):
            assert tok.encode(text, add_special) == spm_reference(text, *vocab, add_bos=add_special), repr(text)


def test_decode_restores_the_text(vocab, spm_file):
    tok = Tokenizer.from_gguf(spm_file)
    for text in sample_texts(500, seed=1):
        if any(t in text for t in ("<s>", "</s>", "<unk>", SPACE)):
            # a special token's run gets a space the text did not have; a "▁" in the text
            # is a space to SentencePiece (and to llama.cpp)
            continue
        ids = tok.encode(text)
        assert ids[0] == 1 and tok.decode(ids[1:]) == text, repr(text)
        assert tok.decode(ids, skip_special_tokens=True) == text
    # bytes of a character outside the vocabulary come back as the character
    assert "\u4e2d" not in vocab[0] and tok.decode(tok.encode("\u4e2d", False)) == "\u4e2d"


def test_file_flags_bos_and_space_prefix(vocab, tmp_path):
    plain = Tokenizer.from_gguf(write_spm_gguf(tmp_path / "a.gguf", *vocab, add_bos_token=False,
                                               add_space_prefix=False))
    text = "Hello world"
    assert plain.encode(text) == spm_reference(text, *vocab, add_bos=False, space_prefix=False)
    assert plain.encode(text)[0] != vocab[0].index(f"{SPACE}") and plain.decode(plain.encode(text)) == text
    default = Tokenizer.from_gguf(write_spm_gguf(tmp_path / "b.gguf", *vocab))
    assert default.encode(text)[0] == 1 and default.bos_token_id == 1 and default.eos_token_ids[0] == 2
    assert default.special_token_ids >= {0, 1, 2}


def test_special_ids_default_to_llama_cpps_when_the_file_names_none(vocab, tmp_path):
    """llama.cpp's SentencePiece defaults: <unk>=0, <s>=1, </s>=2."""
    tok = Tokenizer.from_gguf(write_spm_gguf(tmp_path / "noids.gguf", *vocab, special_ids=False))
    assert tok.bos_token_id == 1 and tok.eos_token_ids == [2]
    assert tok.encode("Hello world") == spm_reference("Hello world", *vocab)
    assert tok.special_tokens["eos_token"] == "</s>"


def test_control_and_user_defined_tokens_stay_whole(vocab, tmp_path):
    tokens, scores, types = (list(x) for x in vocab)
    for t, ty in (("[INST]", CONTROL), ("[/INST]", CONTROL), ("<think>", USER_DEFINED)):
        tokens.append(t), scores.append(0.0), types.append(ty)
    tok = Tokenizer.from_gguf(write_spm_gguf(tmp_path / "inst.gguf", tokens, scores, types))
    text = "[INST] Hi <think>ok[/INST]"
    ids = tok.encode(text)
    assert ids == spm_reference(text, tokens, scores, types)
    assert tokens.index("[INST]") in ids and tokens.index("<think>") in ids
    # control tokens are skipped, user-defined ones kept; the run after each gets its space
    assert tok.decode(ids, skip_special_tokens=True) == " Hi <think> ok"


def test_logprob_tokens_keep_their_space_and_bytes(spm_file):
    tok = Tokenizer.from_gguf(spm_file)
    tt = TokenText(tok)
    ids = tok.encode("Hello w\u00f6rld", add_special_tokens=False)
    assert tt.text(ids[0]).startswith(" ")                   # "▁H..." is " H...", not "H..."
    assert b"".join(tt.bytes(i) for i in ids) == " Hello w\u00f6rld".encode()
    assert tt.text(1) == "<s>" and tt.bytes(1) == b"<s>"


def test_a_sentencepiece_gguf_model_generates(vocab, tmp_path):
    """A Llama 2 style GGUF (SentencePiece vocabulary, [INST] chat template) end to end."""
    from test_checkpoint_gguf import Q, random_state_dict, tiny_config, write_gguf

    from rustinfer.runtime import LLM, SamplingParams

    tokens, scores, types = vocab
    cfg = tiny_config(num_hidden_layers=1, vocab_size=len(tokens), bos_token_id=1, eos_token_id=2)
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
                "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
                "{% endfor %}")

    def spm(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_chat_template(template)

    path = tmp_path / "llama2-style.gguf"
    write_gguf(path, cfg, random_state_dict(cfg), lambda hf, v: Q.F32, extra=spm)
    llm = LLM(model=str(path), target="reference", max_model_len=64)
    out = llm.chat([{"role": "user", "content": "Hello there"}], SamplingParams(max_tokens=6, temperature=0))
    assert len(out.token_ids) == 6 or out.finish_reason == "stop"
    assert out.text == llm.tokenizer.decode(out.token_ids, skip_special_tokens=True)
    prompt = llm.tokenizer.encode_chat([{"role": "user", "content": "Hello there"}])
    assert prompt == spm_reference("<s>[INST] Hello there [/INST]", *vocab, add_bos=False)


def test_an_unknown_tokenizer_model_is_one_error_line(tmp_path, capsys):
    from test_checkpoint_gguf import Q, random_state_dict, tiny_config, write_gguf

    cfg = tiny_config(num_hidden_layers=1)

    def bert(w):  # a WordPiece vocabulary: not a decoder-only LLM's
        w.add_tokenizer_model("bert")
        w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])

    path = tmp_path / "wordpiece.gguf"
    write_gguf(path, cfg, random_state_dict(cfg), lambda hf, v: Q.F32, extra=bert)
    assert rustinfer_cli.main(["generate", "--target", "reference", "--model", str(path), "Hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer.ggml.model='bert'" in err[0] and "Hugging Face folder" in err[0]


def test_streamed_text_equals_the_decoded_text(spm_file):
    """The engine's incremental detokenizer over byte-fallback tokens: a character split
    over several <0xXX> tokens is held back until it is whole."""
    tok = Tokenizer.from_gguf(spm_file)
    prompt = tok.encode("Say:")
    for text in ("h\u00e9llo w\u00f6rld", " \U0001f917 \u4e2d\u6587!", "a  b\n\tc", "\u00e9\u00e9 x"):
        ids = tok.encode(text, add_special_tokens=False)
        detok = tok.new_detokenizer(prompt)
        chunks = [detok.push(i) for i in ids] + [detok.flush()]
        assert all("\ufffd" not in c for c in chunks)
        assert "".join(chunks) == tok.decode(prompt + ids)[len(tok.decode(prompt)):]


@pytest.mark.parametrize("name,strips", [("Phi3", True), ("phi-3-mini-4k-instruct", True),
                                         ("Llama 2 7B Chat", False)])
def test_phi3_special_tokens_swallow_the_whitespace_after_them(vocab, tmp_path, name, strips):
    """llama.cpp gives the special tokens of a GGUF named phi-3/phi3 RSTRIP (as Phi-3's Hugging
    Face tokenizer has rstrip=True), except <unk>, <s> and <|endoftext|>: Phi-3's chat prompt
    has no newline tokens after <|user|>, <|end|>, <|assistant|>. Other models keep them."""
    tokens, scores, types = (list(x) for x in vocab)
    for t in ("<|user|>", "<|end|>", "<|assistant|>", "<|endoftext|>"):
        tokens.append(t), scores.append(0.0), types.append(CONTROL)
    tok = Tokenizer.from_gguf(write_spm_gguf(tmp_path / "phi.gguf", tokens, scores, types, name=name))
    prompt = "<|user|>\nHi there<|end|>\n<|assistant|>\n"
    stripped = "<|user|>Hi there<|end|><|assistant|>"
    want = stripped if strips else prompt
    assert tok.encode(prompt) == spm_reference(want, tokens, scores, types)
    # <|endoftext|>, <s> keep the whitespace after them
    text = "<|endoftext|> x<s>\ny"
    assert tok.encode(text) == spm_reference(text, tokens, scores, types)


def test_streamed_text_keeps_the_space_after_a_skipped_special_token(spm_file):
    """A control token in the middle of the output decodes to nothing with
    skip_special_tokens; the SentencePiece word after it still starts with its space."""
    tok = Tokenizer.from_gguf(spm_file)
    ids = tok.encode("Hello", False) + [1] + tok.encode("world there", False) + [1, 1]
    ids += tok.encode("again", False)
    for skip in (True, False):
        detok = tok.new_detokenizer(skip_special_tokens=skip)
        streamed = "".join(detok.push(i) for i in ids) + detok.flush()
        assert streamed == tok.decode(ids, skip_special_tokens=skip)
    assert streamed.replace("<s>", "") == "Hello world there again"
