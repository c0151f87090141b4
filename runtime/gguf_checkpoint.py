"""GGUF files (llama.cpp's format), presented in Hugging Face naming and layout.

Three translations happen here so that nothing above this module sees GGUF:

1. Names: llama.cpp's `blk.{i}.attn_q.weight` becomes `model.layers.{i}.self_attn.q_proj.weight`.
2. Layout: llama.cpp's converter permutes the rows of q_proj and k_proj (weights
   and biases) so that its rotary kernel can rotate adjacent pairs (GPT-J style)
   where Hugging Face rotates the two halves of each head (NeoX style). We undo
   that row permutation, on dequantized values (`load`) and on raw block rows
   (`raw`), which is the same reordering because each row is whole blocks.
3. Config: the `llama.*` metadata becomes a LlamaConfig-style dict.

The header is parsed by gguf_file.py (not `gguf.GGUFReader`, which is slow to
open). Block decoding uses `gguf.quants.dequantize` (the gguf package's numpy
port of ggml's decoders) and gguf's type table.

Architectures (`general.architecture`, see _ARCHS): llama (Llama 2/3.x, SmolLM2,
TinyLlama, Mistral-as-llama), qwen2 (Qwen2, Qwen2.5), qwen3 (dense Qwen3) and phi3
(Phi-3, Phi-3.5 mini). They share llama.cpp's tensor names (qwen3 adds the
per-head q/k norms, phi3 packs q|k|v and gate|up); only llama's q/k rows are permuted by
the converter.
"""

from __future__ import annotations

import math
import pathlib
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from .checkpoint import Checkpoint, CheckpointError
from .gguf_file import FLOAT32, GGUFError, map_gguf, parse_gguf_header

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


@dataclass(frozen=True)
class _Arch:
    """What differs between the GGUF architectures read here."""
    model_type: str                 # config.json's, which picks the spec
    architecture: str               # config.json's `architectures`
    permuted_qk: bool               # llama.cpp's converter interleaves the rotary halves
    layer_names: dict               # extra per-layer tensors
    default_eps: float


