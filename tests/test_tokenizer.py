"""Tokenizer: encode/decode/ids against transformers, and GGUF-built tokenizers.

transformers is the oracle for everything it gets right; the few places where
our GGUF rebuild follows llama.cpp instead are tested on their own, with why.
"""
import json
import random

import pytest

from rustinfer.runtime import gguf_tokenizer
from rustinfer.runtime.gguf_tokenizer import CONTROL, NORMAL, eog_token_ids, read_gguf_metadata
from rustinfer.runtime.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

TEXTS = [
    "Hello world", "", " ", "  leading and trailing  ", "\n\n\ttabs\r\n and CRLF\r\n",
    "emoji 🤗 👨‍👩‍👧 family, flags 🇫🇷🇯🇵, skin 👍🏽",
    "中文测试，日本語のテキスト、한국어 문장",
    "def f(x):\n    return x**2  # 12345\n\tif y != 3.14159: pass",
    "café naïve ﬁ Ωmega e\u0301 (combining)", "1234567890 9876543210 0.5 1e-9",
    "it's we're I'LL they'd don't", "<|eot_id|> special <|begin_of_text|>text<|start_header_id|>",
    "<|im_start|>user\nhi<|im_end|>", "x ² y ½", "\u200b zero width \ufeff bom", "a" * 300,
    "https://example.com/path?q=1&r=%20", "   \n   \n", "🤗" * 5,
]


def _random_texts(tok, n, seed=0):
    """Strings glued from random vocabulary pieces: word boundaries the merges were not trained on."""
    rng = random.Random(seed)
    pieces = [tok.decode([i]) for i in rng.sample(range(tok.vocab_size), 4000)]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 25))) for _ in range(n)]




@pytest.fixture(scope="module")
def hf(llama_dir):
    return transformers.AutoTokenizer.from_pretrained(llama_dir)


@pytest.fixture(scope="module")
def tok(llama_dir):
    return Tokenizer.from_hf_dir(llama_dir)


# ------------------------------------------------------------ HF folder ---


@pytest.mark.parametrize("add_special", [True, False])
def test_encode_matches_transformers(tok, hf, add_special):
    for text in TEXTS + _random_texts(tok, 150):
        assert tok.encode(text, add_special_tokens=add_special) == \
            hf.encode(text, add_special_tokens=add_special), repr(text)


def test_decode_matches_transformers(tok, hf):
    rng = random.Random(1)
    seqs = [hf.encode(t) for t in TEXTS]
    # arbitrary id sequences too: split characters, specials in the middle
    seqs += [[rng.randrange(len(hf)) for _ in range(rng.randint(1, 40))] for _ in range(100)]
    for ids in seqs:
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids


def test_ids_and_vocab_match_transformers(tok, hf):
    assert tok.bos_token_id == hf.bos_token_id
    assert tok.vocab_size == len(hf)
    sample = list(range(0, len(hf), 997)) + [len(hf) - 1]
    assert [tok.id_to_token(i) for i in sample] == hf.convert_ids_to_tokens(sample)
    for i in sample:
        assert tok.token_to_id(tok.id_to_token(i)) == i
    assert tok.token_to_id("no such token, surely") is None
    assert tok.special_token_ids == {i for i, t in hf.added_tokens_decoder.items() if t.special}
    assert tok.special_tokens == hf.special_tokens_map


@pytest.mark.parametrize("name", ["llama-3.2-1b-instruct", "llama-3.2-3b-instruct", "llama-3.1-8b-instruct"])
def test_eos_ids_are_every_stop_id(llama_dir, name):
    """Every id in generation_config / config plus the tokenizer's eos_token."""
    path = llama_dir.parent / name
    if not (path / "tokenizer.json").exists():
        pytest.skip(f"{name} not available")
    ours = Tokenizer.from_hf_dir(path)
    gen = transformers.GenerationConfig.from_pretrained(path).eos_token_id
    cfg = json.loads((path / "config.json").read_text()).get("eos_token_id")
    expected = set(gen if isinstance(gen, list) else [gen]) | set(cfg if isinstance(cfg, list) else [cfg])
    tok_eos = json.loads((path / "tokenizer_config.json").read_text())["eos_token"]
    expected.add(ours.token_to_id(tok_eos))
    assert set(ours.eos_token_ids) == expected - {None}
    assert len(ours.eos_token_ids) == len(set(ours.eos_token_ids))


