"""Hugging Face folders: config.json + model.safetensors, or shards + model.safetensors.index.json.

`safe_open` reads only each file's JSON header and memory-maps the rest, so
opening a 100 GB checkpoint costs a few header reads; `load` copies one
tensor's bytes out of the map in its on-disk dtype.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import torch
from safetensors import safe_open

from .checkpoint import Checkpoint, CheckpointError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# safetensors' dtype tags -> torch's dtype names, the names the rest of rustinfer uses.
_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


class SafetensorsCheckpoint(Checkpoint):
    format = "safetensors"

    def __init__(self, folder: pathlib.Path):
        self.path = pathlib.Path(folder)
        self.config = _read_json(self.path / "config.json", "config.json")
        self._files: dict[str, Any] = {}  # shard file name -> safe_open handle (header read, data mapped)
        self._key_cache: dict[str, set[str]] = {}
        self._where = self._weight_map()  # tensor name -> shard file name
        for shard in dict.fromkeys(self._where.values()):
            self._open(shard)
        for name, shard in self._where.items():
            # The index is a promise about the shards; check it against their headers now
            # rather than failing in the middle of a compile.
            if name not in self._keys(shard):
                raise CheckpointError(
                    f"{self.path / INDEX} places {name!r} in {shard}, but that file has no such "
                    "tensor. The index and the shards come from different versions; re-download both."
                )

    def _weight_map(self) -> dict[str, str]:
        if (self.path / INDEX).is_file():
            index = _read_json(self.path / INDEX, INDEX)
            wm = index.get("weight_map")
            if not isinstance(wm, dict) or not wm:
                raise CheckpointError(f"{self.path / INDEX}: has no 'weight_map'; re-download it.")
            missing = sorted({s for s in wm.values() if not (self.path / s).is_file()})
            if missing:
                raise CheckpointError(
                    f"{self.path}: {INDEX} names shard(s) that are not there: {', '.join(missing)}. "
                    "Download every shard the index lists."
                )
            return dict(wm)
        if (self.path / SINGLE).is_file():
            return {k: SINGLE for k in self._open(SINGLE).keys()}
        shards = sorted(p.name for p in self.path.glob("*.safetensors"))
        torch_files = sorted(p.name for p in self.path.iterdir()
                             if p.suffix in (".bin", ".pt", ".pth") or p.name.endswith(".bin.index.json"))
        if shards:
            todo = (f"it has {', '.join(shards[:5])}{' ...' if len(shards) > 5 else ''}: download "
                    f"{INDEX}, which says which tensor is in which shard, into the folder too")
        elif torch_files:
            todo = (f"it has PyTorch weights ({', '.join(torch_files[:3])}), which rustinfer does "
                    "not read (a pickle can run code); convert them once with transformers: "
                    "python -c \"from transformers import AutoModelForCausalLM as M; "
                    f"M.from_pretrained('{self.path}').save_pretrained('{self.path}')\"")
        else:
            todo = (f"it holds no weights at all (config only); download {SINGLE} (or the shards "
                    f"and {INDEX}) into it")
        raise CheckpointError(
            f"{self.path}: has config.json but neither {SINGLE} nor {INDEX}; {todo}."
        )

    def _open(self, shard: str):
        if shard not in self._files:
            try:
                self._files[shard] = safe_open(str(self.path / shard), framework="pt")
            except Exception as e:  # SafetensorError, OSError: a bad header
                raise CheckpointError(
                    f"{self.path / shard}: not a readable safetensors file ({e}). "
                    "Re-download it; an interrupted download leaves a truncated file."
                ) from e
        return self._files[shard]

    def _keys(self, shard: str) -> set[str]:
        if shard not in self._key_cache:
            self._key_cache[shard] = set(self._files[shard].keys())
        return self._key_cache[shard]

    def _file(self, name: str):
        shard = self._where.get(name)
        if shard is None:
            raise self._missing(name)
        return self._files[shard]

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._file(name).get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        tag = self._file(name).get_slice(name).get_dtype()
        return _DTYPES.get(tag, tag.lower())

    def load(self, name: str) -> torch.Tensor:
        return self._file(name).get_tensor(name)


def _read_json(p: pathlib.Path, what: str) -> dict:
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{p}: missing; a Hugging Face folder needs {what}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: not valid JSON ({e}); re-download {what}.") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{p}: expected a JSON object in {what}.")
    return data
