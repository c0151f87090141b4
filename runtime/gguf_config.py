"""A GGUF file's metadata as a Hugging Face config.json dict, per architecture.

llama.cpp's converter writes config.json's fields as `{arch}.*` keys (`llama.embedding_length`,
`qwen2.rope.freq_base`, ...), some as tensors (Llama 3.1's rope_freqs, Phi-3's LongRoPE
factors), and leaves some out (defaults below say which). `GGUFConfig.build()` reads them
back into the dict the specs bind to; gguf_checkpoint.py reads the tensors.
"""
from __future__ import annotations

import math
import pathlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf.quants import dequantize

from .checkpoint import CheckpointError
from .gguf_file import FLOAT32


@dataclass(frozen=True)
class _Arch:
    """What differs between the GGUF architectures read here."""
    model_type: str                 # config.json's, which picks the spec
    architecture: str               # config.json's `architectures`
    permuted_qk: bool               # llama.cpp's converter interleaves the rotary halves
    layer_names: dict               # extra per-layer tensors
    default_eps: float


ARCHS = {
    "llama": _Arch("llama", "LlamaForCausalLM", True, {}, 1e-5),
    "qwen2": _Arch("qwen2", "Qwen2ForCausalLM", False, {}, 1e-6),
    "qwen3": _Arch("qwen3", "Qwen3ForCausalLM", False,
                   {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}, 1e-6),
    # Phi-3 stores q|k|v and gate|up packed, as its Hugging Face checkpoints do
    "phi3": _Arch("phi3", "Phi3ForCausalLM", False,
                  {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}, 1e-5),
}


class GGUFConfig:
    """The config of one GGUF file (`_GGUFFile` in gguf_checkpoint.py) of architecture arch."""

    def __init__(self, path: pathlib.Path, arch: str, file):
        self.path, self.arch = path, arch
        self.metadata, self.value_types, self.tensors = file.metadata, file.value_types, file.tensors

    def build(self) -> dict[str, Any]:
        config = self._config()
        self._refuse_unsupported_rope_scaling(config)
        return config

    def _refuse_unsupported_rope_scaling(self, config: dict) -> None:
        """Name the GGUF's own keys when its rope scaling cannot be computed (the rope tables'
        own error speaks of config.json, which a GGUF user does not have), and what to do."""
        from rustinfer.kernels.rope_tables import SUPPORTED_ROPE_TYPES, rope_type

        scaling, a = config["rope_scaling"], self.arch
        kind = rope_type(scaling)
        if kind in SUPPORTED_ROPE_TYPES:
            return
        orig = scaling.get("original_max_position_embeddings")
        raise CheckpointError(
            f"{self.path}: {a}.rope.scaling.type={kind!r} (factor {scaling.get('factor')}) is not "
            f"supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)}). If your prompts fit in the "
            f"original context{f' ({orig} tokens)' if orig else ''}, a copy without the key runs "
            f"unscaled: gguf-new-metadata --remove-metadata {a}.rope.scaling.type IN.gguf OUT.gguf")

    def _config(self) -> dict[str, Any]:
        md = self.metadata

        def get(key: str, default: Any = None, required: bool = False) -> Any:
            if key not in md:
                if required:
                    raise CheckpointError(f"{self.path}: GGUF metadata lacks {key!r}; re-convert the model.")
                return default
            v = md[key]
            # llama.cpp stores floats as float32: 1e-5 arrives as 9.999999747378752e-06.
            # Use the shortest decimal that is the same float32, which is what config.json said.
            return float(str(np.float32(v))) if self.value_types.get(key) == FLOAT32 else v

        a = self.arch
        kind = ARCHS[a]
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
        if "blk.0.attn_q.weight" in self.tensors:
            q_rows = self.tensors["blk.0.attn_q.weight"].dims[1]
            if q_rows != heads * head_dim:
                raise CheckpointError(
                    f"{self.path}: attn_q has {q_rows} rows, but the metadata says {heads} heads of "
                    f"{head_dim}; the file is inconsistent."
                )
        embd = self.tensors.get("token_embd.weight")
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
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "attention_bias": "blk.0.attn_q.bias" in self.tensors,
            "mlp_bias": False,
            "bos_token_id": get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": get("tokenizer.ggml.eos_token_id"),
        }
        if a == "phi3":
            config["partial_rotary_factor"] = (rotary or head_dim) / head_dim
            if window := get(f"{a}.attention.sliding_window"):
                config["sliding_window"] = window
            if "rope_factors_long.weight" in self.tensors:
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
            t = self.tensors[name]
            return [float(x) for x in dequantize(t.data, t.qtype).ravel()]

        rope = {"rope_type": "longrope", "long_factor": factors("rope_factors_long.weight"),
                # llama.cpp takes the long factors when a file has no short ones
                "short_factor": factors("rope_factors_short.weight"
                                        if "rope_factors_short.weight" in self.tensors
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
        freqs = self.tensors.get("rope_freqs.weight")
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