# ------------------------------------------------------------------ GGUF ---


def _write_gguf(path, tokens, types, merges, pre="llama-bpe", **meta):
    """A GGUF carrying only tokenizer metadata (no tensors)."""
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, value in meta.items():  # e.g. bos_token_id=..., chat_template=...
        getattr(w, f"add_{key}")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tokenizer_json_to_gguf_lists(tokenizer_json):
    """tokens / llama.cpp token types / merges, as convert_hf_to_gguf.py writes them."""
    j = json.loads(tokenizer_json.read_text())
    vocab, added = j["model"]["vocab"], j["added_tokens"]
    n = max(max(vocab.values()), max(a["id"] for a in added)) + 1
    tokens, types = [f"[PAD{i}]" for i in range(n)], [NORMAL] * n
    for text, i in vocab.items():
        tokens[i] = text
    for a in added:
        tokens[a["id"]], types[a["id"]] = a["content"], CONTROL if a["special"] else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    return tokens, types, merges


@pytest.fixture(scope="module")
def llama3_gguf(tmp_path_factory, llama_dir):
    """The Llama 3 tokenizer as a llama.cpp converter would store it (pre "llama-bpe")."""
    tokens, types, merges = _tokenizer_json_to_gguf_lists(llama_dir / "tokenizer.json")
    template = json.loads((llama_dir / "tokenizer_config.json").read_text())["chat_template"]
    path = tmp_path_factory.mktemp("gguf") / "llama3-tok.gguf"
    return _write_gguf(path, tokens, types, merges, bos_token_id=128000, eos_token_id=128009,
                       add_bos_token=True, chat_template=template)


def test_gguf_llama3_matches_transformers(llama3_gguf, tok, hf):
    g = Tokenizer.from_gguf(llama3_gguf)
    for text in TEXTS + _random_texts(tok, 300, seed=2):
        for add_special in (True, False):
            # Fails without ignore_merges (llama.cpp's llama-bpe setting): ~6% of these texts differ.
            assert g.encode(text, add_special) == hf.encode(text, add_special_tokens=add_special), repr(text)
    ids = hf.encode(TEXTS[5] + TEXTS[6])
    assert g.decode(ids) == hf.decode(ids)
    assert g.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    assert g.vocab_size == len(hf) and g.bos_token_id == hf.bos_token_id
    assert g.special_token_ids == tok.special_token_ids
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🤗"}]
    assert g.apply_chat_template(msgs) == hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    # llama.cpp's EOG set for this vocabulary: the eos id, then <|end_of_text|> by text
    # (this tokenizer.json has no <|eom_id|>: its 128008 is a reserved token).
    assert g.eos_token_ids[0] == 128009 and set(g.eos_token_ids) == {128009, 128001}


def _byte_vocab():
    """The 256 byte-level tokens (enough for a tiny but complete byte-level BPE)."""
    return list(gguf_tokenizer._bytes_to_unicode().values())


