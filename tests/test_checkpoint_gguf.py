"""GGUF reading, checked against three oracles:

- the tensors we wrote (up to quantization error, and exactly against
  gguf.quants.dequantize of the stored blocks with the rotary permutation undone);
- transformers' own GGUF loader, an independent implementation of the names,
  the q/k un-permutation and the config mapping;
- for the K-quants, which gguf cannot quantize in numpy, decoders transcribed
  here from ggml's C (dequantize_row_q4_K/q5_K/q6_K) on random hand-made blocks.

The files are written the way llama.cpp's convert_hf_to_gguf.py writes them:
llama.cpp names, q/k rows permuted, norms in F32, output.weight omitted when tied.
"""

from __future__ import annotations

import math
import pathlib
import warnings

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from rustinfer.runtime.checkpoint import CheckpointError, open_checkpoint
from rustinfer.runtime.gguf_config import llama3_factors, llama3_rope_scaling_from_freqs

transformers = pytest.importorskip("transformers")

HF_TO_GGUF = {  # Hugging Face module -> llama.cpp tensor stem (the .weight/.bias suffix is kept)
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "model.embed_tokens": "token_embd", "model.norm": "output_norm",
    "lm_head": "output",
}


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, verbatim in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_config(**kw) -> "transformers.LlamaConfig":
    args = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    return transformers.LlamaConfig(**(args | kw))


def random_state_dict(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    """A LlamaForCausalLM state dict with every tensor random (norms too, so a swapped norm shows)."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    sd = {}
    for k, v in model.state_dict().items():
        if cfg.tie_word_embeddings and k == "lm_head.weight":
            continue
        sd[k] = (torch.randn(v.shape) * 0.5).numpy().astype(np.float32)
    return sd


def gguf_name(hf: str, names: dict = HF_TO_GGUF) -> str:
    module, _, kind = hf.rpartition(".")
    if module in names:
        return f"{names[module]}.{kind}"
    _, _, i, rest = module.split(".", 3)
    return f"blk.{i}.{names[rest]}.{kind}"


def add_shape_keys(w, cfg) -> None:
    """The `{arch}.*` keys every converter writes from config.json's sizes."""
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)


def write_gguf(path: pathlib.Path, cfg, tensors: dict[str, np.ndarray], qtype_of, extra=None) -> dict[str, tuple]:
    """Write a llama GGUF; returns {hf name: (qtype, stored array)} as written (permuted)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    add_shape_keys(w, cfg)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    if extra:
        extra(w)
    stored = {}
    for hf, v in tensors.items():
        if ".q_proj." in hf:
            v = llama_cpp_permute(v, cfg.num_attention_heads, cfg.num_attention_heads)
        elif ".k_proj." in hf:
            v = llama_cpp_permute(v, cfg.num_attention_heads, cfg.num_key_value_heads)
        qt = qtype_of(hf, v)
        data = v if v.dtype == np.uint8 else gguf.quants.quantize(v, qt)  # uint8: hand-made blocks
        w.add_tensor(gguf_name(hf), data, raw_dtype=None if qt in (Q.F32, Q.F16) else qt)
        stored[hf] = (qt, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def unpermute(x: np.ndarray, hf: str, cfg) -> np.ndarray:
    """transformers' reverse permutation (LlamaTensorProcessor), for the exact-value oracle."""
    if ".q_proj." in hf or ".k_proj." in hf:
        n = cfg.num_attention_heads if ".q_proj." in hf else cfg.num_key_value_heads
        return x.reshape(n, x.shape[0] // n // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
    return x


def transformers_tensors(path: pathlib.Path) -> dict[str, torch.Tensor]:
    """What transformers loads from a llama GGUF.

    from_pretrained(gguf_file=...) refuses to run without `accelerate`, which this
    project does not depend on; for llama it then calls load_gguf_checkpoint (the
    "legacy" path, see quantizers/quantizer_gguf.py), so we call that directly.
    """
    try:
        import accelerate  # noqa: F401
    except ImportError:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        cfg = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        model = transformers.LlamaForCausalLM(cfg)
        return load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return dict(model.state_dict())


# Largest error of one element, as a fraction of the tensor's largest magnitude.
QUANT_TOL = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 4e-3, Q.Q8_0: 1 / 127, Q.Q5_0: 1 / 15, Q.Q5_1: 1 / 15,
             Q.Q4_0: 1 / 7, Q.Q4_1: 1 / 7}


