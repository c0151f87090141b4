"""GGUF files (llama.cpp's format), presented in Hugging Face naming and layout.

Three translations happen here so that nothing above this module sees GGUF:

1. Names: llama.cpp's `blk.{i}.attn_q.weight` becomes `model.layers.{i}.self_attn.q_proj.weight`.
2. Layout: llama.cpp's converter permutes the rows of q_proj and k_proj (weights
   and biases) so that its rotary kernel can rotate adjacent pairs (GPT-J style)
   where Hugging Face rotates the two halves of each head (NeoX style). We undo
   that row permutation, on dequantized values (`load`) and on raw block rows
   (`raw`), which is the same reordering because each row is whole blocks.
3. Config: the `{arch}.*` metadata becomes a config.json-style dict (gguf_config.py).

The header is parsed by gguf_file.py (not `gguf.GGUFReader`, which is slow to
open). Block decoding uses `gguf.quants.dequantize` (the gguf package's numpy
port of ggml's decoders) and gguf's type table.

Architectures (`general.architecture`, see ARCHS): llama (Llama 2/3.x, SmolLM2,
TinyLlama, Mistral-as-llama), qwen2 (Qwen2, Qwen2.5), qwen3 (dense Qwen3) and phi3
(Phi-3, Phi-3.5 mini). They share llama.cpp's tensor names (qwen3 adds the
per-head q/k norms, phi3 packs q|k|v and gate|up); only llama's q/k rows are permuted by
the converter.
"""

from __future__ import annotations

import math
import pathlib
import re
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from .checkpoint import Checkpoint, CheckpointError
from .gguf_config import ARCHS, GGUFConfig
from .gguf_file import GGUFError, map_gguf, parse_gguf_header

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


# Tensors with no Hugging Face counterpart: rope_freqs is folded into config["rope_scaling"];
# attn_rot_embd (old converters) is the rotary table, which Hugging Face recomputes;
# rope_factors_long/short are Phi-3's LongRoPE factors (folded into config["rope_scaling"]).
_NOT_WEIGHTS = re.compile(r"rope_freqs\.weight|blk\.\d+\.attn_rot_embd\.weight"
                          r"|rope_factors_(long|short)\.weight")
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_FLOAT_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def gguf_to_hf_name(name: str, arch: str = "llama") -> str | None:
    """The Hugging Face name of a GGUF tensor of architecture `arch`, or None when it has none."""
    if m := _BLOCK.fullmatch(name):
        i, part, kind = m.groups()
        hf = ARCHS[arch].layer_names.get(part) or _LAYER_NAMES.get(part)
        return f"model.layers.{i}.{hf}.{kind}" if hf else None
    stem, _, kind = name.rpartition(".")
    if stem in _GLOBAL_NAMES and kind in ("weight", "bias"):
        return f"{_GLOBAL_NAMES[stem]}.{kind}"
    return None


class _Tensor:
    """One tensor's header entry: GGML type, ggml dims (innermost first), raw bytes."""

    __slots__ = ("name", "qtype", "dims", "data")

    def __init__(self, name: str, qtype: GGMLQuantizationType, dims: tuple[int, ...], data: np.ndarray):
        self.name, self.qtype, self.dims, self.data = name, qtype, dims, data


class _GGUFFile:
    """A GGUF file's header (gguf_file.py) over a read-only memory map of it.

    Attributes: metadata (key -> Python value), value_types (key -> GGUF value
    type), tensors (GGUF name -> _Tensor, file order). Tensor data stays in the
    map: `_Tensor.data` is a uint8 view of shape [rows..., bytes_per_row].
    """

    def __init__(self, path: pathlib.Path):
        self.path = path
        try:
            self._map = map_gguf(path)
            header = parse_gguf_header(self._map, path)
        except GGUFError as e:
            raise CheckpointError(str(e)) from e
        if header.byte_order != "<":
            raise CheckpointError(f"{path}: a big-endian GGUF file; convert it to little-endian.")
        self.metadata, self.value_types = header.metadata, header.value_types
        buf = memoryview(self._map)
        self.tensors: dict[str, _Tensor] = {}
        for info in header.tensors:
            name, dims = info.name, info.dims
            try:
                qtype = GGMLQuantizationType(info.type_id)
            except ValueError:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has GGML type {info.type_id}, unknown to gguf "
                    f"{_gguf_version()}; upgrade the gguf package."
                ) from None
            block, type_size = GGML_QUANT_SIZES[qtype]
            n_bytes = math.prod(dims) // block * type_size
            start = header.data_start + info.offset
            if start + n_bytes > len(self._map):
                raise CheckpointError(
                    f"{path}: tensor {name!r} ends past the end of the file; the file is "
                    "truncated (an interrupted download?). Re-download it."
                )
            row_bytes = dims[0] // block * type_size
            data = np.frombuffer(buf, dtype=np.uint8, count=n_bytes, offset=start)
            self.tensors[name] = _Tensor(name, qtype, dims, data.reshape(*dims[:0:-1], row_bytes))