_ARCHS = {
    "llama": _Arch("llama", "LlamaForCausalLM", True, {}, 1e-5),
    "qwen2": _Arch("qwen2", "Qwen2ForCausalLM", False, {}, 1e-6),
    "qwen3": _Arch("qwen3", "Qwen3ForCausalLM", False,
                   {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}, 1e-6),
    # Phi-3 stores q|k|v and gate|up packed, as its Hugging Face checkpoints do
    "phi3": _Arch("phi3", "Phi3ForCausalLM", False,
                  {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}, 1e-5),
}
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
        hf = _ARCHS[arch].layer_names.get(part) or _LAYER_NAMES.get(part)
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
        if arch not in _ARCHS:
            raise CheckpointError(
                f"{self.path}: GGUF architecture {arch!r} is not supported; rustinfer reads "
                f"{', '.join(_ARCHS)} GGUF files (Llama 2/3.x, SmolLM2, Mistral, Qwen2/2.5, "
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
        self.config = self._config()
        self._refuse_unsupported_rope_scaling()
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _refuse_unsupported_rope_scaling(self) -> None:
        """Name the GGUF's own keys when its rope scaling cannot be computed (the rope tables'
        own error speaks of config.json, which a GGUF user does not have), and what to do."""
        from rustinfer.kernels.rope_tables import SUPPORTED_ROPE_TYPES, rope_type

        scaling, a = self.config["rope_scaling"], self.arch
        kind = rope_type(scaling)
        if kind in SUPPORTED_ROPE_TYPES:
            return
        orig = scaling.get("original_max_position_embeddings")
        raise CheckpointError(
            f"{self.path}: {a}.rope.scaling.type={kind!r} (factor {scaling.get('factor')}) is not "
            f"supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)}). If your prompts fit in the "
            f"original context{f' ({orig} tokens)' if orig else ''}, a copy without the key runs "
            f"unscaled: gguf-new-metadata --remove-metadata {a}.rope.scaling.type IN.gguf OUT.gguf")

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
        if not _ARCHS[self.arch].permuted_qk:
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

    def _config(self) -> dict[str, Any]:
        md = self._file.metadata

        def get(key: str, default: Any = None, required: bool = False) -> Any:
            if key not in md:
                if required:
                    raise CheckpointError(f"{self.path}: GGUF metadata lacks {key!r}; re-convert the model.")
                return default
            v = md[key]
            # llama.cpp stores floats as float32: 1e-5 arrives as 9.999999747378752e-06.
            # Use the shortest decimal that is the same float32, which is what config.json said.
            return float(str(np.float32(v))) if self._file.value_types.get(key) == FLOAT32 else v

        a = self.arch
        kind = _ARCHS[a]
        hidden = get(f"{a}.embedding_length", required=True)
        heads = get(f"{a}.attention.head_count", required=True)
        kv_heads = get(f"{a}.attention.head_count_kv", heads)
        # key_length is the real per-head width when it is not hidden/heads; for llama the
        # rotary width (rope.dimension_count) is the whole head, so either one gives head_dim.
        rotary = get(f"{a}.rope.dimension_count")
        if a == "phi3":      # a partial rotary (Phi-4 mini) rotates fewer dims than a head has
            head_dim = get(f"{a}.attention.key_length") or hidden // heads
        else:
            head_dim = get(f"{a}.attention.key_length") or rotary or hidden // heads
        if "blk.0.attn_q.weight" in self._file.tensors:
            q_rows = self._file.tensors["blk.0.attn_q.weight"].dims[1]
            if q_rows != heads * head_dim:
                raise CheckpointError(
                    f"{self.path}: attn_q has {q_rows} rows, but the metadata says {heads} heads of "
                    f"{head_dim}; the file is inconsistent."
                )
        embd = self._file.tensors.get("token_embd.weight")
        vocab = embd.dims[1] if embd is not None else get(f"{a}.vocab_size") or len(md.get("tokenizer.ggml.tokens", []))
        theta = get(f"{a}.rope.freq_base", 10000.0)
        config = {
            "architectures": [kind.architecture],
            "model_type": kind.model_type,
            "hidden_size": hidden,
            "intermediate_size": get(f"{a}.feed_forward_length", required=True),
            "num_hidden_layers": get(f"{a}.block_count", required=True),
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": get(f"{a}.attention.layer_norm_rms_epsilon", kind.default_eps),
            "rope_theta": theta,
            "rope_scaling": self._rope_scaling(get, theta, head_dim),
            "max_position_embeddings": get(f"{a}.context_length", 2048),
            # llama.cpp applies no sliding window to llama and qwen. It ignores phi3's too (since
            # its PR 13676); we keep phi3's, set below, as Hugging Face runs it: the two differ
            # on prompts longer than the window (2047 for Phi-3 mini 4k).
            "use_sliding_window": False,
            "vocab_size": vocab,
            # llama.cpp writes output.weight only when it differs from the embedding.
            "tie_word_embeddings": "output.weight" not in self._file.tensors,
            "attention_bias": "blk.0.attn_q.bias" in self._file.tensors,
            "mlp_bias": False,
            "bos_token_id": get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": get("tokenizer.ggml.eos_token_id"),
        }
        if a == "phi3":
            config["partial_rotary_factor"] = (rotary or head_dim) / head_dim
            if window := get(f"{a}.attention.sliding_window"):
                config["sliding_window"] = window
            if "rope_factors_long.weight" in self._file.tensors:
                config["rope_scaling"] = self._longrope(get)
                config["original_max_position_embeddings"] = config["rope_scaling"][
                    "original_max_position_embeddings"]
        return config

    def _longrope(self, get) -> dict[str, Any]:
        """Phi-3's LongRoPE as transformers' rope dict: llama.cpp's converter stores the two
        factor lists as tensors and the original context and attention factor as keys."""
        orig = get(f"{self.arch}.rope.scaling.original_context_length")
        if orig is None:
            raise CheckpointError(f"{self.path}: a LongRoPE GGUF (rope_factors_long) without "
                                  f"{self.arch}.rope.scaling.original_context_length; "
                                  "re-convert the model")

        def factors(name: str) -> list[float]:
            t = self._file.tensors[name]
            return [float(x) for x in dequantize(t.data, t.qtype).ravel()]

        rope = {"rope_type": "longrope", "long_factor": factors("rope_factors_long.weight"),
                # llama.cpp takes the long factors when a file has no short ones
                "short_factor": factors("rope_factors_short.weight"
                                        if "rope_factors_short.weight" in self._file.tensors
                                        else "rope_factors_long.weight"),
                "original_max_position_embeddings": orig}
        if (attn := get(f"{self.arch}.rope.scaling.attn_factor")) is not None:
            rope["attention_factor"] = attn
        return rope

    def _rope_scaling(self, get, theta: float, head_dim: int) -> dict[str, Any] | None:
        """Hugging Face rope_scaling from the metadata, or from the rope_freqs tensor for llama3.

        llama.cpp's converter writes `rope.scaling.*` keys for linear and yarn
        scaling, but for Llama 3.1's "llama3" scaling it writes no key at all: it
        precomputes one divisor per rotary frequency into a `rope_freqs` tensor.
        We fit the llama3 parameters back from that tensor (see
        `llama3_rope_scaling_from_freqs`).
        """
        a = self.arch
        kind = get(f"{a}.rope.scaling.type")
        factor = get(f"{a}.rope.scaling.factor")
        if kind is None and get(f"{a}.rope.scale_linear"):  # the key of pre-2024 converters
            kind, factor = "linear", get(f"{a}.rope.scale_linear")
        if kind not in (None, "none") and factor:
            out: dict[str, Any] = {"rope_type": kind, "factor": factor}
            if orig := get(f"{a}.rope.scaling.original_context_length"):
                out["original_max_position_embeddings"] = orig
            return out
        freqs = self._file.tensors.get("rope_freqs.weight")
        if freqs is not None:
            return llama3_rope_scaling_from_freqs(dequantize(freqs.data, freqs.qtype).ravel(), theta, head_dim)
        return None


# The converter reads `original_max_position_embeddings` from the top level of
# config.json, where Llama 3.1 does not put it (it is inside rope_scaling), so
# every converted file used this default. It happens to be Llama 3.1's value.
_LLAMA_CPP_ORIGINAL_CONTEXT = 8192


def llama3_factors(theta: float, head_dim: int, factor: float, low: float, high: float,
                   original: int = _LLAMA_CPP_ORIGINAL_CONTEXT) -> np.ndarray:
    """llama.cpp's rope_freqs for Llama 3 scaling (convert_hf_to_gguf.py, LlamaModel)."""
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    wavelen = 2 * math.pi / freqs.astype(np.float64)
    smooth = (original / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, mid))