def test_gguf_add_bos_flag_and_added_tokens(tmp_path):
    tokens = _byte_vocab() + ["Ġh", "Ġhi", "<s>", "</s>", "<think>", "<｜end▁of▁sentence｜>"]
    types = [NORMAL] * 258 + [CONTROL, CONTROL, 4, CONTROL]
    common = dict(bos_token_id=258, eos_token_id=259, chat_template="D{{ bos_token }}")
    on = Tokenizer.from_gguf(_write_gguf(tmp_path / "on.gguf", tokens, types, ["Ġ h", "Ġh i"],
                                         pre="gpt-2", add_bos_token=True, **common))
    off = Tokenizer.from_gguf(_write_gguf(tmp_path / "off.gguf", tokens, types, ["Ġ h", "Ġh i"],
                                          pre="gpt-2", add_bos_token=False, **common))
    assert on.encode(" hi") == [258, 257] and off.encode(" hi") == [257]
    assert off.encode(" hi", add_special_tokens=False) == [257]
    assert off.encode("<think></s>") == [260, 259]           # user-defined and control tokens stay whole
    assert off.decode([257, 260, 259], skip_special_tokens=True) == " hi<think>"  # only control ones are skipped
    assert off.special_token_ids == {258, 259, 261}
    assert off.apply_chat_template([{"role": "user", "content": "x"}]) == "D<s>"
    # a control token outside the byte alphabet keeps its own id (DeepSeek-style)
    assert off.vocab_size == len(tokens)
    assert off.encode("hi<｜end▁of▁sentence｜>")[-1] == 261 and off.decode([261]) == "<｜end▁of▁sentence｜>"
    assert set(off.eos_token_ids) == {259, 261}  # eos, and the EOT llama.cpp finds by text