def _hf_folder_hint(arch) -> str:
    """What to use instead of a GGUF of another architecture: its Hugging Face folder,
    which a spec in specs/ may serve (GGUF architecture names are model_type names)."""
    from rustinfer.compiler.bind import select_spec
    from rustinfer.compiler.errors import SpecError

    try:
        spec = select_spec({"model_type": str(arch)})
    except SpecError:
        return ("Use the model's Hugging Face folder (config.json + *.safetensors) with a spec "
                "for it (docs/adding-a-model.md).")
    return (f"Use the model's Hugging Face folder (config.json + *.safetensors): "
            f"specs/{pathlib.Path(spec).name} serves it.")


def _gguf_version() -> str:
    import gguf

    return getattr(gguf, "__version__", "(installed version)")


class GGUFCheckpoint(Checkpoint):
    format = "gguf"

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self._file = _GGUFFile(self.path)
        md = self._file.metadata
        arch = md.get("general.architecture")
        if arch not in ARCHS:
            raise CheckpointError(
                f"{self.path}: GGUF architecture {arch!r} is not supported; rustinfer reads "
                f"{', '.join(ARCHS)} GGUF files (Llama 2/3.x, SmolLM2, Mistral, Qwen2/2.5, "
                f"Qwen3, Phi-3). {_hf_folder_hint(arch)}"
            )
        self.arch = arch
        self._hf: dict[str, _Tensor] = {}
        unknown = []
        for name, t in self._file.tensors.items():
            hf = gguf_to_hf_name(name, arch)
            if hf is not None:
                self._hf[hf] = t
            elif not _NOT_WEIGHTS.fullmatch(name):
                unknown.append(name)
        if unknown:
            # Dropping tensors silently would build a wrong model; say which ones are unknown.
            raise CheckpointError(
                f"{self.path}: tensors with no known Hugging Face name: {', '.join(unknown[:8])}"
                f"{' ...' if len(unknown) > 8 else ''}. This {arch} GGUF has parts rustinfer does not map."
            )
        self.config = GGUFConfig(self.path, arch, self._file).build()
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    # -- tensors ------------------------------------------------------------------

    def _tensor(self, name: str) -> _Tensor:
        t = self._hf.get(name)
        if t is None:
            raise self._missing(name)
        return t

    def names(self) -> list[str]:
        return list(self._hf)

    def __contains__(self, name: object) -> bool:
        return name in self._hf

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(reversed(self._tensor(name).dims))

    def dtype(self, name: str) -> str:
        """Float tensors read "float32"/"float16"/"bfloat16" as on safetensors; others their GGML name."""
        q = self._tensor(name).qtype.name
        return _FLOAT_NAMES.get(q, q)

    def load(self, name: str) -> torch.Tensor:
        t = self._tensor(name)
        try:
            values = dequantize(t.data, t.qtype)
        except NotImplementedError as e:
            raise CheckpointError(f"{self.path}: cannot decode {name!r} ({t.qtype.name}): {e}") from e
        values = values.reshape(self.shape(name))
        rows = self._rows(name)
        if rows is not None:
            values = values[rows]
        # Copy: the map is read-only, and a tensor that owns its memory outlives the checkpoint.
        return torch.from_numpy(np.array(values, dtype=np.float32, copy=True))

    def raw(self, name: str) -> tuple[str, np.ndarray]:
        """(GGML type name, uint8 array [rows..., bytes_per_row]) with rows in Hugging Face order.

        A read-only view of the file where no reordering is needed (a copy for q/k_proj).
        """
        t = self._tensor(name)
        rows = self._rows(name)
        return t.qtype.name, (t.data if rows is None else t.data[rows])

    # -- the rotary row permutation -----------------------------------------------

    def _rows(self, name: str) -> np.ndarray | None:
        """Row order that undoes llama.cpp's q/k permutation, or None for other tensors.

        llama.cpp (convert_hf_to_gguf.py, LlamaModel.permute) reshapes each head's
        rows as [2, head_dim/2] and swaps to [head_dim/2, 2], interleaving the two
        rotary halves; we gather rows with the inverse, as transformers'
        LlamaTensorProcessor._reverse_permute_weights does.
        """
        if not ARCHS[self.arch].permuted_qk:
            return None
        if ".self_attn.q_proj." in name:
            heads = self.config["num_attention_heads"]
        elif ".self_attn.k_proj." in name:
            heads = self.config["num_key_value_heads"]
        else:
            return None
        n = self.shape(name)[0]
        key = (n, heads)
        if key not in self._perm_cache:
            half = n // heads // 2
            gguf_rows = np.arange(n).reshape(heads, 2, half).swapaxes(1, 2).reshape(n)  # hf row at gguf pos
            self._perm_cache[key] = np.argsort(gguf_rows)  # gguf row holding each hf row
        return self._perm_cache[key]

    # -- metadata and config ------------------------------------------------------

    @property
    def metadata(self) -> dict[str, Any]:
        return self._file.metadata