def llama3_rope_scaling_from_freqs(factors: np.ndarray, theta: float, head_dim: int) -> dict[str, Any] | None:
    """Recover Hugging Face's llama3 rope_scaling from llama.cpp's rope_freqs tensor.

    factor is the largest divisor. The divisors in the transition band satisfy
    1/r = (1-s)/factor + s with s linear in original/wavelen; a line fit gives
    low_freq_factor and high_freq_factor for original = 8192 (the converter's
    value). With fewer than two points in the band the fit is underdetermined
    and Llama 3's published (1, 4) is tried. The choice is checked by recomputing
    the tensor; a mismatch warns (the model still loads, with the best guess).
    """
    r = np.asarray(factors, dtype=np.float64)
    factor = float(str(np.float32(r.max())))
    if factor <= 1.0 + 1e-6:
        return None
    orig = _LLAMA_CPP_ORIGINAL_CONTEXT
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    x = orig * freqs / (2 * math.pi)
    s = (1 / r - 1 / factor) / (1 - 1 / factor)
    band = (r > 1 + 1e-6) & (r < factor * (1 - 1e-6))
    candidates = [(1.0, 4.0)]
    if band.sum() >= 2:
        slope, intercept = np.polyfit(x[band], s[band], 1)
        low = -intercept / slope
        candidates.insert(0, (round(low, 4), round(low + 1 / slope, 4)))

    def error(c: tuple[float, float]) -> float:
        return float(np.abs(llama3_factors(theta, head_dim, factor, *c) - r).max())

    low, high = min(candidates, key=error)
    if len(r) != head_dim // 2 or error((low, high)) > 1e-3 * factor:
        warnings.warn(
            f"rope_freqs does not match llama3 scaling with factor={factor}, low_freq_factor={low}, "
            f"high_freq_factor={high}, original_max_position_embeddings={orig}; using those anyway.",
            stacklevel=3,
        )
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": float(low),
        "high_freq_factor": float(high),
        "original_max_position_embeddings": orig,
    }
