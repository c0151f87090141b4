"""Reading model checkpoints: one interface over Hugging Face folders and GGUF files.

Everything above this module (spec binding, the compiler's weight planner, the
engine) sees Hugging Face naming and layout only: `config.json` fields and
tensor names such as `model.layers.{i}.self_attn.q_proj.weight` with shape
[out, in]. Translating llama.cpp's names, layouts and metadata is the job of
`gguf_checkpoint`, so no other module needs to know GGUF exists.

Opening is cheap: it reads headers (and the GGUF metadata), never tensor data.
Tensors are read when `load` asks for them, through a memory map.
"""

from __future__ import annotations

import difflib
import pathlib
from abc import ABC, abstractmethod
from typing import Any

import numpy
import torch


class CheckpointError(Exception):
    """A checkpoint cannot be opened or a tensor cannot be served.

    The message says what is wrong and what to do about it.
    """


class Checkpoint(ABC):
    """A read-only view of one checkpoint, in Hugging Face naming and layout.

    Attributes:
        path: the folder (safetensors) or the .gguf file.
        format: "safetensors" or "gguf".
        config: config.json as a dict (synthesized from metadata for GGUF).
        metadata: GGUF key/value metadata as Python values; {} for safetensors.
    """

    path: pathlib.Path
    format: str
    config: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def names(self) -> list[str]:
        """Tensor names in Hugging Face naming, in file order."""

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]:
        """The Hugging Face shape ([out, in] for linear weights), without reading data."""

    @abstractmethod
    def dtype(self, name: str) -> str:
        """"float32", "bfloat16", "float16", ... or a GGUF quantization name ("Q4_1", "Q8_0", ...)."""

    @abstractmethod
    def load(self, name: str) -> torch.Tensor:
        """The tensor in Hugging Face layout (GGUF: dequantized to float32)."""

    def raw(self, name: str) -> tuple[str, numpy.ndarray]:
        """(GGUF type name, raw block bytes in Hugging Face row order). GGUF only."""
        raise CheckpointError(
            f"{self.path}: raw() serves GGUF block bytes, and this is a {self.format} checkpoint; "
            "use load() instead."
        )

    def close(self) -> None:
        """Nothing to do: memory maps and handles go with the object. Loaded tensors are copies."""

    def __contains__(self, name: object) -> bool:
        return name in set(self.names())

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {str(self.path)!r}: {len(self.names())} tensors>"

    def _missing(self, name: str) -> CheckpointError:
        """The error for a tensor that is not there, with the nearest names as hints."""
        near = difflib.get_close_matches(name, self.names(), n=5, cutoff=0.5)
        hint = f" Nearest names: {', '.join(near)}." if near else ""
        return CheckpointError(
            f"{self.path}: no tensor named {name!r} in this {self.format} checkpoint "
            f"({len(self.names())} tensors).{hint}"
        )


def open_checkpoint(path: str | pathlib.Path) -> Checkpoint:
    """Open a Hugging Face folder (config.json + *.safetensors) or a .gguf file.

    A folder with no config.json but exactly one .gguf file opens that file, so
    a folder downloaded from a GGUF repository works as is.
    """
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(
            f"{p}: no such file or folder; give a Hugging Face folder (with config.json "
            "and *.safetensors) or a .gguf file."
        )
    if p.is_dir():
        if (p / "config.json").is_file():
            from .safetensors_checkpoint import SafetensorsCheckpoint

            return SafetensorsCheckpoint(p)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            p = ggufs[0]
        elif ggufs:
            raise CheckpointError(
                f"{p}: this folder holds {len(ggufs)} .gguf files "
                f"({', '.join(q.name for q in ggufs[:6])}{' ...' if len(ggufs) > 6 else ''}); "
                f"give the path of the one to use, e.g. --model {ggufs[0]}."
            )
        else:
            found = ", ".join(sorted(q.name for q in p.iterdir())[:10]) or "nothing"
            raise CheckpointError(
                f"{p}: this folder has no config.json (found: {found}). Give a Hugging Face "
                "folder with config.json and model.safetensors (or a sharded "
                "model.safetensors.index.json), or the path of one .gguf file."
            )
    if _is_gguf(p):
        from .gguf_checkpoint import GGUFCheckpoint

        return GGUFCheckpoint(p)
    if p.suffix == ".safetensors":
        raise CheckpointError(
            f"{p}: give the folder that holds this file and its config.json, not the "
            ".safetensors file itself."
        )
    raise CheckpointError(
        f"{p}: not a GGUF file (no 'GGUF' magic) and not a folder. Give a Hugging Face folder "
        "with config.json and *.safetensors, or a .gguf file."
    )


def _is_gguf(p: pathlib.Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"