@pytest.mark.parametrize("qtype", list(QUANT_TOL), ids=lambda q: q.name)
def test_tensors_match_source_blocks_and_transformers(tmp_path, qtype):
    cfg = tiny_config(tie_word_embeddings=qtype == Q.Q4_1)  # one tied file, like SmolLM2
    sd = random_state_dict(cfg)
    path = tmp_path / "m.gguf"
    stored = write_gguf(path, cfg, sd, lambda hf, v: qtype if v.ndim == 2 else Q.F32)
    ckpt = open_checkpoint(path)
    theirs = transformers_tensors(path)

    assert ckpt.format == "gguf" and ckpt.path == path
    assert sorted(ckpt.names()) == sorted(sd)
    assert ("lm_head.weight" in ckpt) == (not cfg.tie_word_embeddings)
    for hf, original in sd.items():
        qt, blocks = stored[hf]
        got = ckpt.load(hf)
        assert got.dtype == torch.float32 and tuple(got.shape) == original.shape == ckpt.shape(hf)
        assert ckpt.dtype(hf) == {Q.F32: "float32", Q.F16: "float16", Q.BF16: "bfloat16"}.get(qt, qt.name)
        # exactly the stored blocks, decoded by gguf and un-permuted
        exact = unpermute(gguf.quants.dequantize(blocks, qt).reshape(original.shape), hf, cfg)
        np.testing.assert_array_equal(got.numpy(), exact, err_msg=hf)
        # the original, up to quantization error (a wrong permutation is off by ~max|w|)
        tol = QUANT_TOL[qt] * np.abs(original).max()
        assert np.abs(got.numpy() - original).max() <= tol, hf
        # an independent reader agrees bit for bit
        assert torch.equal(got, theirs[hf].float()), hf
        # raw(): the stored block rows, in Hugging Face row order; decoding them gives load()
        name, raw = ckpt.raw(hf)
        assert name == qt.name and raw.dtype == np.uint8
        np.testing.assert_array_equal(raw, unpermute(blocks.view(np.uint8).reshape(raw.shape), hf, cfg))
        np.testing.assert_array_equal(gguf.quants.dequantize(raw, qt).reshape(original.shape), got.numpy())
    # from_pretrained's state_dict lists a tied lm_head too (the legacy loader does not)
    assert set(theirs) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set()) == set(ckpt.names())


def test_config_matches_transformers(tmp_path):
    cfg = tiny_config(tie_word_embeddings=True, max_position_embeddings=512, rope_theta=100000.0)
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, random_state_dict(cfg), lambda hf, v: Q.F32)
    ours = open_checkpoint(path).config
    theirs = transformers.AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name)
    for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "vocab_size",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "model_type"]:
        assert ours[key] == getattr(theirs, key), key
    # transformers keeps the float32 value (9.99999974e-06); we give config.json's 1e-05.
    assert ours["rms_norm_eps"] == 1e-5 and math.isclose(theirs.rms_norm_eps, 1e-5, rel_tol=1e-6)
    assert ours["rope_theta"] == theirs.rope_parameters["rope_theta"] == 100000.0
    assert ours["rope_scaling"] is None and theirs.rope_parameters["rope_type"] == "default"
    assert ours["architectures"] == ["LlamaForCausalLM"] and ours["attention_bias"] is False
    # and it builds the same model class with the same parameter shapes
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**ours))
    ckpt = open_checkpoint(path)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items() if k in ckpt} == {n: ckpt.shape(n) for n in ckpt.names()}


def test_attention_bias_is_unpermuted(tmp_path):
    cfg = tiny_config(attention_bias=True, num_hidden_layers=1)
    sd = random_state_dict(cfg)
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, sd, lambda hf, v: Q.F32)
    ckpt = open_checkpoint(path)
    assert ckpt.config["attention_bias"] is True
    for hf in ("model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias"):
        np.testing.assert_array_equal(ckpt.load(hf).numpy(), sd[hf])


# ---- K-quants: no numpy quantizer in gguf, so hand-made blocks and decoders from ggml's C --------

def _fp16(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).view(np.uint8)


def random_kquant_blocks(rng, rows: int, cols: int, qt: Q) -> np.ndarray:
    """Random bytes, with the fp16 super-block scales set to sane positive values."""
    block, size = gguf.GGML_QUANT_SIZES[qt]
    b = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    d = rng.uniform(1e-3, 1e-2, size=(len(b), 2))
    if qt == Q.Q6_K:  # layout: ql[128] qh[64] scales[16] d
        b[:, 208:210] = _fp16(d[:, 0]).reshape(-1, 2)
    else:  # Q4_K/Q5_K: d, dmin, scales[12], ...
        b[:, 0:2] = _fp16(d[:, 0]).reshape(-1, 2)
        b[:, 2:4] = _fp16(d[:, 1]).reshape(-1, 2)
    return b.reshape(rows, -1)


