"""The ONNX model's initializers: IR weights written once as external data.

Each IR weight becomes the initializer(s) its users need: the embedding table as
float32 [vocab, hidden] (Gather reads one row per token, so it costs memory, not
bandwidth), a norm weight as float32 (+ the op's offset folded in), a linear
weight as float32 W^T [in, out] for MatMul or as MatMulNBits blocks. Large
tensors are appended to one `weights.bin` (64-byte aligned) next to model.onnx;
small ones stay inline. The protobuf never holds the weights, so models past
protobuf's 2 GB limit lower the same way.

Quant modes for linear weights: "none" (float32), "int4", "int8". With a GGUF
checkpoint whose blocks are Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K,
the blocks are transcoded (see onnx_quant) rather than dequantized and quantized
again; a fused weight whose parts differ in type (Q4_K q|k next to a Q6_K v) is
widened to one form that holds every part exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from rustinfer.kernels.rope_tables import half_cos_sin

from .ir import Graph, Node
from .onnx_quant import TRANSCODABLE, NBitsWeight, concat_rows, quantize, transcode

MS = "com.microsoft"
_INLINE_BYTES = 1024
_ALIGN = 64


class WeightStore:
    def __init__(self, graph: Graph, checkpoint, folder: Path, quant: str = "none",
                 accuracy_level: int = 4, quantize_lm_head: bool = True):
        if quant not in ("none", "int4", "int8"):
            raise ValueError(f"quant must be 'none', 'int4' or 'int8', got {quant!r}")
        self.g, self.ckpt, self.quant = graph, checkpoint, quant
        self.accuracy_level, self.quantize_lm_head = accuracy_level, quantize_lm_head
        self.location = "weights.bin"
        self.file = open(Path(folder) / self.location, "wb")
        self.initializers: list[TensorProto] = []
        self.names: set[str] = set()
        self.report: list[str] = []
        self.bytes_per_token = 0          # weight bytes a decode step reads (roofline)
        self._last: tuple[str, np.ndarray] | None = None
        self._rope: dict[tuple, str] = {}

    def close(self) -> None:
        self.file.close()

    # -- initializers ------------------------------------------------------------------
    def add(self, name: str, array: np.ndarray) -> str:
        if name in self.names:
            return name
        array = np.ascontiguousarray(array)
        self.names.add(name)
        if array.nbytes <= _INLINE_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        pad = (-self.file.tell()) % _ALIGN
        self.file.write(b"\0" * pad)
        offset = self.file.tell()
        self.file.write(array.tobytes())
        t = TensorProto(name=name, dims=list(array.shape),
                        data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                        data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", str(offset)),
                           ("length", str(array.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(t)
        return name

    def int64(self, name: str, values) -> str:
        return self.add(name, np.asarray(values, dtype=np.int64))

    # -- IR weights ------------------------------------------------------------------
    def f32(self, name: str) -> np.ndarray:
        """float32 value of IR weight `name` (sources concatenated as its `derive` says)."""
        if self._last and self._last[0] == name:
            return self._last[1]
        from rustinfer.runtime.weights import derive_weight

        value = self.g.values[name]
        if value.derive is None:
            array = self.ckpt.load(value.source).float().numpy()
        else:                       # a fused concat, or a row slice of a packed matrix
            array = derive_weight(name, value.derive,
                                  lambda source: self.ckpt.load(source).float()).numpy()
        if tuple(array.shape) != tuple(value.shape):
            raise ValueError(f"weight '{name}': built {list(array.shape)}, IR says {list(value.shape)}")
        self._last = (name, array)
        return array

    def float_table(self, name: str) -> str:
        return self.add(name, self.f32(name))

    def norm(self, name: str, offset: float) -> str:
        if not offset:
            return self.add(name, self.f32(name))
        return self.add(f"{name}+{offset}", self.f32(name) + np.float32(offset))

    def rope_tables(self, head_dim: int, theta: float, scaling) -> tuple[str, str]:
        """cos, sin [max_pos, head_dim/2] from the shared rope tables (Llama 3 and LongRoPE scaling included)."""
        spec = (head_dim, theta, repr(sorted((scaling or {}).items())))
        key = self._rope.setdefault(spec, f"rope/{len(self._rope)}")
        if f"{key}/cos" not in self.names:
            import torch

            positions = torch.arange(int(self.g.symbols.get("max_pos") or 8192))
            cos, sin = half_cos_sin(positions, head_dim, theta, scaling)
            self.add(f"{key}/cos", cos.contiguous().numpy())
            self.add(f"{key}/sin", sin.contiguous().numpy())
        return f"{key}/cos", f"{key}/sin"

    # -- linear layers -------------------------------------------------------------------
    def linear(self, low, node: Node, x: str, y: str) -> None:
        """Emit y = x @ W.T for node's weight, float32 or MatMulNBits (+ Q4_1 correction)."""
        name = node.inputs[1]
        n, k = self.g.values[name].shape
        is_head = node.outputs[0] == self.g.outputs[0]
        nbits = self._nbits(name, is_head)
        if nbits is None:
            w = self.add(f"{name}/T", np.ascontiguousarray(self.f32(name).T))
            self.bytes_per_token += n * k * 4
            self.report.append(f"{name:<56} float32 MatMul [{k}, {n}]")
            low.emit("MatMul", [x, w], [y], node.name)
            return
        prefix = f"{name}/nbits{nbits.bits}"
        ins = [x, self.add(f"{prefix}/B", nbits.packed), self.add(f"{prefix}/scales", nbits.scales)]
        if nbits.zero_points is not None:
            ins.append(self.add(f"{prefix}/zero_points", nbits.zero_points))
        self.bytes_per_token += sum(a.nbytes for a in (nbits.packed, nbits.scales)) + (
            0 if nbits.zero_points is None else nbits.zero_points.nbytes)
        self.report.append(f"{name:<56} MatMulNBits {nbits.bits}-bit [{n}, {k}] {nbits.origin}")
        main = low.tmp(node.name, "MatMulNBits") if nbits.offsets is not None else y
        low.emit("MatMulNBits", ins, [main], node.name, domain=MS, K=k, N=n, bits=nbits.bits,
                 block_size=nbits.block, accuracy_level=self.accuracy_level)
        if nbits.offsets is not None:
            self._offset_correction(low, node, x, nbits, main, y)

    def _offset_correction(self, low, node: Node, x: str, w: NBitsWeight, main: str, y: str):
        """The residual per-block offsets r (Q4_1's m, a K-quant's mins), exactly:
        y = main + blocksum(x) @ r.T.

            x [B,S,K] -> Reshape [B,S,nb,block] -> ReduceSum(-1) -> [B,S,nb] -> MatMul r.T [nb,N]
            (the LM head's x is [R,K]: the same without S)
                                                                                 -> Add(main)
        NOTE measured (SmolLM2 Q4_1 int4, one decode step, A/B in one process, 2 threads):
        these 4 ops per linear cost ~15% of the step. Not faster: block sums as one
        MatMul with a 0/1 matrix; the graph in 2-D with Gemm(sums, r.T, main) (2 ops per
        linear); r.T as an 8-bit MatMulNBits (perplexity +0.5%).
        """
        nb = w.offsets.shape[1]
        base = f"{node.name}/block_offsets"
        lead = 1 if node.inputs[0] in low.rows_only else 2      # the head's [R] or [B, S]
        shape = self.int64(f"{base}/shape", [0] * lead + [nb, w.block])
        axes = self.int64(f"{base}/axes", [-1])
        m_t = self.add(f"{node.inputs[1]}/block_offsets/T", np.ascontiguousarray(w.offsets.T))
        self.bytes_per_token += w.offsets.nbytes
        blocks = low.emit("Reshape", [x, shape], [low.tmp(base, "Reshape")], base)
        sums = low.emit("ReduceSum", [blocks, axes], [low.tmp(base, "ReduceSum")], base, keepdims=0)
        corr = low.emit("MatMul", [sums, m_t], [low.tmp(base, "MatMul")], base)
        low.emit("Add", [main, corr], [y], base)

    def _nbits(self, name: str, is_head: bool) -> NBitsWeight | None:
        if self.quant == "none" or (is_head and not self.quantize_lm_head):
            return None
        value = self.g.values[name]
        sources = [value.source] if value.derive is None else list(value.derive[1])
        whole_rows = value.derive is None or value.derive[:1] + value.derive[2:] == ("concat", 0)
        types = [self.ckpt.dtype(s) for s in sources]
        if self.ckpt.format == "gguf" and whole_rows and all(t in TRANSCODABLE for t in types):
            # int4 keeps every GGUF block as it is (4-bit codes in 4 bits, wider ones in 8);
            # int8 only the 8-bit ones (anything else is quantized again below)
            if self.quant == "int4" or all(TRANSCODABLE[t] == 8 for t in types):
                parts = [transcode(t, self.ckpt.raw(s)[1], value.shape[1])
                         for t, s in zip(types, sources)]
                return parts[0] if len(parts) == 1 else concat_rows(parts)
        return quantize(self.f32(name), 4 if self.quant == "int4" else 8)