def test_gguf_metadata_reader_matches_gguf_package(tmp_path):
    tokens = _byte_vocab() + ["<|im_end|>"]
    kw = dict(pre="smollm", eos_token_id=256, add_bos_token=False, chat_template="{{ messages }}")
    path = _write_gguf(tmp_path / "t.gguf", tokens, [NORMAL] * 256 + [CONTROL], ["Ġ a"], **kw)
    ours = read_gguf_metadata(path, prefixes=("",))
    reader = gguf.GGUFReader(path)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours == theirs
    # big-endian files read the same
    w = gguf.GGUFWriter(str(tmp_path / "be.gguf"), arch="llama", endianess=gguf.GGUFEndian.BIG)
    for key, value in ours.items():
        if key != "general.architecture":
            w.add_key_value(key, value, reader.fields[key].types[0],
                            sub_type=reader.fields[key].types[-1] if len(reader.fields[key].types) > 1 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    assert read_gguf_metadata(tmp_path / "be.gguf", prefixes=("",)) == ours


@pytest.mark.parametrize("pre,ignore_merges", [("gpt-4o", False), ("tekken", True)])
def test_gguf_gpt4o_and_tekken_splits_match_transformers(tmp_path, llama_dir, tok, pre, ignore_merges):
    """Phi-4 mini / Llama 4 ("gpt-4o") and Mistral Nemo / Ministral ("tekken") GGUFs: the
    split regexes against transformers' GGUF loader, on the Llama 3 vocabulary (any
    byte-level vocabulary shows the split). llama.cpp takes a whole pre-token found in the
    vocabulary as is for tekken, not for gpt-4o; transformers' loader never does, so its
    model is set to llama.cpp's choice (with the other choice ~3% of these texts differ)."""
    from transformers import AutoTokenizer

    tokens, types, merges = _tokenizer_json_to_gguf_lists(llama_dir / "tokenizer.json")
    path = _write_gguf(tmp_path / f"{pre}.gguf", tokens, types, merges, pre=pre,
                       bos_token_id=128000, eos_token_id=128009, add_bos_token=False)
    ours = Tokenizer.from_gguf(path)
    hf = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    hf.backend_tokenizer.model.ignore_merges = ignore_merges
    texts = TEXTS + _random_texts(tok, 300, seed=5) + ["HelloWorld FOOBar fooBAR 12345 6789 ÀBC"]
    for text in texts:
        assert ours.encode(text, False) == hf.encode(text, add_special_tokens=False), repr(text)


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    path = _write_gguf(tmp_path / "t.gguf", _byte_vocab(), [NORMAL] * 256, [], pre="not-a-real-pre")
    with pytest.raises(ValueError, match="not-a-real-pre.*Hugging Face folder"):
        Tokenizer.from_gguf(path)


def test_eog_rules_follow_llama_cpp():
    """llama.cpp decides end-of-generation by token text (src/llama-vocab.cpp)."""
    llama31 = ["a", "<|begin_of_text|>", "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    assert eog_token_ids({"tokenizer.ggml.eos_token_id": 4}, llama31) == [4, 2, 3]
    chatml = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fim_pad>", "<reponame>", "<file_sep>"]
    # FIM pad / repo tokens end generation too; <file_sep> is not on llama.cpp's list.
    assert eog_token_ids({"tokenizer.ggml.eos_token_id": 2}, chatml) == [2, 0, 3, 4]
    # an eot id from the metadata is always included, whatever its text
    assert eog_token_ids({"tokenizer.ggml.eot_token_id": 1}, ["x", "<turn_end>"]) == [1]
    # gpt-oss: <|end|> closes a message, not the turn, when <|return|> and <|call|> exist
    harmony = ["<|end|>", "<|return|>", "<|call|>", "<|start|>"]
    assert eog_token_ids({}, harmony) == [1, 2]


# ------------------------------------------------- real default model ---


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    hf_smol = transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    return Tokenizer.from_gguf(smollm2_gguf), hf_smol


# transformers' GGUF loader has no "smollm" pre-tokenizer and uses plain GPT-2
# splitting, which glues a space to a following non-ASCII numeral (" ²").
def _gpt2_and_smollm_agree(text):
    return not any(a == " " and b.isnumeric() and not b.isascii() for a, b in zip(text, text[1:]))


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers(smol):
    ours, hf_smol = smol
    texts = [t for t in TEXTS + _random_texts(ours, 300, seed=3) if _gpt2_and_smollm_agree(t)]
    for text in texts:
        for add_special in (True, False):
            assert ours.encode(text, add_special) == hf_smol.encode(text, add_special_tokens=add_special), repr(text)
        ids = hf_smol.encode(text)
        assert ours.decode(ids, skip_special_tokens=True) == hf_smol.decode(ids, skip_special_tokens=True)
    assert ours.bos_token_id == hf_smol.bos_token_id and ours.vocab_size == len(hf_smol)
    assert ours.special_token_ids == {i for i, t in hf_smol.added_tokens_decoder.items() if t.special}
    assert hf_smol.eos_token_id == ours.eos_token_ids[0]
    assert ours.token_to_id("<|endoftext|>") in ours.eos_token_ids  # llama.cpp: EOG by text
    for msgs in ([{"role": "user", "content": "Hi 🤗"}],
                 [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                  {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]):
        for agp in (True, False):
            assert ours.apply_chat_template(msgs, agp) == \
                hf_smol.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)
            assert ours.encode_chat(msgs, agp) == \
                hf_smol.apply_chat_template(msgs, add_generation_prompt=agp, return_dict=False)


@pytest.mark.slow
def test_smollm2_numerals_are_split_like_llama_cpp(smol):
    """llama.cpp's "smollm" pre-tokenizer isolates every \\p{N} character before
    the GPT-2 split (= SmolLM2's own tokenizer.json: Digits + ByteLevel)."""
    ours, _ = smol
    assert [ours.id_to_token(i) for i in ours.encode("x ² y 12")] == ["x", "Ġ", "Â²", "Ġy", "Ġ", "1", "2"]


def test_a_truncated_or_broken_tokenizer_file_is_a_checkpoint_error(tmp_path):
    """An interrupted download: tokenizers raised a bare Exception (a traceback in the
    CLI), a bad tokenizer_config.json a JSONDecodeError that named no file."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    from rustinfer.runtime.checkpoint import CheckpointError

    Backend(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]")).save(
        str(tmp_path / "tokenizer.json"))
    Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{bad")
    with pytest.raises(CheckpointError, match=r"tokenizer_config.json: not valid JSON"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    text = (tmp_path / "tokenizer.json").read_text()
    (tmp_path / "tokenizer.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"tokenizer.json: not a readable tokenizer .*"
                       "re-download it"):
        Tokenizer.from_hf_dir(tmp_path)