def _scale_min_k4(j: int, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # ggml-quants.c get_scale_min_k4, vectorized over blocks (q: [n, 12])
    if j < 4:
        return q[:, j] & 63, q[:, j + 4] & 63
    return (q[:, j + 4] & 0xF) | ((q[:, j - 4] >> 6) << 4), (q[:, j + 4] >> 4) | ((q[:, j] >> 6) << 4)


def ref_dequant(blocks: np.ndarray, qt: Q) -> np.ndarray:
    """ggml-quants.c dequantize_row_{q4,q5,q6}_K, loop for loop (vectorized over blocks only)."""
    x = blocks.reshape(-1, gguf.GGML_QUANT_SIZES[qt][1])
    y = np.zeros((len(x), 256), np.float32)
    if qt == Q.Q6_K:
        ql, qh, sc, d = x[:, :128], x[:, 128:192], x[:, 192:208].view(np.int8), x[:, 208:210].view(np.float16)
        d = d[:, 0].astype(np.float32)
        for n in range(0, 256, 128):
            o, lo, ho, so = n, n // 2, n // 4, n // 16
            for l in range(32):
                is_ = l // 16
                q1 = ((ql[:, lo + l] & 0xF) | (((qh[:, ho + l] >> 0) & 3) << 4)).astype(np.int8) - 32
                q2 = ((ql[:, lo + l + 32] & 0xF) | (((qh[:, ho + l] >> 2) & 3) << 4)).astype(np.int8) - 32
                q3 = ((ql[:, lo + l] >> 4) | (((qh[:, ho + l] >> 4) & 3) << 4)).astype(np.int8) - 32
                q4 = ((ql[:, lo + l + 32] >> 4) | (((qh[:, ho + l] >> 6) & 3) << 4)).astype(np.int8) - 32
                for k, q in enumerate((q1, q2, q3, q4)):
                    y[:, o + l + 32 * k] = d * sc[:, so + is_ + 2 * k].astype(np.float32) * q.astype(np.float32)
        return y
    d = x[:, 0:2].view(np.float16)[:, 0].astype(np.float32)
    dmin = x[:, 2:4].view(np.float16)[:, 0].astype(np.float32)
    scales = x[:, 4:16]
    qh, qs = (x[:, 16:48], x[:, 48:176]) if qt == Q.Q5_K else (None, x[:, 16:144])
    out, u1, u2 = 0, 1, 2
    for j, is_ in zip(range(0, 256, 64), range(0, 8, 2)):
        q = qs[:, j // 2 : j // 2 + 32]
        for half, (shift, u) in enumerate(((0, u1), (4, u2))):
            sc, m = _scale_min_k4(is_ + half, scales)
            nib = ((q >> shift) & 0xF).astype(np.float32)
            if qh is not None:
                nib = nib + np.where(qh & u, np.float32(16), np.float32(0))
            y[:, out : out + 32] = (d * sc)[:, None] * nib - (dmin * m)[:, None]
            out += 32
        u1, u2 = u1 << 2, u2 << 2
    return y


def test_kquants_match_ggml_reference_and_transformers(tmp_path):
    # K-quant rows are 256-wide super-blocks, so every matrix here has 256 columns.
    cfg = tiny_config(hidden_size=256, intermediate_size=256, num_hidden_layers=1, vocab_size=32,
                      num_attention_heads=4, num_key_value_heads=2)
    rng = np.random.default_rng(0)
    kinds = {"q_proj": Q.Q4_K, "k_proj": Q.Q5_K, "v_proj": Q.Q6_K, "o_proj": Q.Q4_K, "gate_proj": Q.Q5_K,
             "up_proj": Q.Q6_K, "down_proj": Q.Q4_K, "embed_tokens": Q.Q6_K, "lm_head": Q.Q5_K}
    kind = lambda hf: next(q for part, q in kinds.items() if f".{part}." in hf or hf.startswith(part))  # noqa: E731
    sd = random_state_dict(cfg)
    tensors = {hf: v if v.ndim == 1 else random_kquant_blocks(rng, *v.shape, kind(hf)) for hf, v in sd.items()}
    qtype_of = lambda hf, v: kind(hf) if v.dtype == np.uint8 else Q.F32  # noqa: E731
    path = tmp_path / "k.gguf"
    stored = write_gguf(path, cfg, tensors, qtype_of)
    ckpt = open_checkpoint(path)
    theirs = transformers_tensors(path)
    seen = set()
    for hf, (qt, blocks) in stored.items():
        got = ckpt.load(hf)
        assert torch.equal(got, theirs[hf].float()), hf
        if qt in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
            seen.add(qt)
            assert ckpt.dtype(hf) == qt.name and ckpt.shape(hf) == sd[hf].shape
            ref = unpermute(ref_dequant(blocks, qt).reshape(sd[hf].shape), hf, cfg)
            np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=1e-7, err_msg=hf)
    assert seen == {Q.Q4_K, Q.Q5_K, Q.Q6_K}


# ---- rope scaling -------------------------------------------------------------------------------

def test_llama3_rope_freqs_tensor_becomes_rope_scaling(tmp_path):
    """Llama 3.1's numbers: theta 5e5, head_dim 128, factor 8, low 1, high 4, original 8192.

    llama.cpp writes no rope.scaling key for this; only a rope_freqs tensor.
    Oracle: transformers' llama3 rope init on our config must give exactly
    llama.cpp's frequencies, i.e. the default ones divided by rope_freqs.
    """
    cfg = tiny_config(hidden_size=128, num_attention_heads=1, num_key_value_heads=1, intermediate_size=32,
                      num_hidden_layers=1, vocab_size=32, rope_theta=500000.0, max_position_embeddings=131072)
    factors = llama3_factors(500000.0, 128, 8.0, 1.0, 4.0).astype(np.float32)
    path = tmp_path / "r.gguf"
    write_gguf(path, cfg, random_state_dict(cfg), lambda hf, v: Q.F32,
               extra=lambda w: w.add_tensor("rope_freqs.weight", factors))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt = open_checkpoint(path)
    assert ckpt.config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert not any("rope" in n for n in ckpt.names())
    hf_cfg = transformers.LlamaConfig(**ckpt.config)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    base = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float32) / 128))
    torch.testing.assert_close(inv_freq, base / torch.from_numpy(factors), rtol=1e-6, atol=0)


