"""Hugging Face folders: single-file and sharded safetensors, lazily read."""

from __future__ import annotations

import json
import resource
import struct
import time

import pytest
import torch
from safetensors.torch import save_file

from rustinfer.runtime import safetensors_checkpoint
from rustinfer.runtime.checkpoint import CheckpointError, open_checkpoint

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
          "num_hidden_layers": 2, "tie_word_embeddings": True}
DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def tensors(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (16, 8), "model.norm.weight": (8,)}
    for i in range(2):
        shapes[f"model.layers.{i}.self_attn.q_proj.weight"] = (8, 8)
        shapes[f"model.layers.{i}.mlp.down_proj.weight"] = (8, 12)
        shapes[f"model.layers.{i}.input_layernorm.weight"] = (8,)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


def write_folder(folder, ts: dict[str, torch.Tensor], shards: int = 1):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    if shards == 1:
        save_file(ts, folder / "model.safetensors")
        return
    names = list(ts)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: ts[n] for n in names[s::shards]}
        save_file(part, folder / fname)
        weight_map |= {n: fname for n in part}
    index = {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES.values()))
@pytest.mark.parametrize("shards", [1, 2])
def test_names_shapes_dtypes_values(tmp_path, dtype, shards):
    ts = tensors(dtype)
    write_folder(tmp_path / "m", ts, shards)
    ckpt = open_checkpoint(tmp_path / "m")
    assert ckpt.format == "safetensors" and ckpt.path == tmp_path / "m"
    assert ckpt.config == CONFIG and ckpt.metadata == {}
    assert sorted(ckpt.names()) == sorted(ts)
    for name, t in ts.items():
        assert ckpt.shape(name) == tuple(t.shape)
        assert ckpt.dtype(name) == DTYPES[dtype]
        got = ckpt.load(name)
        assert got.dtype == dtype and torch.equal(got, t), name
    with pytest.raises(CheckpointError, match="raw"):
        ckpt.raw("model.norm.weight")


def test_sharded_mixed_dtypes_follow_the_index(tmp_path):
    ts = tensors(torch.bfloat16) | {"lm_head.weight": torch.randn(16, 8, dtype=torch.float32)}
    write_folder(tmp_path / "m", ts, shards=3)
    ckpt = open_checkpoint(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert ckpt.names() == list(index["weight_map"])
    assert ckpt.dtype("lm_head.weight") == "float32" and ckpt.dtype("model.norm.weight") == "bfloat16"
    assert torch.equal(ckpt.load("lm_head.weight"), ts["lm_head.weight"])


def test_open_and_headers_read_no_tensor(tmp_path, monkeypatch):
    """A spy on safe_open's handles: opening and asking names/shapes/dtypes reads no tensor."""
    reads = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def get_tensor(self, name):
            reads.append(name)
            return self.inner.get_tensor(name)

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self.inner.__exit__(*a)

    real = safetensors_checkpoint.safe_open
    monkeypatch.setattr(safetensors_checkpoint, "safe_open", lambda *a, **k: Spy(real(*a, **k)))
    write_folder(tmp_path / "m", tensors(torch.float16), shards=2)
    ckpt = open_checkpoint(tmp_path / "m")
    meta = {n: (ckpt.shape(n), ckpt.dtype(n)) for n in ckpt.names()}
    assert len(meta) == 8 and reads == []
    ckpt.load("model.norm.weight")
    assert reads == ["model.norm.weight"]


def test_a_16_gib_shard_opens_without_being_read(tmp_path):
    """A shard holding a 16 GiB tensor (a sparse file: no disk used) opens in well under a
    second without growing the process: reading that tensor would take seconds and 16 GiB."""
    folder = tmp_path / "m"
    write_folder(folder, {"small.weight": torch.arange(4, dtype=torch.float32)}, shards=1)
    big = 16 << 30
    small = torch.arange(4, dtype=torch.float32) * 7
    header = json.dumps({"big.weight": {"dtype": "F32", "shape": [big // 4], "data_offsets": [0, big]},
                         "tail.weight": {"dtype": "F32", "shape": [4], "data_offsets": [big, big + 16]}}).encode()
    header += b" " * (-len(header) % 8)
    shard = folder / "model-00002-of-00002.safetensors"
    with open(shard, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.seek(8 + len(header) + big)
        f.write(small.numpy().tobytes())
    if shard.stat().st_blocks * 512 > 1 << 30:
        pytest.skip("this filesystem has no sparse files")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "small.weight": "model.safetensors", "big.weight": shard.name, "tail.weight": shard.name}}))

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    ckpt = open_checkpoint(folder)
    assert ckpt.shape("big.weight") == (big // 4,) and ckpt.dtype("big.weight") == "float32"
    assert torch.equal(ckpt.load("tail.weight"), small)
    assert torch.equal(ckpt.load("small.weight"), torch.arange(4, dtype=torch.float32))
    assert time.perf_counter() - t < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before < 1 << 30


def test_missing_tensor_names_the_nearest(tmp_path):
    write_folder(tmp_path / "m", tensors(torch.float32))
    ckpt = open_checkpoint(tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.q_prj\.weight'.*Nearest names: "
                                              r"model\.layers\.0\.self_attn\.q_proj\.weight"):
        ckpt.load("model.layers.0.self_attn.q_prj.weight")
    with pytest.raises(CheckpointError, match="no tensor named 'nope'"):
        ckpt.shape("nope")


def test_broken_folders_say_what_to_do(tmp_path):
    write_folder(tmp_path / "m", tensors(torch.float32), shards=2)
    index = tmp_path / "m" / "model.safetensors.index.json"
    wm = json.loads(index.read_text())
    wm["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(wm))
    with pytest.raises(CheckpointError, match="places 'extra.weight' in model-00001-of-00002.safetensors"):
        open_checkpoint(tmp_path / "m")

    (tmp_path / "m" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="not there: model-00002-of-00002.safetensors"):
        open_checkpoint(tmp_path / "m")

    (tmp_path / "m" / "model-00002-of-00002.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        open_checkpoint(tmp_path / "m")

    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "config.json").write_text("{}")
    (tmp_path / "n" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"PyTorch weights \(pytorch_model.bin\).*"
                       r"from_pretrained\('.*n'\).save_pretrained\('.*n'\)"):
        open_checkpoint(tmp_path / "n")
    (tmp_path / "n" / "pytorch_model.bin").unlink()   # config only: nothing to convert
    with pytest.raises(CheckpointError, match="holds no weights at all") as err:
        open_checkpoint(tmp_path / "n")
    assert "pytorch_model.bin" not in str(err.value)
    write_folder(tmp_path / "s", tensors(torch.float32), shards=2)
    (tmp_path / "s" / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors, "
                       "model-00002-of-00002.safetensors: download model.safetensors.index.json"):
        open_checkpoint(tmp_path / "s")

    (tmp_path / "n" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        open_checkpoint(tmp_path / "n")

    write_folder(tmp_path / "o", tensors(torch.float32))
    (tmp_path / "o" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        open_checkpoint(tmp_path / "o")
    with pytest.raises(CheckpointError, match="give the folder"):
        open_checkpoint(tmp_path / "o" / "model.safetensors")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        open_checkpoint(tmp_path / "missing")