@pytest.mark.parametrize("theta,head_dim,factor,low,high", [
    (500000.0, 64, 32.0, 1.0, 4.0),   # Llama 3.2 1B/3B
    (500000.0, 128, 16.0, 2.0, 8.0),  # not Llama 3's published values: the fit must find them
    (10000.0, 16, 4.0, 1.0, 4.0),     # a single point in the band: falls back to (1, 4)
])
def test_llama3_fit_round_trips(theta, head_dim, factor, low, high):
    r = llama3_factors(theta, head_dim, factor, low, high).astype(np.float32)
    got = llama3_rope_scaling_from_freqs(r, theta, head_dim)
    assert (got["factor"], got["low_freq_factor"], got["high_freq_factor"]) == (factor, low, high)
    assert llama3_rope_scaling_from_freqs(np.ones(head_dim // 2, np.float32), theta, head_dim) is None


def test_linear_rope_scaling_metadata(tmp_path):
    cfg = tiny_config(num_hidden_layers=1)
    path = tmp_path / "l.gguf"

    def extra(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.0)

    write_gguf(path, cfg, random_state_dict(cfg), lambda hf, v: Q.F32, extra=extra)
    assert open_checkpoint(path).config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}


# ---- the header parser and the errors ------------------------------------------------------------

def test_metadata_and_tensor_bytes_match_gguf_reader(tmp_path):
    cfg = tiny_config(num_hidden_layers=1)
    path = tmp_path / "m.gguf"

    def extra(w):
        w.add_token_list(["<s>", "</s>", "héllo", "▁x"] + [f"t{i}" for i in range(92)])
        w.add_token_scores([float(i) / 3 for i in range(96)])
        w.add_bool("test.flag", True)
        w.add_array("test.ints", [1, -2, 3])
        w.add_float64("test.f64", 0.1)
        w.add_string("test.s", "∑ unicode")

    write_gguf(path, cfg, random_state_dict(cfg), lambda hf, v: Q.Q8_0 if v.ndim == 2 else Q.F32, extra=extra)
    ckpt = open_checkpoint(path)
    reader = gguf.GGUFReader(path)
    want = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ckpt.metadata == want
    assert ckpt.metadata["test.f64"] == 0.1 and ckpt.metadata["tokenizer.ggml.tokens"][2] == "héllo"
    mine = {t.name: t for t in ckpt._file.tensors.values()}
    for t in reader.tensors:
        assert mine[t.name].qtype == t.tensor_type
        assert mine[t.name].dims == tuple(int(x) for x in t.shape)
        assert mine[t.name].data.tobytes() == t.data.tobytes()


def test_missing_tensor_names_the_nearest(tmp_path):
    cfg = tiny_config(num_hidden_layers=1)
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, random_state_dict(cfg), lambda hf, v: Q.F32)
    ckpt = open_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"q_proj\.weigth.*Nearest names: model\.layers\.0\.self_attn\.q_proj\.weight"):
        ckpt.load("model.layers.0.self_attn.q_proj.weigth")
    with pytest.raises(CheckpointError, match="no tensor named"):
        ckpt.shape("blk.0.attn_q.weight")  # GGUF names are not served


def test_truncated_and_foreign_files_are_refused(tmp_path):
    cfg = tiny_config(num_hidden_layers=1)
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, random_state_dict(cfg), lambda hf, v: Q.F32)
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(tmp_path / "cut.gguf")
    (tmp_path / "head.gguf").write_bytes(data[:200])
    with pytest.raises(CheckpointError, match="malformed|truncated"):
        open_checkpoint(tmp_path / "head.gguf")

    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "gemma2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="architecture 'gemma2' is not supported.*Use the "
                       r"model's Hugging Face folder \(config.json \+ \*.safetensors\): "
                       r"specs/gemma2.yaml serves it\."):
        open_checkpoint(tmp_path / "q.gguf")

    write_gguf(tmp_path / "x.gguf", cfg, random_state_dict(cfg), lambda hf, v: Q.F32,
               extra=lambda w: w.add_tensor("blk.0.mystery.weight", np.zeros(8, np.float32)))
    with pytest.raises(CheckpointError, match="blk.0.mystery.weight"):
        open_checkpoint(tmp_path / "x.gguf")


def test_folder_with_one_gguf_opens_it(tmp_path):
    cfg = tiny_config(num_hidden_layers=1)
    write_gguf(tmp_path / "m.gguf", cfg, random_state_dict(cfg), lambda hf, v: Q.F32)
    assert open_checkpoint(tmp_path).path == tmp_path / "m.gguf"


def test_folder_with_two_ggufs_names_them(tmp_path):
    cfg = tiny_config(num_hidden_layers=1)
    for name in ("a-Q8_0.gguf", "a-F16.gguf"):
        write_gguf(tmp_path / name, cfg, random_state_dict(cfg), lambda hf, v: Q.F32)
    with pytest.raises(CheckpointError, match=r"holds 2 \.gguf files \(a-F16.gguf, "
                       r"a-Q8_0.gguf\); give the path of the one to use, e.g. --model .*a-F16"):
        open_checkpoint(tmp_path)


# ---- the real default model ---------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_against_transformers(smollm2_gguf):
    path = pathlib.Path(smollm2_gguf)
    ckpt = open_checkpoint(path)
    c = ckpt.config
    # SmolLM2-135M-Instruct's config.json on the Hugging Face Hub
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"],
            c["num_key_value_heads"], c["head_dim"], c["vocab_size"]) == (576, 1536, 30, 9, 3, 64, 49152)
    assert (c["rms_norm_eps"], c["rope_theta"], c["rope_scaling"], c["max_position_embeddings"]) == (1e-5, 100000.0, None, 8192)
    assert (c["tie_word_embeddings"], c["bos_token_id"], c["eos_token_id"]) == (True, 1, 2)
    theirs_cfg = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    for key in ["hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings"]:
        assert c[key] == getattr(theirs_cfg, key), key
    assert ckpt.dtype("model.embed_tokens.weight") == "Q8_0"
    assert ckpt.dtype("model.layers.0.self_attn.q_proj.weight") == "Q4_1"
    wanted = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
              "model.layers.29.self_attn.k_proj.weight", "model.layers.3.mlp.down_proj.weight", "model.norm.weight"]
    theirs = transformers_subset(path, theirs_cfg, wanted)
    assert set(theirs) == set(wanted)
    for hf in wanted:
        assert torch.equal(ckpt.load(hf), theirs[hf]), hf
        assert ckpt.shape(hf) == tuple(theirs[hf].shape)


def transformers_subset(path: pathlib.Path, cfg, wanted: list[str]) -> dict[str, torch.Tensor]:
    """A few tensors the way transformers' legacy GGUF loader makes them (its name map and its
    LlamaTensorProcessor un-permutation), without dequantizing the other 270 tensors."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, get_gguf_hf_weights_map

    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    processor = TENSOR_PROCESSORS["llama"](config=cfg.to_dict())
    name_map = get_gguf_hf_weights_map(model, processor)
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        if name_map.get(t.name) in wanted:
            w = processor.process(weights=gguf.quants.dequantize(t.data, t.tensor_type), name=t.name).weights
            out[name_map[t.name]] = torch.from_numpy(np.array(w))
    return out
